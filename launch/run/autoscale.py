"""Autoscale: a run that grows its own num_envs when its outer step outruns its noise (docs/autoscale.md).

PPO's outer loop is stochastic optimisation whose step is the KL per update and whose noise falls with the samples
per update (Beukman et al. 2026); a run plateaus when the step is too large for the noise, and more parallel envs
under the recipe (minibatch size and learning rate fixed, more minibatches) cure it. With `autoscale.enabled` the
controller applies that cure itself: at each evaluation, once the run has spent `autoscale.window` of its budget at
its current num_envs, it judges the rows with the plateau rule (launch/run/plateau.py `assess`, the rule the advice
uses) over windows of that size, and on a **noise-limited** verdict grows num_envs by `autoscale.factor`, never past
`autoscale.max_num_envs`. The other verdicts leave it: a return still rising, a solved task, a policy that has stopped
moving (KL per update a few percent of its largest: convergence), or a batch already above the policy gradient's
noise scale B_simple (McCandlish et al. 2018's critical batch size, beyond which more samples per step buy little;
Smith et al. 2018 equate growing the batch with lowering the gradient noise).

Determinism: the verdict reads only replicated values of the rows (returns, KL, noise scale; never wall times), which
every process computes alike, so every process decides alike; the controller's state (the rows it judges, its growths,
a size found too large) is saved in every checkpoint's host record, so a resumed run decides exactly as the
uninterrupted one. A growth is a hand-over to a new segment (launch/run/elastic.py): saved, then resumed at the new
num_envs by the elastic machinery. Before it, the trainer compiles the new size's programs and checks them against
device memory (launch/run/memory.py); a size that does not fit is said once and never tried again.

Test hook: PPO_TEST_AUTOSCALE_GROW_AT="E1,E2,..." makes the verdict noise-limited at the first evaluation at or after
each of those env steps (and no other), so tests can place growths in tiny runs where the rule would not fire.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import ml_collections

from launch.run import plateau

TEST_GROW_AT_ENV = "PPO_TEST_AUTOSCALE_GROW_AT"
ROW_KEYS = ("env_steps", "eval_return", "episode_return", "kl_mean", "samples_per_kl", "grad_noise_scale_policy")


@dataclasses.dataclass
class Controller:
  """The controller's state; `observe(row)` after each metrics row returns the num_envs to grow to, or None."""
  num_envs: int  # the size the run is at (or, after a decision, the one it grows to)
  window: float  # env steps
  num_steps: int
  factor: int
  max_num_envs: int
  since: int = 0  # env step the current num_envs took over
  rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # compact rows (ROW_KEYS): `kept_rows`
  growths: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  too_large: int | None = None  # the smallest size found not to fit device memory: never tried again
  forced: tuple[int, ...] = ()  # the test hook's env steps

  @classmethod
  def create(cls, config: ml_collections.ConfigDict, saved: dict[str, Any] | None) -> Controller:
    """The controller of a run with `config`, continuing the state `saved` in a checkpoint (None: a new run)."""
    forced = tuple(sorted(int(float(x)) for x in os.environ.get(TEST_GROW_AT_ENV, "").split(",") if x.strip()))
    out = cls(num_envs=config.num_envs, window=config.autoscale.window * config.total_env_steps,
              num_steps=config.num_steps,
              factor=config.autoscale.factor, max_num_envs=config.autoscale.max_num_envs, forced=forced)
    if saved:
      out.num_envs, out.since = int(saved["num_envs"]), int(saved["since"])
      out.rows, out.growths = list(saved["rows"]), list(saved["growths"])
      out.too_large = saved.get("too_large")
    return out

  def to_json(self) -> dict[str, Any]:
    """The state a checkpoint saves (copies: the writer thread serialises it while the run goes on)."""
    return {"num_envs": self.num_envs, "since": self.since, "rows": list(self.rows), "growths": list(self.growths),
            "too_large": self.too_large}

  def next_size(self) -> int | None:
    """The size a growth would go to (None: at the largest allowed or known to fit)."""
    size = min(self.num_envs * self.factor, self.max_num_envs)
    if size <= self.num_envs or (self.too_large is not None and size >= self.too_large):
      return None
    return size

  def observe(self, row: dict[str, Any]) -> plateau.Assessment | None:
    """Keeps the row; at an evaluation a full window after the current size took over, returns the assessment when
    it is noise-limited and there is a size to grow to (the caller checks it fits, then calls `grow` or `refuse`)."""
    self.rows.append({k: row.get(k) for k in ROW_KEYS})
    now = row["env_steps"]
    self.rows = kept_rows(self.rows, now - 2 * self.window)
    if plateau.finite(row.get("eval_return")) is None or now - self.since < self.window or self.next_size() is None:
      return None
    batch = self.num_envs * self.num_steps
    if self.forced:  # the test hook: noise-limited exactly where it says
      if not any(self.since < e <= now for e in self.forced):
        return None
      a = plateau.assess(self.rows, batch, self.window) or plateau.Assessment(
          "noise_limited", 0.0, 0, None, None, None, batch, None, None, 0.0, None)
      return dataclasses.replace(a, verdict="noise_limited")
    a = plateau.assess(self.rows, batch, self.window)
    return a if a is not None and a.advise else None

  def grow(self, row: dict[str, Any], assessment: plateau.Assessment) -> dict[str, Any]:
    """Records the growth decided at `row`; returns its record (the metrics row's `autoscale` entry)."""
    to = self.next_size()
    record = {"update": row["update"], "env_steps": row["env_steps"], "from": self.num_envs, "to": to,
              **plateau.figures(assessment), "window_env_steps": int(self.window)}
    self.growths.append(record)
    self.num_envs, self.since = to, row["env_steps"]
    return record

  def refuse(self, size: int) -> None:
    """`size` does not fit device memory: never grow to it or past it."""
    self.too_large = size if self.too_large is None else min(self.too_large, size)


