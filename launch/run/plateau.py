"""Plateau advice: when the evaluation return has stalled, tell a noise-limited plateau, which more samples per update
cure, from a converged policy and from noise in the evaluation; say the first once, in the log and in that metrics
row (its `plateau` entry), with the figures behind the verdict and the command that continues the run with 4x the
envs under the recipe (launch/run/elastic.py). The command (it names the workdir) is in the log line only, so rows do
not depend on paths.

The rule (`assess`), on the run's own rows, at each evaluation once the run is two windows old (the window:
`plateau.share` of the budget) with MIN_EVALS evaluations in the last one:
1. **Still rising**: the evaluation's mean over the window exceeds its mean over the window before by more than
   RISE_FRACTION of its whole rise so far (best minus first), or the training return's does, or the training
   return's least-squares slope over the window is significant (one-sided t >= T_RISING). Means, not the best value:
   the deterministic evaluation may play one or two distinct episodes (MinAtar), so its best is a lucky draw; the
   training return averages the interval's sampled episodes, many distinct ones. No plateau.
2. **Solved**: the last SOLVED_ROWS rows have the same training return, equal to the best evaluation and above the
   run's first: every sampled episode reaches the return the best evaluation did (a ceiling: CartPole's 500).
3. **The policy has stopped moving**: the mean KL per update over the window is below CONVERGED_KL_FRACTION of the
   largest interval mean of the run. PPO's outer loop is stochastic optimisation whose step is the KL per update
   (Beukman et al. 2026); a step shrunk to a few percent of its largest (an annealed learning rate near its end) is
   convergence, not a step too large for its noise, and more samples per update do not restart it. No advice.
4. **The batch already exceeds the noise**: samples per update >= NOISE_MULTIPLE x the policy gradient's noise scale
   B_simple = tr(Sigma) / |G|^2 (`grad_noise_scale_policy`, the window's median), McCandlish et al. 2018's estimate of
   the critical batch size, beyond which more samples per step buy little; Smith et al. 2018 ("Don't decay the
   learning rate, increase the batch size") equate growing the batch with lowering the gradient noise as a smaller
   learning rate would. Noise is then not what holds the run. No advice.
5. Otherwise the plateau is **noise-limited**: a step of a sizeable fraction of its largest, on a batch that does not
   average out its gradient noise. The paper's cure: more parallel envs under the recipe.

Recorded sequences (tests/test_plateau.py): the default CartPole run with an evaluation every 10 updates, where the
best evaluation was a lucky early 500 and a rule on the evaluation's best alone fired at env step 286,720 while the
training return still rose (296 → 494), says `rising`, then `solved`; Breakout-MinAtar at N = 8 (docs/study) says
`noise_limited` for the seed stuck at a training return of 6.2.
"""
from __future__ import annotations

import dataclasses
import math
import os
import shlex
import statistics
import sys
from typing import Any

import ml_collections

from launch.config import resolve as config_lib

MIN_EVALS = 3  # evaluations since the best one, at least: one or two low ones after it are noise, not a plateau
T_RISING = 2.0  # one-sided t of the training return's slope over the window above which the run is still improving
RISE_FRACTION = 0.05  # a window whose mean training return gains this share of the run's whole rise: still improving
SOLVED_ROWS = 3  # the last rows whose training returns all equal the best evaluation: solved
CONVERGED_KL_FRACTION = 0.05  # KL per update below this share of the run's largest interval mean: converged
NOISE_MULTIPLE = 10.0  # samples per update at least this many gradient noise scales: not noise-limited
MIN_TREND_ROWS = 4  # training-return rows the trend test needs in the window


@dataclasses.dataclass(frozen=True)
class Assessment:
  """A stalled evaluation's verdict: `noise_limited` (advise more envs), `rising` (the training return still
  improves), `solved`, `converged` (the outer step has vanished) or `batch_above_noise`, with the figures behind
  it."""
  verdict: str
  best_eval_return: float
  best_env_steps: int
  kl_mean: float | None  # the window's mean KL per update
  kl_fraction: float | None  # of the run's largest interval mean
  samples_per_kl: float | None  # the row's
  samples_per_update: int
  grad_noise_scale: float | None  # the policy gradient's, the window's median
  return_slope_t: float | None  # the training return's least-squares slope over the window as a t statistic
  eval_gain: float  # the evaluation's mean over the window minus its mean over the window before
  return_gain: float | None  # the same of the training return (None: no episodes finished in one of the windows)

  @property
  def advise(self) -> bool:
    return self.verdict == "noise_limited"


