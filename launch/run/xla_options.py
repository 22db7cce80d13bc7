"""XLA compiler options for the jitted update and evaluation, per backend (passed to `.compile()`).

On CPU, jaxlib 0.10's XLA routes dots through YNNPACK fusions by default; for this workload's thin products
([M, 4] × [4, 64], [M, 64] × [64, 64], heads of width 1-2) they run 1.5-2× slower than XLA's own dot emitter
(one 65,536-sample PPO gradient: 148 ms → 80 ms on the 2-core CI machine), so the update opts out. Passing the
options per compilation, not through XLA_FLAGS, leaves every other jitted function in the process as it was.
With PPO_PORTABLE=1 (learner/code_path.py) a CPU compiles with XLA's defaults, as accelerators do.

On GPU the update asks for `xla_gpu_deterministic_ops`: whatever float scatter remains is made deterministic, and
autotuning (whose pick of GEMM algorithm may differ between two compiles, so a resumed run's numerics could differ
from the uninterrupted one's) is off. The programs' own forms avoid atomics already (learner/code_path.py; the
cross-platform dry run, launch/run/portability.py, flags any scatter that remains). `xla_gpu_exclude_nondeterministic
_ops` would keep autotuning, whose choice can differ from compile to compile: not exact across a resume. TPUs have
no atomics: XLA:TPU's scatters are serialized and its reductions ordered, so it needs no option.
"""
from __future__ import annotations

from learner import code_path

_CPU = {"xla_cpu_experimental_ynn_fusion_type": ""}  # empty list: no YNNPACK fusions
_GPU = {"xla_gpu_deterministic_ops": True}


def compiler_options(platform: str) -> dict[str, str | bool]:
  """Options for `jax.jit(f).lower(...).compile(compiler_options=...)` on `platform` ("cpu", "gpu", "tpu")."""
  if platform == "cpu":
    return {} if code_path.portable() else dict(_CPU)
  return dict(_GPU) if platform in ("gpu", "cuda", "rocm") else {}
