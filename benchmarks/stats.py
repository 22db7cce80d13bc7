"""Statistics the benchmarks' reports share."""
from __future__ import annotations

import numpy as np


def bootstrap_ci(values, resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
  """95% percentile-bootstrap interval of the mean of `values` (resampling seeds with replacement)."""
  values = np.asarray(values, np.float64)
  if len(values) < 2:
    return float(values.mean()), float(values.mean())
  idx = np.random.default_rng(seed).integers(0, len(values), (resamples, len(values)))
  lo, hi = np.percentile(values[idx].mean(axis=1), [2.5, 97.5])
  return float(lo), float(hi)