def _slope_t(points: list[tuple[float, float]]) -> float | None:
  """The least-squares slope of y on x divided by its standard error (None: too few points, or no spread in x);
  +inf for a perfect rising line."""
  n = len(points)
  if n < MIN_TREND_ROWS:
    return None
  mx, my = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
  sxx = sum((x - mx) ** 2 for x, _ in points)
  if sxx <= 0:
    return None
  slope = sum((x - mx) * (y - my) for x, y in points) / sxx
  residual = sum((y - my - slope * (x - mx)) ** 2 for x, y in points) / (n - 2)
  if residual <= 0:
    return math.copysign(math.inf, slope) if slope else 0.0
  return slope / math.sqrt(residual / sxx)


def finite(value: Any) -> float | None:
  return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _same(a: float, b: float) -> bool:
  return abs(a - b) <= 1e-6 * max(1.0, abs(a), abs(b))


def _window_means(points: list[tuple[int, float]], now: int, window: float) -> tuple[list[float], list[float]]:
  """The values in the window (the last `window` env steps) and in the window before it."""
  return ([v for x, v in points if x > now - window], [v for x, v in points if now - 2 * window < x <= now - window])


def assess(rows: list[dict[str, Any]], samples_per_update: int, window_env_steps: float,
           min_evals: int = MIN_EVALS) -> Assessment | None:
  """The verdict on the run so far (`rows`: its metrics rows in order), or None while there is nothing to judge: a
  run younger than two windows, fewer than `min_evals` evaluations in the window."""
  if window_env_steps <= 0 or not rows:
    return None
  now = rows[-1]["env_steps"]
  evals = [(r["env_steps"], v) for r in rows if (v := finite(r.get("eval_return"))) is not None]
  returns = [(r["env_steps"], v) for r in rows if (v := finite(r.get("episode_return"))) is not None]
  eval_now, eval_before = _window_means(evals, now, window_env_steps)
  if len(eval_now) < min_evals or not eval_before:
    return None
  best_at, best = max(evals, key=lambda p: (p[1], -p[0]))  # the first time the best was reached
  eval_gain = statistics.fmean(eval_now) - statistics.fmean(eval_before)
  rising = eval_gain > RISE_FRACTION * (max(v for _, v in evals) - evals[0][1])
  ret_now, ret_before = _window_means(returns, now, window_env_steps)
  gain, t = None, None
  if ret_now and ret_before:
    gain = statistics.fmean(ret_now) - statistics.fmean(ret_before)
    t = _slope_t([p for p in returns if p[0] > now - window_env_steps])
    rising = (rising or gain > RISE_FRACTION * (max(v for _, v in returns) - returns[0][1])
              or (t is not None and t >= T_RISING))
  in_window = [r for r in rows if r["env_steps"] > now - window_env_steps]
  kls = [v for r in in_window if (v := finite(r.get("kl_mean"))) is not None]
  peak = max((v for r in rows if (v := finite(r.get("kl_mean"))) is not None), default=None)
  kl = statistics.fmean(kls) if kls else None
  fraction = kl / peak if kl is not None and peak else None
  noise = [v for r in in_window if (v := finite(r.get("grad_noise_scale_policy"))) is not None and v > 0]
  noise_scale = statistics.median(noise) if noise else None
  if rising:
    verdict = "rising"
  elif (len(ret_now) >= SOLVED_ROWS and all(_same(v, best) for v in ret_now[-SOLVED_ROWS:])
        and returns[0][1] < best and not _same(returns[0][1], best)):
    verdict = "solved"
  elif fraction is not None and fraction < CONVERGED_KL_FRACTION:
    verdict = "converged"
  elif noise_scale is not None and samples_per_update >= NOISE_MULTIPLE * noise_scale:
    verdict = "batch_above_noise"
  else:
    verdict = "noise_limited"
  return Assessment(verdict, best, best_at, kl, fraction, finite(rows[-1].get("samples_per_kl")), samples_per_update,
                    noise_scale, t, eval_gain, gain)


