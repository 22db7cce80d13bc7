"""Every program lowered for cuda and tpu without their devices (launch/run/portability.py), and the per-backend forms
(learner/code_path.py) that keep the accelerators' programs free of atomics-ordered scatters.

The dry run is checked for the configs CI names (default, entity observations, SFL, Brax; tests/test_kinetix.py for
Kinetix), and shown to fail on a planted non-deterministic op (the CPU's forms traced for cuda) and on an op that
cannot leave the CPU (a host callback).
"""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from launch.run import portability
from learner import code_path, distributions, entity_network

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IDX = jnp.array([0, 1, 1, 3, 3, 3, 2, 0], jnp.int32)


def _lowered(fn, platform, *args):
  return portability.lower("f", jax.jit(fn), args or (jnp.zeros(4), IDX), platform)


def test_scan_flags_what_a_gpu_orders_by_atomics():
  add = _lowered(lambda x, i: x.at[i].add(1.0), "cuda")
  assert add.lowered and len(add.flags) == 1 and add.flags[0].startswith("float scatter-add")
  assert "tests/test_portability.py:" in add.flags[0] and not add.ok  # where, in this project's code
  assert _lowered(lambda x, i: x.at[i].add(1.0), "tpu").ok  # TPUs serialize scatters: deterministic
  assert _lowered(lambda x, i: x.astype(jnp.int32).at[i].add(1), "cuda").ok  # integer sums do not depend on order
  collide = _lowered(lambda x, i: x.at[i].set(2.0), "cuda")  # listed, not flagged (a vmapped .at[i].set is one)
  assert collide.ok and collide.notes == ("scatter-set with indices not marked unique: tests x1",)
  assert not _lowered(lambda x, i: x.at[i].set(2.0, unique_indices=True), "cuda").notes
  grad = _lowered(jax.grad(lambda x, i: jnp.take_along_axis(x, i[:4], axis=0).sum()), "cuda")
  assert grad.flags  # a gather's gradient is a scatter-add


def test_an_op_that_cannot_leave_the_cpu_does_not_lower():
  out = _lowered(lambda x, i: jax.pure_callback(np.sin, jax.ShapeDtypeStruct((4,), jnp.float32), x), "cuda")
  assert not out.lowered and not out.ok and "did not lower" in out.line()


def test_env_library_scatters_are_notes_left_to_the_gpu_option():
  """A scatter-add whose innermost caller is an installed package (Brax's physics) is the GPU option's to make
  deterministic, not this project's: a note, not a flag."""
  text = "\n".join([
      '%7 = "stablehlo.scatter"(%0, %1, %2) <{scatter_dimension_numbers = #stablehlo.scatter<>}> ({',
      "^bb0(%arg2: tensor<f32>, %arg3: tensor<f32>):",
      "  %10 = stablehlo.add %arg2, %arg3 : tensor<f32>",
      "  stablehlo.return %10 : tensor<f32>",
      "}) : (tensor<4xf32>, tensor<8x1xi32>, tensor<8xf32>) -> tensor<4xf32> loc(#loc9)",
      '#loc8 = loc("/x/site-packages/brax/actuator.py":55:3 to :9)',
      f'#loc7 = loc("{REPO}/envs/brax_adapter.py":40:1 to :5)',
      "#loc9 = loc(callsite(#loc8 at #loc7))"])
  assert portability.scan(text, "cuda") == [] and portability.scan(text, "tpu") == []
  assert portability.notes(text, "cuda") == [
      "float scatter-add in env code, made deterministic by xla_gpu_deterministic_ops: brax x1"]
  ours = text.replace("/x/site-packages/brax/actuator.py", f"{REPO}/learner/networks.py")
  assert portability.scan(ours, "cuda") == [
      "float scatter-add (XLA:GPU: atomics, the order varies run to run) at learner/networks.py:55 x1"]


