"""Statistics the benchmarks' reports share: intervals of a mean over seeds and tests of a difference between arms.

At the seed counts the experiments afford (5-20), a percentile bootstrap of the mean under-covers (about 83% for a
nominal 95% at 5 seeds, normal data); the Student-t interval has its nominal coverage for normal data and is the
default of every report. Where arms share initial params seed by seed (seed i of every arm starts from the same
params), the comparison is paired: the interval and the test are of the per-seed differences. The permutation tests
are exact (every relabelling enumerated) up to 2^20 sign flips or C(n, k) <= 10^6 splits, and Monte Carlo beyond
(their p-values then carry the sampling error of `resamples` draws). Each function says its method, so that a table
can name it.
"""
from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
from scipy import stats as scipy_stats

EXACT_LIMIT = 1_000_000  # relabellings enumerated before a permutation test samples instead


@dataclasses.dataclass(frozen=True)
class Interval:
  """A mean with its two-sided interval; `method` names how it was computed (for the table's caption)."""
  mean: float
  low: float
  high: float
  n: int
  method: str

  def cell(self, digits: int = 2) -> str:
    """"mean [low, high] (n=..)" for a markdown table."""
    return f"{self.mean:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}] (n={self.n})"


def _clean(values) -> np.ndarray:
  values = np.asarray([v for v in values if v is not None], np.float64)
  if values.ndim != 1:
    raise ValueError(f"expected a list of numbers, got shape {values.shape}")
  return values


def t_interval(values, confidence: float = 0.95) -> Interval:
  """The Student-t interval of the mean over `values` (None entries left out). One value: the value, no width."""
  values = _clean(values)
  n = len(values)
  if n == 0:
    return Interval(math.nan, math.nan, math.nan, 0, "Student-t")
  mean = float(values.mean())
  if n < 2:
    return Interval(mean, mean, mean, n, "Student-t")
  half = float(scipy_stats.t.ppf(0.5 + confidence / 2, n - 1) * values.std(ddof=1) / math.sqrt(n))
  return Interval(mean, mean - half, mean + half, n, f"Student-t {100 * confidence:g}%")


def paired_t_interval(a, b, confidence: float = 0.95) -> Interval:
  """The Student-t interval of the mean of the per-seed differences a[i] - b[i] (pairs with a None left out)."""
  if len(a) != len(b):
    raise ValueError(f"paired samples differ in length: {len(a)} and {len(b)}")
  diff = [x - y for x, y in zip(a, b) if x is not None and y is not None]
  out = t_interval(diff, confidence)
  return dataclasses.replace(out, method=f"paired {out.method}")


def t_band(curves) -> np.ndarray:
  """Per column of `curves` [seeds, points]: the Student-t 95% interval of the mean over seeds, as [points, 2]
  (a figure's band)."""
  curves = np.asarray(curves, np.float64)
  return np.array([[t_interval(col).low, t_interval(col).high] for col in curves.T])


def bootstrap_ci(values, resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
  """95% percentile-bootstrap interval of the mean of `values` (resampling seeds with replacement). Under-covers at
  small n (see the module's docstring): reports show it beside `t_interval`, never alone."""
  values = np.asarray(values, np.float64)
  if len(values) < 2:
    return float(values.mean()), float(values.mean())
  idx = np.random.default_rng(seed).integers(0, len(values), (resamples, len(values)))
  lo, hi = np.percentile(values[idx].mean(axis=1), [2.5, 97.5])
  return float(lo), float(hi)


@dataclasses.dataclass(frozen=True)
class TestResult:
  """A two-sided p-value, the observed statistic, and how it was computed."""
  p_value: float
  statistic: float
  method: str
  exact: bool


def paired_permutation_test(a, b, resamples: int = 100_000, seed: int = 0) -> TestResult:
  """Sign-flip test of mean(a[i] - b[i]) = 0: under the null each pair's difference is as likely negated. Exact
  (all 2^n sign patterns) for n <= 20, else `resamples` random patterns (the observed one counted, so p >= 1/(R+1))."""
  if len(a) != len(b):
    raise ValueError(f"paired samples differ in length: {len(a)} and {len(b)}")
  diff = np.asarray([x - y for x, y in zip(a, b) if x is not None and y is not None], np.float64)
  n = len(diff)
  if n == 0:
    return TestResult(math.nan, math.nan, "paired sign-flip permutation", True)
  observed = abs(diff.mean())
  tolerance = 1e-12 * max(1.0, float(np.abs(diff).max()))
  if 2 ** n <= EXACT_LIMIT:
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
    means = np.abs(signs @ diff) / n
    return TestResult(float(np.mean(means >= observed - tolerance)), float(diff.mean()),
                      "paired sign-flip permutation, exact", True)
  signs = np.random.default_rng(seed).choice((1.0, -1.0), size=(resamples, n))
  hits = np.sum(np.abs(signs @ diff) / n >= observed - tolerance)
  return TestResult(float((hits + 1) / (resamples + 1)), float(diff.mean()),
                    f"paired sign-flip permutation, {resamples:,} random", False)


def permutation_test(a, b, resamples: int = 100_000, seed: int = 0) -> TestResult:
  """Two-sample test of equal means (unpaired): the difference of means over every split of the pooled values into
  groups of len(a) and len(b). Exact for C(n, len(a)) <= 10^6 splits, else `resamples` random splits."""
  a, b = _clean(a), _clean(b)
  pooled, k = np.concatenate([a, b]), len(a)
  if k == 0 or len(b) == 0:
    return TestResult(math.nan, math.nan, "two-sample permutation", True)
  observed = abs(a.mean() - b.mean())
  tolerance = 1e-12 * max(1.0, float(np.abs(pooled).max()))
  total = pooled.sum()

  def stat(sums):
    return np.abs(sums / k - (total - sums) / len(b))

  if math.comb(len(pooled), k) <= EXACT_LIMIT:
    sums = np.array([pooled[list(c)].sum() for c in itertools.combinations(range(len(pooled)), k)])
    return TestResult(float(np.mean(stat(sums) >= observed - tolerance)), float(a.mean() - b.mean()),
                      "two-sample permutation, exact", True)
  rng = np.random.default_rng(seed)
  sums = np.array([pooled[rng.permutation(len(pooled))[:k]].sum() for _ in range(resamples)])
  hits = np.sum(stat(sums) >= observed - tolerance)
  return TestResult(float((hits + 1) / (resamples + 1)), float(a.mean() - b.mean()),
                    f"two-sample permutation, {resamples:,} random", False)


def holm(p_values: dict[str, float]) -> dict[str, float]:
  """Holm's step-down adjustment of a family of p-values (controls the family-wise error; valid under any
  dependence): the k-th smallest is multiplied by (m - k + 1), made monotone, capped at 1."""
  order = sorted(p_values, key=lambda name: p_values[name])
  m, running, out = len(order), 0.0, {}
  for rank, name in enumerate(order):
    running = max(running, min(1.0, (m - rank) * p_values[name]))
    out[name] = running
  return out


def distinct_episodes(returns, lengths) -> int:
  """How many different (return, length) pairs a set of episodes has: a lower bound on its distinct episodes (two
  episodes with equal return and length may still differ), which is what an evaluation of many episodes of a
  deterministic env and policy really sampled."""
  return len({(float(r), int(n)) for r, n in zip(np.asarray(returns).ravel(), np.asarray(lengths).ravel())})
