"""How several processes agree on the step they restore: each tries the same steps in the same order, and a step is
used only if every process could read its own part of it (else hosts could resume different steps and diverge, or
wait for each other forever)."""
from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils

# One process's outcome for one step: read; corrupt (skipped, moved aside once an older step restores); refused
# by the config check; the storage kept failing (nothing moved); a bug in the reading code (raised).
READABLE, UNREADABLE, INCOMPATIBLE, STORAGE, FAILED = 0, 1, 2, 3, 4


def steps(local: list[int]) -> list[int]:
  """The steps newest first: process 0's, so that every process tries the same ones (a collective)."""
  newest_first = sorted(local, reverse=True)
  if jax.process_count() == 1:
    return newest_first
  count = int(multihost_utils.broadcast_one_to_all(np.int32(len(newest_first))))
  mine = np.zeros(count, np.int32)
  mine[:min(count, len(newest_first))] = newest_first[:count]
  return [int(s) for s in multihost_utils.broadcast_one_to_all(mine)] if count else []


def values(value: int) -> np.ndarray:
  """Every process's `value` (a collective: all call it)."""
  if jax.process_count() == 1:
    return np.array([value])
  return np.asarray(multihost_utils.process_allgather(np.int32(value))).reshape(-1)


def statuses(status: int) -> np.ndarray:
  """Every process's outcome for the step being tried (a collective: all call it once per step)."""
  return values(status)
