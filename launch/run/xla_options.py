"""XLA compiler options for the jitted update and evaluation, per backend (passed to `.compile()`).

On CPU, jaxlib 0.10's XLA routes dots through YNNPACK fusions by default; for this workload's thin products
([M, 4] × [4, 64], [M, 64] × [64, 64], heads of width 1-2) they run 1.5-2× slower than XLA's own dot emitter
(one 65,536-sample PPO gradient: 148 ms → 80 ms on the 2-core CI machine), so the update opts out. Passing the
options per compilation, not through XLA_FLAGS, leaves every other jitted function in the process as it was.
With PPO_PORTABLE=1 (learner/code_path.py) a CPU compiles with XLA's defaults, as accelerators do.
"""
from __future__ import annotations

from learner import code_path

_CPU = {"xla_cpu_experimental_ynn_fusion_type": ""}  # empty list: no YNNPACK fusions


def compiler_options(platform: str) -> dict[str, str]:
  """Options for `jax.jit(f).lower(...).compile(compiler_options=...)` on `platform` ("cpu", "gpu", "tpu")."""
  return dict(_CPU) if platform == "cpu" and not code_path.portable() else {}
