"""Plateau advice: once the evaluation return has not improved over `plateau.share` of the run's env steps (and
MIN_EVALS evaluations), the run says so once, in the log and in that metrics row (its `plateau` entry), with the outer step it measured (KL per
update, samples per unit KL) and the command that continues it with 4x the envs under the recipe
(launch/run/elastic.py); the command (it names the workdir) is in the log line only, so rows do not depend on paths."""
from __future__ import annotations

import os
import shlex
import sys
from typing import Any

import ml_collections

from launch.config import resolve as config_lib

MIN_EVALS = 3  # evaluations since the best one, at least: one or two low ones after it are noise, not a plateau


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
  """Feed it every metrics row (`observe`); returns the advice for the row at which the plateau is first seen."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, total_env_steps: int,
               earlier_rows: list[dict[str, Any]] = ()):
    self._config, self._workdir = config, workdir
    self._window = config.plateau.share * total_env_steps
    self._best, self._best_at, self._evals_since = None, 0, 0
    self._said = False
    for row in earlier_rows:  # a resumed run: its rows so far (the advice is given once per run)
      self._said = self._said or "plateau" in row
      self._track(row)

  def _track(self, row: dict[str, Any]) -> None:
    value = row.get("eval_return")
    if value is not None and (self._best is None or value > self._best):
      self._best, self._best_at, self._evals_since = value, row["env_steps"], 0
    elif value is not None:
      self._evals_since += 1

  def observe(self, row: dict[str, Any]) -> dict[str, Any] | None:
    self._track(row)
    if (self._said or not self._window or row.get("eval_return") is None or self._best is None
        or row["env_steps"] - self._best_at < self._window or self._evals_since < MIN_EVALS):
      return None
    self._said = True
    return {"best_eval_return": self._best, "best_env_steps": self._best_at,
            "kl_mean": row.get("kl_mean"), "samples_per_kl": row.get("samples_per_kl"),
            "suggested_num_envs": 4 * self._config.num_envs}

  def command(self) -> str:
    return command(self._config, self._workdir)


def line(advice: dict[str, Any], row: dict[str, Any], continue_with: str) -> str:
  kl = "n/a" if advice["kl_mean"] is None else f"{advice['kl_mean']:.3g}"
  spk = "n/a" if advice["samples_per_kl"] is None else f"{advice['samples_per_kl']:.3g}"
  return (f"plateau: eval return {advice['best_eval_return']:.1f} best since env step {advice['best_env_steps']:,}, "
          f"not improved by env step {row['env_steps']:,}; KL per update {kl}, samples per KL {spk}. More samples "
          f"per update (4x the envs, recipe) continue it: {continue_with}")
