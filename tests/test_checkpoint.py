"""Exact resume across preemptions: SIGTERM and kill -9 at several points (one during an async save), other device
counts, corrupted checkpoints, incompatible configs, non-finite training, and `restore_from`.

Runs are `python -m launch.train` subprocesses of one 12-update debug config; a persistent compilation cache shared
by the module keeps each to a few seconds. Test-only env hooks (launch/run/preemption.py, launch/checkpoint/store.py) pause
the loop after an update, or hold an async save before its atomic rename, so that signals land at exact points.
"""
import dataclasses
import functools
import glob
import hashlib
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from etils.epath import testing as epath_testing
from jax.sharding import PartitionSpec as P

from launch import checkpoint
from launch.checkpoint import packed_arrays
from launch.config import resolve as config_lib
from launch.report import metrics_file
from launch.run import programs, trainer
from launch.checkpoint import compat, format as format_lib, saved_run
from launch.configs import debug
from learner import diagnostics as diagnostics_lib
from pipeline import dataflow
from pipeline import obs_norm as obs_norm_lib
from pipeline import iteration as iteration_lib
from sharding import Layout, make_mesh

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UPDATES, BATCH = 12, 8 * 16
ARGS = ("--config=launch/configs/debug.py", f"--config.total_env_steps={UPDATES * BATCH}", "--config.log_every=4",
        "--config.eval_every=4", "--config.checkpoint_every=3", "--config.keep_checkpoints=3")
TIMING = ("wall_time", "sps", "compile_time", "first_update_time")  # differ between runs by nature


@pytest.fixture(scope="module")
def jax_cache(tmp_path_factory):
  return str(tmp_path_factory.mktemp("jax_cache"))


def _env(jax_cache, devices=1, pause=None, hold=None):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONFAULTHANDLER="1", JAX_COMPILATION_CACHE_DIR=jax_cache,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}" if devices > 1 else "")
  env.pop("PPO_TEST_PAUSE_AT_UPDATE", None)
  env.pop("PPO_TEST_HOLD_SAVE_AT_UPDATE", None)
  if pause is not None:
    env["PPO_TEST_PAUSE_AT_UPDATE"] = str(pause)
  if hold is not None:
    env["PPO_TEST_HOLD_SAVE_AT_UPDATE"] = str(hold)
  return env


def _start(jax_cache, workdir, *extra, devices=1, pause=None, hold=None):
  return subprocess.Popen([sys.executable, "-m", "launch.train", f"--workdir={workdir}", *ARGS, *extra], cwd=REPO,
                          env=_env(jax_cache, devices, pause, hold), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def _run(jax_cache, workdir, *extra, devices=1):
  proc = _start(jax_cache, workdir, *extra, devices=devices)
  out, err = proc.communicate(timeout=300)
  return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _wait_for(proc, *paths):
  """Polls until the run has written every marker file (it is paused or holding a save there)."""
  deadline = time.time() + 180
  while not all(os.path.exists(p) for p in paths):
    assert proc.poll() is None, f"run exited with {proc.returncode} before {paths}:\n{proc.stderr.read()[-3000:]}"
    if time.time() > deadline:
      proc.send_signal(signal.SIGABRT)  # with PYTHONFAULTHANDLER set: dumps every thread's stack
      pytest.fail(f"timed out waiting for {paths}:\n{proc.communicate()[1][-5000:]}")
    time.sleep(0.05)


def _interrupt(proc, sig):
  proc.send_signal(sig)
  _, err = proc.communicate(timeout=120)
  return err


def _steps(workdir):
  return sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())


def _rows(workdir):
  return [{k: v for k, v in r.items() if k not in TIMING}
          for r in metrics_file.read_jsonl(os.path.join(workdir, "metrics.jsonl"))]


def _host_file(workdir, step):
  """The path of a step's host JSON item (orbax names the file)."""
  paths = [p for p in glob.glob(f"{workdir}/checkpoints/{step}/host/*") if not p.endswith(".txt")]
  assert len(paths) == 1, paths
  return paths[0]


