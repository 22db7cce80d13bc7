"""Which code path this process runs: the CPU's own forms, or the one accelerators run (`PPO_PORTABLE=1`).

On CPU the update normally takes CPU-specific forms: `learner/networks.dense` (thin products as multiply-adds,
a hand-written backward pass) and XLA:CPU options (`launch/run/xla_options.py`). `PPO_PORTABLE=1` turns both off, so a
CPU runs exactly the code a GPU or TPU runs (`x @ k + b`, autodiff, XLA's default options): that is how the test
suite covers the accelerators' path. This is the only place the variable is read. It is read when a program is
traced, so set it before building programs (it is not part of the config: it does not change the algorithm,
only float summation order).
"""
from __future__ import annotations

import os

import jax

ENV_VAR = "PPO_PORTABLE"


def portable() -> bool:
  """True when PPO_PORTABLE is set to 1 / true / yes: every backend runs the accelerators' code."""
  return os.environ.get(ENV_VAR, "").strip().lower() in ("1", "true", "yes")


def cpu_forms() -> bool:
  """True when the CPU-specific dense forms and compiler options apply: on a CPU backend, unless portable."""
  return jax.default_backend() == "cpu" and not portable()


def describe() -> str:
  """One word for logs and --dry_run: "cpu" (CPU-specific forms) or "portable" (the accelerators' code)."""
  return "cpu" if cpu_forms() else "portable"
