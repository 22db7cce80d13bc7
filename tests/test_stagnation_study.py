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
