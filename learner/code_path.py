"""Which code path a program is traced for: the CPU's own forms, or the accelerators' (GPU/TPU, or `PPO_PORTABLE=1`).

The one place where a form is chosen per backend. On CPU the update takes cache-friendly forms; on accelerators it
takes forms that are deterministic without atomics (XLA:GPU sums colliding float scatter-adds with atomics, in no
fixed order, so "a resumed run == the uninterrupted one" would not hold on a GPU):

  what                                     CPU form                               accelerator form
  dense layers (learner/networks.dense)    thin products as multiply-adds,        `x @ k + b`, autodiff
                                           a hand-written backward pass
  minibatch advantage statistics           one streaming pass, per-minibatch      each minibatch gathers its own
    (pipeline/sgd.py)                      sums scatter-added into [E × B] bins   (pipeline/sgd_chunks.py): reductions
  categorical log-prob                     take_along_axis (its gradient: a       a one-hot select (its gradient: a
    (learner/distributions.py)             scatter-add into the logits)           select)
  entity messages (learner/entity_network) take_along_axis / scatter-add          one-hot matmuls (the MXU's form)
  XLA options (launch/run/xla_options.py)  no YNNPACK dot fusions                 GPU: xla_gpu_deterministic_ops

`PPO_PORTABLE=1` makes a CPU run the accelerators' forms: that is how the test suite covers their path, and the
cross-platform dry run (launch/run/portability.py) lowers every program for cuda and tpu inside `accelerator()`.
The forms are chosen when a program is traced (not part of the config: they change float summation order only).
"""
from __future__ import annotations

import contextlib
import os
import threading

import jax

ENV_VAR = "PPO_PORTABLE"
_target = threading.local()  # .platform: set inside `accelerator()` (tracing for another platform)


def portable() -> bool:
  """True when PPO_PORTABLE is set to 1 / true / yes: every backend runs the accelerators' code."""
  return os.environ.get(ENV_VAR, "").strip().lower() in ("1", "true", "yes")


@contextlib.contextmanager
def accelerator():
  """Programs traced inside take the accelerators' forms whatever this process's backend (cross-platform lowering).
  jax caches traces per function: build fresh jitted functions inside, as launch/run/programs.build does."""
  previous = getattr(_target, "platform", None)
  _target.platform = "accelerator"
  try:
    yield
  finally:
    _target.platform = previous


def cpu_forms() -> bool:
  """True when the CPU-specific forms and compiler options apply: on a CPU backend, unless portable or tracing for
  an accelerator."""
  return jax.default_backend() == "cpu" and not portable() and getattr(_target, "platform", None) is None


def describe() -> str:
  """One word for logs and --dry_run: "cpu" (CPU-specific forms) or "portable" (the accelerators' code)."""
  return "cpu" if cpu_forms() else "portable"
