"""benchmarks/elastic_minatar.py's statistics: the bootstrap interval of a mean over seeds, and a run's summary
taken on the evaluation grid shared by all arms (the benchmark itself is minutes: `--smoke`)."""
import numpy as np

from benchmarks import elastic_minatar, stats


def test_bootstrap_ci_brackets_the_mean():
  values = [3.0, 7.0, 8.0, 20.0, 25.0]
  lo, hi = stats.bootstrap_ci(values)
  assert min(values) < lo < np.mean(values) < hi < max(values)
  assert stats.bootstrap_ci([4.0, 4.0, 4.0]) == (4.0, 4.0)
  assert stats.bootstrap_ci([2.5]) == (2.5, 2.5)
  # More seeds of the same spread: a narrower interval.
  wide = np.subtract(*stats.bootstrap_ci(values)[::-1])
  narrow = np.subtract(*stats.bootstrap_ci(values * 8)[::-1])
  assert narrow < wide / 2


def test_summary_uses_only_the_common_grid():
  # Evaluations every 100 env steps; the one at 150 (a grown arm's extra) must not count, not even as best.
  rows = [{"update": u, "env_steps": 50 * u, **({"eval_return": r} if r is not None else {})}
          for u, r in [(1, None), (2, 1.0), (3, 99.0), (4, 5.0), (6, 4.0), (8, 2.0)]]
  summary = elastic_minatar.summarize(rows, spacing=100, total_env_steps=400)
  assert summary["curve"] == [[100, 1.0], [200, 5.0], [300, 4.0], [400, 2.0]]
  assert (summary["final_eval_return"], summary["best_eval_return"]) == (2.0, 5.0)
  assert summary["last_quarter_eval_return"] == 2.0  # env steps > 300
  assert summary["lr_scale"] is None and summary["updates"] == 8