def _host(workdir, step):
  with open(_host_file(workdir, step), encoding="utf-8") as f:
    return json.load(f)


def _files(directory):
  out = {}
  for path in sorted(glob.glob(os.path.join(directory, "**"), recursive=True)):
    if os.path.isfile(path):
      with open(path, "rb") as f:
        out[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
  return out


@pytest.fixture(scope="module")
def baseline(jax_cache, tmp_path_factory):
  """The uninterrupted run on one device."""
  workdir = str(tmp_path_factory.mktemp("baseline") / "run")
  proc = _run(jax_cache, workdir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert [r["update"] for r in _rows(workdir)] == [4, 8, 12]
  assert _steps(workdir) == [6, 9, 12]
  return workdir


def test_sigterm_and_kill9_resumes_are_bit_exact(jax_cache, baseline, tmp_path):
  wd = str(tmp_path / "run")
  # SIGTERM in the middle of a log interval, no save due: it saves update 2 with the interval's metrics so far.
  proc = _start(jax_cache, wd, pause=2)
  _wait_for(proc, f"{wd}/test_paused_at_2")
  err = _interrupt(proc, signal.SIGTERM)
  assert proc.returncode == 3, err[-3000:]
  assert "stopped on request after update 2" in err and _steps(wd) == [2]
  # SIGTERM while the async save of update 6 is in flight (held before its rename) and the loop is at update 7.
  proc = _start(jax_cache, wd, pause=7, hold=6)
  _wait_for(proc, f"{wd}/test_holding_save_6", f"{wd}/test_paused_at_7")
  assert not os.path.exists(f"{wd}/checkpoints/6")
  err = _interrupt(proc, signal.SIGTERM)
  assert proc.returncode == 3, err[-3000:]
  assert "stopped on request after update 7" in err and _steps(wd) == [3, 6, 7]
  # kill -9 while the async save of update 9 is in flight: only a temporary directory is left behind.
  proc = _start(jax_cache, wd, pause=10, hold=9)
  _wait_for(proc, f"{wd}/test_holding_save_9", f"{wd}/test_paused_at_10")
  _interrupt(proc, signal.SIGKILL)
  assert proc.returncode == -signal.SIGKILL
  assert _steps(wd) == [3, 6, 7] and glob.glob(f"{wd}/checkpoints/9.orbax-checkpoint-tmp*")
  # The same command again: resumes from update 7 and finishes the same run.
  proc = _run(jax_cache, wd)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "unreadable" not in proc.stderr and "changed config" not in proc.stderr
  assert _steps(wd) == [7, 9, 12] and not glob.glob(f"{wd}/checkpoints/*tmp*")
  assert _rows(wd) == _rows(baseline)  # every row, every value: ==


def test_resume_on_other_device_counts(jax_cache, baseline, tmp_path):
  wd = str(tmp_path / "run")
  proc = _start(jax_cache, wd, "--config.mesh.data=8", devices=8, pause=5)
  _wait_for(proc, f"{wd}/test_paused_at_5")
  err = _interrupt(proc, signal.SIGTERM)
  assert proc.returncode == 3, err[-3000:]
  proc = _start(jax_cache, wd, "--config.mesh.data=1", devices=1, pause=10)  # 8 → 1
  _wait_for(proc, f"{wd}/test_paused_at_10")
  err = _interrupt(proc, signal.SIGTERM)
  assert proc.returncode == 3, err[-3000:]
  proc = _run(jax_cache, wd, "--config.mesh.data=8", devices=8)  # 1 → 8
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows, expected = _rows(wd), _rows(baseline)
  assert [r["update"] for r in rows] == [4, 8, 12]
  for row, want in zip(rows, expected):
    for key in ("param_norm", "policy_loss", "value_loss", "entropy", "approx_kl"):
      # The policy loss and the KL are means of terms that cancel to 1e-4 and 1e-6 (see test_train.py): float
      # reassociation across shards shows in their last digits, so they are compared at the scale of their terms.
      atol = {"policy_loss": 1e-6, "approx_kl": 1e-8}.get(key, 0.0)
      np.testing.assert_allclose(row[key], want[key], rtol=1e-4, atol=atol, err_msg=f"{key} at {row['update']}")


def test_overlap_pipeline_resume_is_bit_exact(jax_cache, tmp_path):
  """The staged pipeline with policy lag 1: the checkpoint holds the in-flight params version too."""
  overlap = ("--config.pipeline.mode=overlap", "--config.pipeline.max_policy_lag=1")
  whole, wd = str(tmp_path / "whole"), str(tmp_path / "run")
  proc = _run(jax_cache, whole, *overlap)
  assert proc.returncode == 0, proc.stderr[-3000:]
  proc = _start(jax_cache, wd, *overlap, pause=5)
  _wait_for(proc, f"{wd}/test_paused_at_5")
  err = _interrupt(proc, signal.SIGTERM)
  assert proc.returncode == 3, err[-3000:]
  paths = [path for path, *_ in _host(wd, 5)["layout"]["learner"]]  # the learner's parts, by name
  params = [p for p in paths if p.startswith("['params']")]
  stale = [p for p in paths if p.startswith("['stale_params']")]
  assert params and [p.replace("['stale_params'][0]", "['params']", 1) for p in stale] == params  # one version
  proc = _run(jax_cache, wd, *overlap)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert _rows(wd) == _rows(whole) and _rows(whole)[-1]["policy_lag_max"] == 1


def test_compatibility_rules():
  saved = compat.config_json(_debug_config())
  compat.check_compatible(_debug_config(**{"mesh.data": 8, "log_every": 2, "pipeline.mode": "sync"}), saved,
                                 "here")  # placement, logging and fused <-> sync (identical results) may change
  with pytest.raises(config_lib.ConfigError) as e:
    compat.check_compatible(_debug_config(num_envs=16, seed=1, **{"pipeline.mode": "overlap"}), saved, "X")
  assert str(e.value).splitlines()[:4] == [
      "cannot resume from X:",
      "  config.num_envs=16 does not match 8 in the checkpoint (there is one saved env state per env)",
      "  config.seed=1 does not match 0 in the checkpoint (the saved PRNG key continues that seed's run)",
      "  config.pipeline.mode='overlap' with max_policy_lag=1 gives policy lag 1, the checkpoint's is 0 (it holds "
      "that many in-flight params versions)"]


def test_corrupted_checkpoints_fall_back_to_the_previous_complete_one(jax_cache, baseline, tmp_path):
  wd = str(tmp_path / "run")
  shutil.copytree(baseline, wd)
  # Step 12 half-written (its array data files cut short); step 9 whose arrays no longer match the fingerprint
  # saved with them (what changed bytes that still decode look like; orbax's own checksums catch most others first).
  data = glob.glob(f"{wd}/checkpoints/12/arrays/*/[0-9]*")  # the zarr chunks of each packed array
  assert len(data) >= 2
  for path in data:
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)
  host = _host(wd, 9)
  host["fingerprint"]["runner"]["env_uint32"] ^= 1
  with open(_host_file(wd, 9), "w", encoding="utf-8") as f:
    json.dump(host, f)
  proc = _run(jax_cache, wd)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"checkpoint {wd}/checkpoints/12 is unreadable" in proc.stderr
  assert f"checkpoint {wd}/checkpoints/9 is unreadable" in proc.stderr
  assert "corrupted bytes" in proc.stderr and "fell back to the previous checkpoint" in proc.stderr
  # The warnings name the broken file, not orbax's TensorStore spec, and no traceback of the failed read follows.
  assert f"is unreadable ({wd}/checkpoints/12/arrays/" in proc.stderr, proc.stderr[-3000:]
  assert "TensorStore" not in proc.stderr and "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr
  assert sorted(d.split("-")[0] for d in os.listdir(f"{wd}/checkpoints_corrupt")) == ["12", "9"]  # kept, not deleted
  assert _steps(wd) == [6, 9, 12]
  assert _rows(wd) == _rows(baseline)


def test_incompatible_config_is_one_clear_error(jax_cache, baseline, tmp_path):
  wd = str(tmp_path / "run")
  shutil.copytree(baseline, wd)
  before = _files(wd)
  proc = _run(jax_cache, wd, "--config.env_name=cue", "--config.network.hidden_sizes=(32,32)",
              "--config.learning_rate=0.1")
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert f"error: cannot resume from {wd}/checkpoints/12:" in proc.stderr
  assert "config.env_name='cue' does not match 'CartPole-v1' in the checkpoint" in proc.stderr
  assert "config.network.hidden_sizes=(32, 32) does not match (16, 16) in the checkpoint" in proc.stderr
  assert "learning_rate" not in proc.stderr  # may change (with a warning); only the breaking keys are listed
  assert _files(wd) == before  # nothing touched


def test_non_finite_stops_naming_the_update_and_keeps_the_last_good_checkpoint(jax_cache, baseline, tmp_path):
  wd = str(tmp_path / "run")
  shutil.copytree(baseline, wd)
  for step in (9, 12):
    shutil.rmtree(f"{wd}/checkpoints/{step}")
  good = _files(f"{wd}/checkpoints/6")
  proc = _run(jax_cache, wd, "--config.learning_rate=1e30")  # params blow up in the first update after update 6
  assert proc.returncode == 4, proc.stderr[-3000:]
  assert "changed config keys" in proc.stderr and "learning_rate: 0.0025 -> 1e+30" in proc.stderr
  assert "error: non-finite loss or params at update 7 (" in proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith("error: non-finite")  # the last line, no bar after it
  assert f"the last good checkpoint is {wd}/checkpoints/6 (update 6)" in proc.stderr
  assert _steps(wd) == [6] and _files(f"{wd}/checkpoints/6") == good  # the poisoned state (update 9) never saved
  assert _rows(wd) == _rows(baseline)[:1]
  proc = _run(jax_cache, wd)  # the good checkpoint still finishes the original run exactly
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert _rows(wd) == _rows(baseline)


# In-process pieces.


def _debug_config(**overrides):
  config = debug.get_config()
  config.update_from_flattened_dict(overrides)  # "a.b" keys, type-checked as assignments
  return config


def _state_target(config, mesh_devices):
  progs = programs.build(config, make_mesh(mesh_devices), compile_update=False)
  key = jax.random.PRNGKey(config.seed)
  return (lambda: dataflow.Snapshot(state=progs.init(key))), dataflow.Snapshot(state=progs.abstract_state)


def test_restore_from_starts_a_new_run_from_params_only(baseline, tmp_path):
  config = _debug_config(restore_from=baseline)
  init, target = _state_target(config, 8)
  ckpts = checkpoint.RunCheckpoints(str(tmp_path / "new"), config)
  snapshot, resume = ckpts.restore_or_init(init, target)
  ckpts.close()
  state, fresh, target = snapshot.state, init().state, target.state
  assert resume.update == 0 and int(state.update) == 0
  norm = float(jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(state.params))))
  np.testing.assert_allclose(norm, _rows(baseline)[-1]["param_norm"], rtol=1e-6)  # the baseline's final params
  for got, want in zip(jax.tree.leaves((state.opt_state, state.runner, state.key)),
                       jax.tree.leaves((fresh.opt_state, fresh.runner, fresh.key))):
    np.testing.assert_array_equal(got, want)  # everything else is a fresh run's
  assert state.params["params"]["actor"]["Dense_0"]["kernel"].sharding == target.params["params"]["actor"][
      "Dense_0"]["kernel"].sharding
  _, other = _state_target(_debug_config(**{"network.hidden_sizes": (8,)}), 1)
  with pytest.raises(config_lib.ConfigError) as e:
    checkpoint.read_params(baseline, other.state.params)
  assert "its params do not fit this network" in str(e.value)
  assert "['params']['actor']['Dense_0']['kernel']: (4, 16) there, (4, 8) here" in str(e.value)
  with pytest.raises(config_lib.ConfigError, match="holds no checkpoint"):
    checkpoint.read_params(str(tmp_path), other.state.params)
  # One step's directory names that step; a path that is not there says so.
  last = max(int(p.name) for p in (pathlib.Path(baseline) / "checkpoints").iterdir() if p.name.isdigit())
  by_step = checkpoint.read_params(str(pathlib.Path(baseline) / "checkpoints" / str(last)), target.params)
  for got, want in zip(jax.tree.leaves(by_step), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(got, want)
  with pytest.raises(config_lib.ConfigError, match="no such directory"):
    checkpoint.read_params(str(tmp_path / "missing"), target.params)


def _buffers(tree):
  return [shard.data.unsafe_buffer_pointer() for x in jax.tree.leaves(tree) for shard in x.addressable_shards]


def test_restore_from_gives_every_state_leaf_its_own_buffer(baseline, tmp_path):
  """The update donates the whole state: PPO-EWMA's average starts at the restored params as a copy of them (the
  same buffers twice made the first update fail with "Attempt to donate the same buffer twice")."""
  config = _debug_config(**{"restore_from": baseline, "ewma.enabled": True})
  init, target = _state_target(config, 8)
  ckpts = checkpoint.RunCheckpoints(str(tmp_path / "new"), config)
  state = ckpts.restore_or_init(init, target)[0].state
  ckpts.close()
  for got, want in zip(jax.tree.leaves(state.proximal.params), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(got, want)
  buffers = _buffers(state)
  assert len(buffers) == len(set(buffers))


STATS = obs_norm_lib.RunningMeanStd(mean=jnp.arange(4.0), var=jnp.arange(1.0, 5.0), count=jnp.float32(1234))


@pytest.fixture(scope="module")
def obs_norm_source(tmp_path_factory):
  """A saved run with obs_norm on whose statistics (STATS, forged) no fresh run has."""
  workdir = str(tmp_path_factory.mktemp("obs_norm_source") / "run")
  config = _debug_config(obs_norm=True)
  init, target = _state_target(config, 1)
  state = init().state
  state = state.replace(runner=state.runner.replace(obs_norm=jax.device_put(
      STATS, jax.tree.map(lambda s: s.sharding, target.state.runner.obs_norm))))
  ckpts = checkpoint.RunCheckpoints(workdir, config)
  ckpts.maybe_save(dataflow.Snapshot(state=state), 1, [], [], 0.0, force=True)
  ckpts.close()
  return workdir


def test_restore_from_carries_the_observation_statistics(obs_norm_source, tmp_path):
  """The params were trained on observations scaled by the source's statistics: a new run with obs_norm starts from
  them (and their count), not from its own first observations; settings under which the params mean something else
  are refused in one line naming the keys."""
  config = _debug_config(obs_norm=True, restore_from=obs_norm_source)
  init, target = _state_target(config, 8)
  ckpts = checkpoint.RunCheckpoints(str(tmp_path / "new"), config)
  snapshot, _ = ckpts.restore_or_init(init, target)
  ckpts.close()
  stats = snapshot.state.runner.obs_norm
  assert float(init().state.runner.obs_norm.count) == 8  # a fresh run's: its first observations
  for got, want in zip(jax.tree.leaves(stats), jax.tree.leaves(STATS)):
    np.testing.assert_array_equal(got, want)
  assert stats.mean.sharding == target.state.runner.obs_norm.mean.sharding
  saved = saved_run.load(obs_norm_source).policy.spec.obs_norm  # what launch.evaluate normalises with
  assert saved.mean == (0.0, 1.0, 2.0, 3.0) and saved.var == (1.0, 2.0, 3.0, 4.0)
  # Another policy's inputs: refused before anything is read, naming every key that differs.
  for overrides, named in (({"obs_norm": False}, ["obs_norm"]),
                           ({"obs_store": "bfloat16", "network.activation": "relu", "env_name": "cue"},
                            ["env_name", "obs_store", "network.activation"])):
    config = _debug_config(**{"obs_norm": True, "restore_from": obs_norm_source, **overrides})
    init, target = _state_target(config, 1)
    with pytest.raises(config_lib.ConfigError) as e:
      checkpoint.RunCheckpoints(str(tmp_path / "refused"), config).restore_or_init(init, target)
    assert "\n" not in str(e.value) and "its params mean something else in this run" in str(e.value)
    assert re.findall(r"config\.([\w.]+)=", str(e.value)) == ["restore_from", *named], str(e.value)
  # Other dynamics with the same observations and actions are fine (e.g. other levels of one Kinetix size).
  config = _debug_config(obs_norm=True, restore_from=obs_norm_source, env_name="cartpole_substeps:2")
  init, target = _state_target(config, 1)
  ckpts = checkpoint.RunCheckpoints(str(tmp_path / "other_dynamics"), config)
  assert float(ckpts.restore_or_init(init, target)[0].state.runner.obs_norm.count) == 1234
  ckpts.close()


def _fingerprints(tree, devices):
  """The fingerprints a save stores for `tree` split over `devices` (the production packer's)."""
  placed = jax.device_put(tree, Layout(make_mesh(devices)).env_shardings(tree))
  _, prints = format_lib.make_packer({"t": placed})({"t": placed})
  return jax.tree.map(int, jax.device_get(prints))["t"]


def test_fingerprint_catches_any_bit_flip_and_ignores_the_sharding():
  x = jnp.arange(64, dtype=jnp.float32).reshape(8, 8) / 7
  tree = {"x": x, "i": jnp.arange(8, dtype=jnp.int32), "b": jnp.arange(8) % 3 == 0}
  base = _fingerprints(tree, 1)
  assert set(base) == {"env_uint32", "env_uint8"} and _fingerprints(tree, 8) == base
  bits = np.asarray(x).view(np.uint32).copy()
  for index, bit in [(0, 0), (13, 31), (63, 7)]:
    flipped = bits.copy()
    flipped.flat[index] ^= np.uint32(1 << bit)
    changed = _fingerprints(dict(tree, x=jnp.asarray(flipped.view(np.float32))), 8)
    assert changed["env_uint32"] != base["env_uint32"] and changed["env_uint8"] == base["env_uint8"]
  assert _fingerprints(dict(tree, i=tree["i"][::-1]), 8)["env_uint32"] != base["env_uint32"]  # order counts


def test_metrics_rows_drop_rows_past_the_checkpoint_and_a_cut_line(tmp_path):
  path = str(tmp_path / "metrics.jsonl")
  with open(path, "w", encoding="utf-8") as f:
    f.write('{"update": 4, "a": 1}\n{"update": 8, "a": 2}\n{"update": 12, "a": 3}\n{"update": 16, "a"')
  jsonl = metrics_file.JsonlFile(path, resume_update=8)  # what MetricsSinks keeps on resume
  jsonl.close()
  assert metrics_file.read_jsonl(path) == [{"update": 4, "a": 1}, {"update": 8, "a": 2}]
  metrics_file.JsonlFile(path, resume_update=0).close()
  assert metrics_file.read_jsonl(path) == []


def test_packing_round_trips_every_bit_and_restores_onto_other_device_counts():
  layout8 = Layout(make_mesh(8))
  special = np.array([np.nan, -0.0, np.inf, 1e-45, -3.5, 0.0, 7.0, -np.inf], np.float32)
  nan_payload = np.array([0x7FC00001], np.uint32).view(np.float32)  # a NaN with a payload: only bits compare it
  tree = {
      "params": jnp.asarray(np.concatenate([special, nan_payload]).reshape(3, 3)),
      "key": jax.random.key(3), "raw_key": jax.random.PRNGKey(5), "count": jnp.int32(-7),
      "envs": {"done": jnp.arange(16) % 3 == 0, "cell": jnp.arange(-24, 24, dtype=jnp.int8).reshape(16, 3),
               "half": jnp.linspace(-2, 2, 64, dtype=jnp.bfloat16).reshape(16, 2, 2),
               "step": jnp.asarray(np.arange(16, dtype=np.uint32) * np.uint32(2654435761))},
  }
  shardings = jax.tree.map(lambda _: layout8.replicated, tree)
  shardings["envs"] = layout8.env_shardings(tree["envs"])
  tree = jax.device_put(tree, shardings)
  packed = format_lib.make_packer({"tree": tree})({"tree": tree})[0]["tree"]  # what a save packs
  # One array per placement and word size; the env-split ones stay split like their leaves (no data moved).
  assert {k: (v.shape, v.sharding.spec) for k, v in packed.items()} == {
      "flat_uint32": ((9 + 2 + 2 + 1,), P()), "env_uint8": ((16, 1 + 3), P("data", None)),
      "env_uint16": ((16, 4), P("data", None)), "env_uint32": ((16, 1), P("data", None))}
  on_host = jax.device_get(packed)  # what a checkpoint holds
  for devices in (1, 2, 8):
    layout = Layout(make_mesh(devices))
    want = jax.tree.map(lambda _: layout.replicated, tree)
    want["envs"] = layout.env_shardings(tree["envs"])
    target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, want)
    shapes = packed_arrays.packed_shapes(target)
    back = packed_arrays.unpacker(target)(jax.device_put(on_host, {k: v.sharding for k, v in shapes.items()}))
    assert packed_arrays.layout(back) == packed_arrays.layout(tree)
    for (path, got), original in zip(jax.tree_util.tree_leaves_with_path(back), jax.tree.leaves(tree)):
      assert got.dtype == original.dtype and got.sharding == _sharding_at(want, path), path
      if jnp.issubdtype(got.dtype, jax.dtypes.prng_key):
        got, original = jax.random.key_data(got), jax.random.key_data(original)
      np.testing.assert_array_equal(np.atleast_1d(got).view(np.uint8), np.atleast_1d(original).view(np.uint8))
  with pytest.raises(config_lib.ConfigError) as e:  # another structure is refused by name, not read as garbage
    compat.check_layout({"params": {"w": jax.ShapeDtypeStruct((4, 8), jnp.float32, sharding=layout8.replicated)}},
                               {"params": packed_arrays.layout({"w": tree["params"]})}, "X")
  assert str(e.value).splitlines()[1] == "  params['w']: (3, 3) there, (4, 8) here"


def _sharding_at(shardings, path):
  node = shardings
  for key in path:
    node = node[key.key]
  return node


def test_a_non_finite_queued_save_is_never_written_and_is_raised(tmp_path):
  config = _debug_config(checkpoint_every=1)
  init, _ = _state_target(config, 1)
  ckpts = checkpoint.RunCheckpoints(str(tmp_path), config)
  fine = iteration_lib.UpdateMetrics(*(jnp.float32(1.0),) * 8)
  assert ckpts.maybe_save(init(), 3, [fine, fine.replace(value_loss=jnp.float32(np.nan))], [0, 0], 0.0)
  with pytest.raises(checkpoint.NonFiniteError, match="non-finite loss or params at update 3"):
    ckpts.close()  # or the next maybe_save: a due save's checks run in the writer thread
  assert not os.path.exists(ckpts.step_path(3))
  ckpts = checkpoint.RunCheckpoints(str(tmp_path), config)
  with pytest.raises(checkpoint.NonFiniteError, match="at update 4"):  # a forced save checks before returning
    ckpts.maybe_save(init(), 4, [fine.replace(param_norm=jnp.inf)], [0], 0.0, force=True)
  ckpts.close()


def test_unfinished_interval_metrics_of_another_version_resume(tmp_path):
  """A step saved by a version with other metrics (one since retired, two not yet computed) resumes: the retired one
  is dropped, the missing ones are NaN in the restored updates (so in the next row), the rest exact."""
  config = _debug_config(checkpoint_every=1)
  init, target = _state_target(config, 1)
  diag = diagnostics_lib.Diagnostics(*(jnp.float32(2.0),) * len(dataclasses.fields(diagnostics_lib.Diagnostics)))
  metrics = iteration_lib.UpdateMetrics(*(jnp.float32(1.5),) * 7, episode_count=jnp.int32(3), diagnostics=diag)
  ckpts = checkpoint.RunCheckpoints(str(tmp_path), config)
  ckpts.maybe_save(init(), 0, [metrics, metrics], [0, 0], 1.0, force=True)
  ckpts.close()
  host = _host(str(tmp_path), 0)
  saved = host["pending_metrics"]
  saved["retired_metric"] = saved.pop("entropy")
  del saved["diagnostics.kl_mean"]
  with open(_host_file(str(tmp_path), 0), "w", encoding="utf-8") as f:
    json.dump(format_lib.seal(host), f)  # as that version wrote it: a record that matches its checksum
  ckpts = checkpoint.RunCheckpoints(str(tmp_path), config)
  _, resume = ckpts.restore_or_init(init, target)
  ckpts.close()
  assert resume.update == 0 and resume.lags == (0, 0) and len(resume.pending) == 2
  row = trainer.summarize(list(resume.pending))
  assert row["entropy"] is None and row["kl_mean"] is None and "retired_metric" not in row  # JSON null: unknown
  assert row["policy_loss"] == 1.5 and row["update_norm"] == 2.0 and row["episodes"] == 6
  del saved["policy_loss"]  # one the non-finite guard checks: the interval's start is not carried on
  with open(_host_file(str(tmp_path), 0), "w", encoding="utf-8") as f:
    json.dump(format_lib.seal(host), f)
  ckpts = checkpoint.RunCheckpoints(str(tmp_path), config)
  _, resume = ckpts.restore_or_init(init, target)
  ckpts.close()
  assert resume.update == 0 and resume.pending == () and resume.lags == ()


def test_a_corrupt_step_on_a_gs_workdir_is_moved_aside(tmp_path, monkeypatch):
  """Quarantine through etils.epath: a fake gs://bucket (a local folder behind epath, with no directory rename, as
  on object stores) holds the step; nothing may go through os/shutil on the URI."""
  bucket, uri = tmp_path / "bucket", "gs://bucket/"
  (tmp_path / "cwd").mkdir()
  monkeypatch.chdir(tmp_path / "cwd")  # where os calls on "gs://..." would land
  local = lambda p: str(bucket / os.fspath(p)[len(uri):]) if os.fspath(p).startswith(uri) else os.fspath(p)
  remote = lambda p: uri + os.path.relpath(p, bucket) if str(p).startswith(str(bucket)) else p

  def on(fn, path, *args, **kwargs):
    return fn(local(path), *args, **kwargs)

  def rename(fn, path, dst):
    if os.path.isdir(local(path)) and os.fspath(path).startswith(uri):
      raise OSError("this object store has no directory rename")
    return fn(local(path), local(dst))

  def walk(fn, top, **kwargs):
    for root, dirs, files in fn(local(top), **kwargs):
      yield remote(root), dirs, files

  mocked = {k: on for k in ("exists", "glob", "isdir", "listdir", "makedirs", "mkdir", "open", "remove", "rmtree",
                            "stat")}
  step = bucket / "run" / "checkpoints" / "12"
  (step / "arrays").mkdir(parents=True)
  (step / "arrays" / "0.0").write_bytes(b"cut sho")
  (step / "host.json").write_text("{}")
  ckpts = checkpoint.RunCheckpoints(str(tmp_path / "local"), _debug_config())
  ckpts.directory = uri + "run/checkpoints"  # as for --workdir=gs://bucket/run
  with epath_testing.mock_epath(**mocked, rename=rename, walk=walk,
                                copy=lambda fn, p, dst, overwrite: fn(local(p), local(dst), overwrite=overwrite)):
    ckpts._quarantine(12, ValueError("corrupted bytes"))  # pylint: disable=protected-access
  ckpts.close()
  assert not step.exists()
  (moved,) = (bucket / "run" / "checkpoints_corrupt").iterdir()
  assert moved.name.startswith("12-") and (moved / "arrays" / "0.0").read_bytes() == b"cut sho"
  assert (moved / "host.json").read_text() == "{}" and not (tmp_path / "cwd" / "gs:").exists()
