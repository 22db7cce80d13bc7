"""benchmarks/stagnation_study.py, step_noise.py and plateau_continue.py in their --smoke sizes: the base arm's
seeds in one program, evaluated on the common grid, its JSON and plateau checkpoint, then one step-vs-noise
measurement and one continuation from that checkpoint (the study itself is hours: see docs/results.md)."""
import json
import os

import numpy as np

from benchmarks import stagnation_study as study
from benchmarks import plateau_continue, step_noise


def test_smoke_base_arm_then_step_noise(tmp_path):
  out = str(tmp_path / "study")
  study.main(["study", "--smoke", f"--out={out}", "--only=breakout_recipe_N4"])
  with open(os.path.join(out, "breakout_recipe_N4.json"), encoding="utf-8") as f:
    run = json.load(f)
  assert [p["env_steps"] for p in run["points"]] == [0, 256, 512]  # evaluated at 0 and every eval_spacing
  assert all(len(p["eval_return"]) == 2 for p in run["points"])  # both seeds, one program
  assert run["optimizer_steps"] == 32  # 512 / (4 x 32) updates x 4 epochs x 2 minibatches
  assert np.all(np.isfinite([p["kl_mean"] for p in run["points"][1:]]))
  assert os.path.isdir(os.path.join(out, "plateau", "Breakout-MinAtar"))
  with open(os.path.join(out, "report.md"), encoding="utf-8") as f:
    text = f.read()
  assert "| breakout_recipe_N4 |" in text and "Not yet run: breakout_fixed_minibatches_N8" in text

  noise_out = str(tmp_path / "noise")
  step_noise.main(["step_noise", "--smoke", f"--study={out}", f"--out={noise_out}", "--noise_num_envs=4"])
  with open(os.path.join(noise_out, "breakout_recipe_N4.json"), encoding="utf-8") as f:
    m = json.load(f)
  assert len(m["step_kl_fixed"]) == 3 and len(m["noise_pairwise_kl"]) == 3 * 2  # K copies, ordered pairs
  # Independent rollouts: the copies' updates differ, and every copy moved away from the plateau policy.
  assert min(m["noise_pairwise_kl"]) > 0 and min(m["step_kl_fixed"]) > 0
  assert os.path.exists(os.path.join(noise_out, "noise_vs_step.png"))

  cont_out = str(tmp_path / "continue")
  plateau_continue.main(["plateau_continue", "--smoke", f"--continue_study={out}", f"--out={cont_out}",
                         "--variants=ewma"])
  with open(os.path.join(cont_out, "breakout_ewma.json"), encoding="utf-8") as f:
    c = json.load(f)
  assert [p["env_steps"] for p in c["points"]] == [0, 256, 512] and c["ewma_com"] == 64.0
  assert len(c["points"][0]["eval_return"]) == 2 and np.all(np.isfinite([p["kl_mean"] for p in c["points"][1:]]))


def test_plateau_saved_before_a_field_without_arrays_was_added_still_loads(tmp_path):
  """load_plateau reads leaf by leaf: a field the saved state lacks is fine if it holds no arrays (None), not if it
  holds one, and a leaf of another shape is an error naming it."""
  import jax  # pylint: disable=import-outside-toplevel
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  import pytest  # pylint: disable=import-outside-toplevel
  from flax import struct  # pylint: disable=import-outside-toplevel

  @struct.dataclass
  class Runner:
    obs: jax.Array
    level_buffer: jax.Array | None = None  # added after the checkpoint was written

  @struct.dataclass
  class State:
    params: dict
    runner: Runner

  old = {"params": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, "runner": {"obs": np.ones(4, np.int32)}}
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(str(tmp_path / "plateau" / "Game"), old)
  abstract = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=jax.sharding.SingleDeviceSharding(  # noqa: E731
      jax.devices()[0]))
  target = State(params={"w": abstract(old["params"]["w"])}, runner=Runner(obs=abstract(old["runner"]["obs"])))
  state = study.load_plateau(str(tmp_path), "Game", target)
  np.testing.assert_array_equal(state.params["w"], old["params"]["w"])
  assert state.runner.level_buffer is None and state.runner.obs.dtype == np.int32
  with pytest.raises(KeyError):  # a field with an array that the checkpoint lacks
    study.load_plateau(str(tmp_path), "Game", target.replace(runner=Runner(obs=target.runner.obs,
                                                                             level_buffer=target.runner.obs)))
  with pytest.raises(ValueError, match=r"\.params\['w'\] is float32\[2, 3\], expected float32\[3, 2\]"):
    study.load_plateau(str(tmp_path), "Game", target.replace(params={"w": jax.ShapeDtypeStruct((3, 2), np.float32)}))