def test_accelerator_forms_compute_the_cpu_forms_values():
  """The categorical log-prob and the entity messages in their accelerator forms (one-hot select / matmuls) give the
  CPU forms' values and gradients: exactly, or within float reassociation for the matmuls' sums."""
  key = jax.random.PRNGKey(0)
  logits, action = jax.random.normal(key, (64, 5)), jax.random.randint(key, (64,), 0, 5)
  x, index = jax.random.normal(key, (3, 6, 8)), jax.random.randint(jax.random.PRNGKey(1), (3, 4), 0, 6)
  update = jax.random.normal(jax.random.PRNGKey(2), (3, 4, 8))

  def compute():
    dist = distributions.Categorical(5)
    lp = jax.value_and_grad(lambda l: dist.log_prob(l, action).sum())(logits)
    # pylint: disable=protected-access
    gather = jax.value_and_grad(lambda v: (entity_network._gather(v, index) ** 2).sum())(x)
    scatter = entity_network._scatter_add(x, index, update)
    return lp, gather, scatter

  cpu = compute()
  assert code_path.cpu_forms()
  with code_path.accelerator():
    assert not code_path.cpu_forms()
    accelerator = compute()
  np.testing.assert_array_equal(accelerator[0][0], cpu[0][0])
  np.testing.assert_array_equal(accelerator[0][1], cpu[0][1])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), accelerator[1:], cpu[1:])


def _dry_run(*args, env=None):
  return subprocess.run([sys.executable, "-m", "launch.train", "--dry_run", "--nodry_run_memory",
                         "--dry_run_platforms=cuda,tpu", *args], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=600)


def _check_lowered(lowerings, expected):
  assert all(x.lowered and not x.flags for x in lowerings), [x.line() for x in lowerings if not x.ok]
  assert {(x.program, x.platform) for x in lowerings} == {(n, p) for n in expected for p in ("cuda", "tpu")}


def test_the_default_config_lowers_for_cuda_and_tpu():
  """Through the CLI: the JSON's `lowering` entry, one line per program and platform on stderr, exit 0."""
  proc = _dry_run()
  assert proc.returncode == 0, proc.stderr[-3000:]
  lowering = json.loads(proc.stdout)["lowering"]
  assert lowering["devices"] == 8 and all(p["lowered"] and not p["flags"] for p in lowering["programs"])
  assert {p["program"] for p in lowering["programs"]} == {"init", "resize_runner", "update", "evaluate"}
  assert proc.stderr.count("nothing flagged") == 8


@pytest.mark.parametrize("overrides", [
    {"env_name": "cue_entities", "network.kind": "entity"},
    {"env_name": "levels", "level_sampler.kind": "sfl", "reset_pool.size": 64, "level_sampler.batch_size": 64,
     "level_sampler.buffer_size": 16},
    {"pipeline.mode": "sync", "sgd.shuffle": "local"},
    "brax",
], ids=["entity", "sfl", "sync_local", "brax"])
def test_every_program_lowers_for_cuda_and_tpu(overrides):
  """In this process (8 CPU devices): entity observations, SFL, the staged pipeline with the local shuffle, Brax."""
  from launch.configs import brax, default  # pylint: disable=import-outside-toplevel
  config = brax.get_config() if overrides == "brax" else default.get_config()
  if overrides != "brax":
    config.update_from_flattened_dict(overrides)
  expected = ({"act", "advantage", "learn", "metrics", "split_update_key"} if config.pipeline.mode == "sync"
              else {"update"} | ({"rescore"} if config.level_sampler.kind == "sfl" else set()))
  _check_lowered(portability.check(config, ["cuda", "tpu"]), expected | {"init", "resize_runner", "evaluate"})


