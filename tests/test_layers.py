"""The import layers (pyproject.toml [tool.importlinter]): envs and sharding at the bottom, then learner, pipeline,
launch (inside it files < config < checkpoint < report < run < the command-line tools), benchmarks and tests on top;
no import circle anywhere. Imports inside functions and under TYPE_CHECKING count. The checker must also fail: the
same contracts run on a copy of the tree with an upward import, and with a circle, planted."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("envs", "sharding", "learner", "pipeline", "launch", "benchmarks", "tests")


def _lint(root: str) -> subprocess.CompletedProcess:
  """`lint-imports` with the tree at `root` first on the path (the project's editable install points elsewhere)."""
  env = dict(os.environ, PYTHONPATH=root)
  code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
  return subprocess.run([sys.executable, "-c", code, "--no-cache"], cwd=root, env=env, capture_output=True,
                        text=True, timeout=300)


def _copy(tmp_path) -> str:
  root = str(tmp_path / "tree")
  for name in PACKAGES:
    shutil.copytree(os.path.join(ROOT, name), os.path.join(root, name),
                    ignore=shutil.ignore_patterns("__pycache__", "*.png", "*.json"))
  shutil.copy(os.path.join(ROOT, "pyproject.toml"), root)
  return root


def _plant(root: str, path: str, line: str) -> None:
  with open(os.path.join(root, path), "a", encoding="utf-8") as f:
    f.write(f"\n{line}\n")


def test_the_tree_keeps_its_layers():
  result = _lint(ROOT)
  assert result.returncode == 0, result.stdout + result.stderr
  assert "0 broken" in result.stdout


@pytest.mark.parametrize("path, line, broken", [
    # learner imports pipeline: up a layer (the runner's type once sat here, under TYPE_CHECKING)
    ("learner/ewma.py", "from pipeline import gae  # noqa", "layers: envs, sharding < learner"),
    # an import inside a function counts as well
    ("sharding/mesh.py", "def _late():\n  from learner import ewma  # noqa", "layers: envs, sharding < learner"),
    # the config system reads a report module: up a layer inside launch/
    ("launch/config/keys.py", "from launch.report import console  # noqa", "launch by concern"),
    # a circle: registry imports cue, cue imports registry
    ("envs/cue.py", "from envs import registry  # noqa", "no import circles"),
    # a circle between launch's packages at the same layer is also an upward import: both contracts catch it
    ("launch/files/workdir.py", "from launch.files import lock  # noqa", "no import circles"),
])
def test_a_planted_import_breaks_a_contract(tmp_path, path, line, broken):
  root = _copy(tmp_path)
  _plant(root, path, line)
  result = _lint(root)
  assert result.returncode != 0, result.stdout
  text = " ".join(result.stdout.split())  # contract names wrap over lines
  verdict = re.search(re.escape(broken) + r".*?\b(KEPT|BROKEN)\b", text)
  assert verdict and verdict.group(1) == "BROKEN", result.stdout
