"""benchmarks/stats.py: the intervals and tests the experiments' reports name, against scipy and by simulation."""
import itertools

import numpy as np
import pytest
from scipy import stats as scipy_stats

from benchmarks import stats


def test_t_interval_is_scipys_and_leaves_out_missing_values():
  values = [3.0, 5.5, 4.25, 9.0, 6.5]
  got = stats.t_interval(values + [None])
  low, high = scipy_stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=scipy_stats.sem(values))
  assert got.n == 5 and got.method == "Student-t 95%"
  np.testing.assert_allclose([got.mean, got.low, got.high], [np.mean(values), low, high], rtol=1e-12)
  assert stats.t_interval([2.5]).low == stats.t_interval([2.5]).high == 2.5
  assert stats.t_interval([]).n == 0


def test_paired_interval_is_the_interval_of_the_differences():
  a, b = [10.0, 12.0, None, 9.0, 15.0], [8.0, 11.5, 3.0, 9.5, 11.0]
  got = stats.paired_t_interval(a, b)
  want = stats.t_interval([2.0, 0.5, -0.5, 4.0])
  assert (got.mean, got.low, got.high, got.n) == (want.mean, want.low, want.high, 4)
  assert got.method.startswith("paired Student-t")
  with pytest.raises(ValueError, match="differ in length"):
    stats.paired_t_interval([1.0], [1.0, 2.0])


def test_t_interval_covers_as_stated_and_the_bootstrap_does_not_at_five_seeds():
  """The reason the reports use t-intervals: 4,000 samples of 5 normal values, true mean 0."""
  rng = np.random.default_rng(0)
  samples = rng.normal(size=(4000, 5))
  t_cover = np.mean([stats.t_interval(s).low <= 0 <= stats.t_interval(s).high for s in samples])
  boot_cover = np.mean([lo <= 0 <= hi for lo, hi in (stats.bootstrap_ci(s, resamples=400, seed=i)
                                                      for i, s in enumerate(samples[:1000]))])
  assert 0.935 <= t_cover <= 0.965, t_cover
  assert boot_cover < 0.88, boot_cover


def test_paired_permutation_test_enumerates_every_sign_pattern():
  a, b = [5.0, 7.0, 6.5, 9.0, 4.0, 8.0], [4.0, 6.0, 6.0, 7.0, 4.5, 6.0]
  diff = np.subtract(a, b)
  brute = np.mean([abs(np.dot(s, diff)) >= abs(diff.sum()) - 1e-12
                   for s in itertools.product((1, -1), repeat=len(diff))])
  got = stats.paired_permutation_test(a, b)
  assert got.exact and got.p_value == pytest.approx(brute) and got.statistic == pytest.approx(diff.mean())
  # All differences of one sign: the two extreme patterns of 2^6.
  assert stats.paired_permutation_test([1.0] * 6, [0.0] * 6).p_value == pytest.approx(2 / 64)
  big = stats.paired_permutation_test(list(range(1, 26)), [0.0] * 25, resamples=2000)
  assert not big.exact and big.p_value == pytest.approx(1 / 2001)


def test_two_sample_permutation_test_is_scipys_exact_test():
  a, b = [3.1, 4.0, 5.2, 6.3, 2.2], [6.0, 7.5, 5.9, 8.1, 6.6, 7.0]
  got = stats.permutation_test(a, b)
  # Two-sided as |difference of means| >= the observed one (scipy's "two-sided" doubles the smaller one-sided p, which
  # differs where unequal group sizes make the null distribution asymmetric).
  want = scipy_stats.permutation_test((a, b), lambda x, y: abs(np.mean(x) - np.mean(y)),
                                      permutation_type="independent", n_resamples=np.inf, alternative="greater")
  assert got.exact and got.p_value == pytest.approx(want.pvalue)
  assert stats.permutation_test([1.0, 1.0], [1.0, 1.0]).p_value == 1.0


def test_holm_adjusts_step_down_and_stays_monotone():
  got = stats.holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.5})
  assert got == pytest.approx({"a": 0.04, "c": 0.09, "b": 0.09, "d": 0.5})


def test_distinct_episodes_counts_return_length_pairs():
  assert stats.distinct_episodes([6.0, 6.0, 7.0, 6.0], [100, 100, 120, 101]) == 3
  assert stats.distinct_episodes(np.full(32, 50.0), np.full(32, 200)) == 1