def kept_rows(rows: list[dict[str, Any]], start: float) -> list[dict[str, Any]]:
  """The rows `plateau.assess` reads, in order: those after env step `start` (its two windows) and the run's
  landmarks before (the first evaluation and training return, the first best of each, the largest KL), so that the
  state saved in each checkpoint stays small however long the run and the verdicts are those on all rows."""
  keep = {i for i, r in enumerate(rows) if r["env_steps"] > start}
  for key in ("eval_return", "episode_return", "kl_mean"):
    values = [(i, v) for i, r in enumerate(rows) if (v := plateau.finite(r.get(key))) is not None]
    if values:
      keep.add(values[0][0])
      keep.add(max(values, key=lambda p: (p[1], -p[0]))[0])
  return [rows[i] for i in sorted(keep)]


def line(record: dict[str, Any]) -> str:
  """The console line of a growth."""
  fraction = record.get("kl_fraction")
  share = "" if fraction is None else f" ({fraction:.0%} of the run's largest)"
  window = record["window_env_steps"]
  return (f"autoscale: {record['from']:,} → {record['to']:,} envs at env step {record['env_steps']:,} "
          f"(update {record['update']:,}): noise-limited, the evaluation's mean moved {record['eval_gain']:+.3g} and "
          f"the training return's {plateau.signed(record.get('return_gain'))} over the last {window:,} env steps; KL "
          f"per update {plateau.g(record.get('kl_mean'))}{share}, {record['samples_per_update']:,} samples per update "
          f"vs the policy gradient's noise scale {plateau.g(record.get('grad_noise_scale'))}")


def too_large_line(size: int, current: int, needed: str, limit: str) -> str:
  return (f"autoscale: {size:,} envs do not fit device memory (needs {needed} of {limit}); staying at "
          f"{current:,} envs and not trying that size again")
