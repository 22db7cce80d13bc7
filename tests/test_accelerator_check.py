"""benchmarks/accelerator_check.py --cpu_smoke: the accelerator check at tiny sizes on one CPU device, so that the
command prepared for accelerator machines cannot rot. Checks the JSON's sections and the markdown table. (The overlap
section needs 2 devices and is skipped here; the staged modes themselves are tested in tests/test_dataflow.py.)"""
import json
import os
import subprocess
import sys

from tests import conftest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_cpu_smoke_writes_the_json_and_the_table(tmp_path):
  out = tmp_path / "out"
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=conftest.TEST_XLA_FLAGS,  # 1 device; compiled as the suite's
             JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
  env.pop("PPO_PORTABLE", None)
  proc = subprocess.run([sys.executable, "-m", "benchmarks.accelerator_check", "--cpu_smoke", f"--out_dir={out}"],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads((out / "accelerator_check.json").read_text())
  for section in ("memory", "correctness", "resume", "determinism", "throughput", "kinetix", "overlap"):
    assert section in result and "error" not in result[section], (section, result.get(section))
  assert result["meta"]["device_count"] == 1 and result["meta"]["code_path"] == "cpu"
  update = result["memory"]["reference"]["programs"]["update"]
  assert update["temp"] > 0 and result["memory"]["reference"]["fits"] is True
  # The device run (CPU forms) against the CPU reference in a subprocess (portable path): close, not equal.
  correctness = result["correctness"]
  assert correctness["passed"] and set(correctness["max_rel_diff"]) >= {"policy_loss", "param_norm"}
  assert correctness["device"] != correctness["cpu_reference"]
  assert result["resume"]["passed"] and result["resume"]["differing_keys"] == []
  determinism = result["determinism"]["reference"]  # two compiles, the same bits; XLA's defaults timed beside
  assert determinism["passed"] and len(set(determinism["digests"])) == 1 and len(determinism["xla_defaults_update_s"]) == 2
  rows = {(r["impl"], r["num_envs"]) for r in result["throughput"]["rows"]}
  assert rows == {("ours", 64), ("naive", 64)} and "ratio_vs_naive" in result["throughput"]["rows"][0]
  assert all(r["sps"] > 0 and len(r["update_s"]) == 3 for r in result["throughput"]["rows"])
  # CartPole's transition: one packed row of 36 bytes (obs 4 floats, the action as one int16 column, log-prob, value,
  # reward and done, rewritten as advantage and target) + 16 / 4 minibatches bytes of minibatch indices; streamed per
  # update at least: the rollout writes 36, GAE reads and rewrites 36, the advantage statistics' pass reads 36, 4
  # epochs read 36 + an int32 index written and read.
  ours = next(r for r in result["throughput"]["rows"] if r["impl"] == "ours")
  assert ours["bytes_per_transition"] == 40 and ours["streamed_bytes_per_transition"] == 36 + 2 * 36 + 36 + 4 * (36 + 8)
  assert ours["streamed_gbps"] == ours["streamed_bytes_per_transition"] * ours["sps"] / 1e9
  assert "skipped" in result["overlap"] and "skipped" in result["kinetix"]  # 1 device; kinetix-env not in this env
  assert result["passed"] is True
  table = (out / "accelerator_check.md").read_text()
  assert "| section | result |" in table and "correctness" in table and "throughput ours at 64 envs" in table
  assert "determinism, reference at 64 envs: two compiles, bit for bit | passed" in table


_INTERLEAVE_CHECK = """
import json
from benchmarks import throughput
calls = []
def builder(name):
  def build(num_envs, num_updates):
    calls.append(("build", num_envs, name))
    return (lambda state: (calls.append(("update", num_envs, name)) or state, 0.0)), None, 0.5
  return build
throughput.build_ours, throughput.build_naive = builder("ours"), builder("naive")
rows = throughput.measure_sizes({8: ["ours", "naive"], 16: ["ours"]}, repeats=2, ceiling_gflops=1.0)
print(json.dumps({"calls": calls, "impls_8": [r["impl"] for r in rows[8]], "times_16": len(rows[16][0]["update_s"])}))
"""


def test_throughput_interleaves_sizes_round_by_round():
  """benchmarks/throughput.measure_sizes builds every (size, implementation) first, then runs one update of each per
  round, so the sizes' SPS ratio compares updates taken at the same time (fake builders record the order). In a
  subprocess: the benchmarks define absl flags of the same names, so two of them cannot share a test worker."""
  proc = subprocess.run([sys.executable, "-c", _INTERLEAVE_CHECK], cwd=REPO, capture_output=True, text=True,
                        timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  one_round = [["update", 8, "ours"], ["update", 8, "naive"], ["update", 16, "ours"]]
  assert out["calls"] == [["build", 8, "ours"], ["build", 8, "naive"], ["build", 16, "ours"]] + one_round * 3
  assert out["impls_8"] == ["ours", "naive"] and out["times_16"] == 2
