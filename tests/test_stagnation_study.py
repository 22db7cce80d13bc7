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