def test_the_cpu_forms_planted_into_a_gpu_lowering_fail_the_dry_run():
  """The check sees the real programs: with the CPU's forms forced while lowering for cuda, the entity config's
  update is flagged at the streamed advantage statistics and the entity messages, and the dry run exits 1."""
  plant = ("import learner.code_path as c, runpy, sys; c.cpu_forms = lambda: True; sys.argv = ['train'] + sys.argv[1:];"
           " runpy.run_module('launch.train', run_name='__main__')")
  proc = subprocess.run([sys.executable, "-c", plant, "--dry_run", "--nodry_run_memory", "--dry_run_platforms=cuda",
                         "--config.env_name=cue_entities", "--config.network.kind=entity"], cwd=REPO,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 1, proc.stderr[-3000:]
  flags = {p["program"]: p["flags"] for p in json.loads(proc.stdout)["lowering"]["programs"]}
  assert any("pipeline/advantage_stats.py" in f for f in flags["update"])
  assert any("learner/entity_network.py" in f for f in flags["update"])
  assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and "update (cuda)" in proc.stderr


def test_bad_platform_flags_are_one_line_exit_2():
  proc = _dry_run("--dry_run_platforms=cpu")
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1].startswith("error: --dry_run_platforms=cpu: each must be one of")
  proc = subprocess.run([sys.executable, "-m", "launch.train", "--dry_run_platforms=tpu"], cwd=REPO,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2 and proc.stderr.strip() == "error: --dry_run_platforms needs --dry_run"


def test_local_shuffle_draws_each_minibatch_from_every_device_own_samples():
  """sgd.shuffle=local: every epoch's minibatches partition the batch; chunk c of minibatch b holds K / D samples of
  each device's envs, in device order (what batch_rows.at_local gathers in place)."""
  from pipeline import sgd  # pylint: disable=import-outside-toplevel
  steps, envs, m, k, d = 16, 64, 256, 64, 8
  idx = np.concatenate([np.asarray(sgd.local_indices(jax.random.PRNGKey(3), jnp.int32(b), steps, envs, m, k, d))
                        for b in range(steps * envs // m)])
  assert sorted(idx.tolist()) == list(range(steps * envs))
  device_of = (idx % envs) // (envs // d)
  np.testing.assert_array_equal(device_of.reshape(-1, d, k // d), np.broadcast_to(np.arange(d)[:, None],
                                                                                    (len(idx) // k, d, k // d)))


def test_local_shuffle_moves_no_rows_between_devices():
  """The update's collectives on 8 devices (launch/run/traffic.py): the global shuffle's minibatch gathers move one
  batch of rows per epoch; the local shuffle's move none, and its gradient all-reduces are the same."""
  from launch.configs import default  # pylint: disable=import-outside-toplevel
  from launch.run import programs, traffic  # pylint: disable=import-outside-toplevel
  out = {}
  for shuffle in ("global", "local"):
    config = default.get_config()
    config.update_from_flattened_dict({"num_envs": 64, "num_steps": 16, "diagnostics.enabled": False,
                                       "sgd.shuffle": shuffle, "mesh.data": 8})
    out[shuffle] = traffic.of(programs.build(config, eval_episodes=0).compiled["update"])
  row_bytes = out["global"]["largest"]  # the gathered minibatch [256 samples, W columns] as float32, 16 times
  gathered = out["global"]["by_source"]["minibatch gathers"]
  assert gathered >= 4 * 64 * 16 * 4 * 4 and any(o["source"] == "minibatch gathers" for o in row_bytes)  # ≥ 4 cols
  assert "minibatch gathers" not in out["local"]["by_source"]
  assert out["local"]["by_source"]["gradients"] == out["global"]["by_source"]["gradients"]


def test_tpu_meshes_take_the_interconnect_order(monkeypatch):
  """sharding.topology_order: TPUs in mesh_utils' ring order; CPUs and GPUs as given; an unknown topology as given."""
  import types  # pylint: disable=import-outside-toplevel
  from jax.experimental import mesh_utils  # pylint: disable=import-outside-toplevel
  from sharding import mesh  # pylint: disable=import-outside-toplevel
  tpus = [types.SimpleNamespace(id=i, platform="tpu", process_index=0) for i in range(4)]
  monkeypatch.setattr(mesh_utils, "create_device_mesh", lambda shape, devices, **_: np.asarray(devices[::-1]))
  assert [d.id for d in mesh.topology_order(tpus)] == [3, 2, 1, 0]
  assert [d.id for d in mesh.topology_order(jax.devices())] == [d.id for d in jax.devices()]

  def unknown(*_, **__):
    raise NotImplementedError("topology")
  monkeypatch.setattr(mesh_utils, "create_device_mesh", unknown)
  assert [d.id for d in mesh.topology_order(tpus)] == [0, 1, 2, 3]
