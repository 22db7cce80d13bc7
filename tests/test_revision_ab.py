"""benchmarks/revision_ab.py: config overrides typed as the defaults, and the alternating-rounds protocol end to end
(both sides this checkout, a tiny config: the second worker's programs come from the compilation cache)."""
import os
import re
import subprocess
import sys

import pytest

from benchmarks import revision_ab
from launch.configs import default

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_overrides_take_the_type_of_the_value_they_replace():
  config = default.get_config()
  revision_ab.apply_overrides(config, ["--config.num_envs=512", "--config.diagnostics.enabled=false",
                                       "--config.learning_rate=0.00025", "--config.env_name=gymnax:Breakout-MinAtar"])
  assert config.num_envs == 512 and isinstance(config.num_envs, int)
  assert config.diagnostics.enabled is False and config.learning_rate == 2.5e-4
  assert config.env_name == "gymnax:Breakout-MinAtar"
  with pytest.raises(KeyError):
    revision_ab.apply_overrides(config, ["--config.no_such_key=1"])


def test_worker_environment_sets_the_checkout_and_the_extra_variables():
  env = revision_ab.worker_environment("/x", ["GLIBC_TUNABLES=glibc.malloc.hugetlb=1", "EMPTY="])
  assert env["PYTHONPATH"] == "/x" and env["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1" and env["EMPTY"] == ""
  assert env["PATH"] == os.environ["PATH"]
  with pytest.raises(ValueError, match="NAME=VALUE"):
    revision_ab.worker_environment("/x", ["NOVALUE"])


def test_two_checkouts_take_turns_and_the_ratios_are_reported():
  proc = subprocess.run([sys.executable, "-m", "benchmarks.revision_ab", f"--a={REPO}", f"--b={REPO}", "--rounds=3",
                         "--updates=1", "--", "--config.num_envs=4", "--config.num_steps=8",
                         "--config.mesh.data=1"],
                        cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  for side in ("A", "B"):
    rounds = re.search(rf"^{side} .*SPS median \d+ of \[([\d, ]+)\]", proc.stdout, re.M)
    assert rounds and len(rounds.group(1).split(",")) == 3, proc.stdout
  assert re.search(r"B / A per pair of rounds: median \d+\.\d+ .*in \d of 3\)", proc.stdout), proc.stdout
  assert "batch 32" in proc.stdout


def test_the_benchmarks_tests_import_define_no_flags_when_imported():
  """Tests share processes (pytest-xdist runs several files per worker), and absl refuses a flag name defined by two
  modules: a benchmark module that tests import defines its flags only when it runs (`define_flags()`), so any of them
  import together, in any order."""
  imported = sorted({name.strip() for path in os.listdir(os.path.join(REPO, "tests")) if path.endswith(".py")
                     for line in open(os.path.join(REPO, "tests", path), encoding="utf-8")
                     if (m := re.match(r"\s*from benchmarks import ([\w, ]+)", line))
                     for name in re.sub(r" as \w+", "", m.group(1)).split(",")})
  assert {"elastic_minatar", "revision_ab", "throughput"} <= set(imported), imported
  code = ("import importlib, sys\nfrom absl import flags\n"
          f"for name in {imported!r}: importlib.import_module('benchmarks.' + name)\n"
          "print(sorted(m for m in flags.FLAGS.flags_by_module_dict() if m.startswith('benchmarks')))")
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip() == "[]", proc.stdout