def figures(a: Assessment) -> dict[str, Any]:
  """The figures behind a verdict, as a metrics row's entry."""
  return {"best_eval_return": a.best_eval_return, "best_env_steps": a.best_env_steps, "kl_mean": a.kl_mean,
          "kl_fraction": a.kl_fraction, "samples_per_kl": a.samples_per_kl, "samples_per_update": a.samples_per_update,
          "grad_noise_scale": a.grad_noise_scale, "return_slope_t": a.return_slope_t, "eval_gain": a.eval_gain,
          "return_gain": a.return_gain}


def command(config: ml_collections.ConfigDict, workdir: str) -> str:
  """The command line that continues this run in `workdir` at 4x num_envs under the scaling recipe, with its own
  minibatch size and learning rate (config_lib.recipe_flags: the run itself as the recipe's base)."""
  argv = sys.argv[1:] if os.path.basename(os.path.dirname(sys.argv[0] or "")) == "launch" else []
  flags = config_lib.recipe_flags(config)
  drop = {"--workdir", "--config.num_envs", "--config.scaling.schedule", "--fresh", *(f.split("=", 1)[0] for f in flags)}
  kept = [a for a in argv if not a.split("=", 1)[0] in drop]
  args = [f"--workdir={workdir}", *kept, f"--config.num_envs={4 * config.num_envs}", *flags]
  return "python -m launch.train " + " ".join(shlex.quote(a) for a in args)


class Watch:
  """Feed it every metrics row (`observe`); returns the advice for the first row whose assessment is noise-limited
  (once per run)."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, total_env_steps: int,
               earlier_rows: list[dict[str, Any]] = ()):
    self._config, self._workdir = config, workdir
    self._window = config.plateau.share * total_env_steps
    self._batch = config.num_envs * config.num_steps
    self._rows: list[dict[str, Any]] = []
    self._said = False
    self.last: Assessment | None = None  # the latest assessment (None: no stall to judge)
    for row in earlier_rows:  # a resumed run: its rows so far (the advice is given once per run)
      self._said = self._said or "plateau" in row
      self._keep(row)

  def _keep(self, row: dict[str, Any]) -> None:
    self._rows.append({k: row.get(k) for k in ("env_steps", "eval_return", "episode_return", "kl_mean",
                                                "samples_per_kl", "grad_noise_scale_policy")})

  def observe(self, row: dict[str, Any], advise: bool = True) -> dict[str, Any] | None:
    """Keeps the row; the advice, when this row is the first noise-limited one and `advise` (while autoscale can
    still grow the run, it grows it instead: launch/run/autoscale.py)."""
    self._keep(row)
    if self._said or not advise or not self._window or finite(row.get("eval_return")) is None:
      return None
    self.last = assess(self._rows, self._batch, self._window)
    if self.last is None or not self.last.advise:
      return None
    self._said = True
    return {**figures(self.last), "window_env_steps": int(self._window), "suggested_num_envs": 4 * self._config.num_envs}

  def command(self) -> str:
    return command(self._config, self._workdir)


def g(value: float | None) -> str:
  return "n/a" if value is None else f"{value:.3g}"


def line(advice: dict[str, Any], row: dict[str, Any], continue_with: str) -> str:
  fraction = advice.get("kl_fraction")
  share = "" if fraction is None else f" ({fraction:.0%} of the run's largest)"
  window = advice.get("window_env_steps", 0)
  return (f"plateau: over the last {window:,} env steps (to {row['env_steps']:,}) the evaluation's mean moved "
          f"{advice.get('eval_gain', 0):+.3g} and the training return's {signed(advice.get('return_gain'))} against "
          f"the {window:,} before (best evaluation {advice['best_eval_return']:.1f} at env step "
          f"{advice['best_env_steps']:,}); noise-limited: KL per update {g(advice['kl_mean'])}{share}, "
          f"{advice.get('samples_per_update', 0):,} samples per update vs the policy gradient's noise scale "
          f"{g(advice.get('grad_noise_scale'))}. More samples per update (4x the envs, recipe) continue it: "
          f"{continue_with}")


def signed(value: float | None) -> str:
  return "n/a" if value is None else f"{value:+.3g}"