def _qr_operand_ranks(jaxpr) -> list[int]:
  """Ranks of the operands of every QR in `jaxpr` and the jaxprs nested in it (scan and loop bodies)."""
  import jax  # pylint: disable=import-outside-toplevel
  ranks = []
  for eqn in jaxpr.eqns:
    if "qr" in eqn.primitive.name or "householder" in eqn.primitive.name:
      ranks += [v.aval.ndim for v in eqn.invars]
    for param in eqn.params.values():
      for sub in (param if isinstance(param, (list, tuple)) else [param]):
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          ranks += _qr_operand_ranks(sub.jaxpr)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          ranks += _qr_operand_ranks(sub)
  return ranks


def test_the_seed_axis_inits_each_seed_unbatched_and_equals_separate_runs():
  """launch/run/programs.py's seed axis: the seeds' inits run one after the other, so the orthogonal initializer's QRs
  are never batched (a batched QR deadlocked XLA:CPU's 2-thread pool with 16 seeds), and seed i of S seeds in one
  program is the run of key i on its own: the init bit for bit, an update up to float order."""
  import jax  # pylint: disable=import-outside-toplevel
  from launch.config import resolve as config_lib  # pylint: disable=import-outside-toplevel
  from launch.run import programs
  from launch.configs import debug  # pylint: disable=import-outside-toplevel
  config = debug.get_config()
  resolved = config_lib.resolve(config, num_devices=1)
  agent = programs.build_agent(config, resolved)
  keys = jax.random.split(jax.random.PRNGKey(3), 3)
  ranks = _qr_operand_ranks(jax.make_jaxpr(programs.init_function(agent, resolved.ppo, 3))(keys).jaxpr)
  assert ranks and all(r == 2 for r in ranks), ranks  # QRs are there, one matrix each
  seeded = programs.build(config, resolved=resolved, eval_episodes=0, num_seeds=3)
  single = programs.build(config, resolved=resolved, eval_episodes=0)
  init_s = jax.device_get(seeded.init(keys))  # (the updates donate their input)
  after_s = jax.device_get(seeded.update(seeded.init(keys))[0].params)
  for i in (0, 2):
    init_i = jax.device_get(single.init(keys[i]))
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a[i], b), init_s, init_i)  # pylint: disable=cell-var-from-loop
    after_i = jax.device_get(single.update(single.init(keys[i]))[0].params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a[i], b, rtol=1e-5, atol=1e-6),  # pylint: disable=cell-var-from-loop
                 after_s, after_i)


def test_step_noise_report_keeps_games_apart(tmp_path):
  """Each (game, rule) is its own curve and each game its own row of panels (two games once shared one line)."""
  def run(game, rule, n):
    return {"game": game, "rule": rule, "num_envs": n, "copies": 3, "minibatch_size": 8, "num_minibatches": 2,
            "learning_rate": 1e-3, "step_kl_batch": [1e-2] * 3, "step_kl_fixed": [1e-2, 2e-2, 3e-2],
            "noise_pairwise_kl": [1e-2] * 6, "noise_over_step": 0.5, "seconds": 1.0, "compile_s": 1.0}
  runs = [run(g, r, n) for g in ("B-MinAtar", "A-MinAtar") for r in ("recipe", "sqrt_lr") for n in (32, 8)]
  grouped = step_noise.curves(runs)
  assert list(grouped) == [("A-MinAtar", "recipe"), ("A-MinAtar", "sqrt_lr"), ("B-MinAtar", "recipe"),
                           ("B-MinAtar", "sqrt_lr")]
  assert all([r["num_envs"] for r in rs] == [8, 32] and {r["game"] for r in rs} == {g}
             for (g, _), rs in grouped.items())
  for r in runs:
    with open(tmp_path / f"{r['game']}_{r['rule']}_{r['num_envs']}.json", "w", encoding="utf-8") as f:
      json.dump(r, f)
  text = step_noise.report(str(tmp_path))
  assert text.count("| A-MinAtar |") == 4 and text.count("| B-MinAtar |") == 4
  assert (tmp_path / "noise_vs_step.png").exists()
