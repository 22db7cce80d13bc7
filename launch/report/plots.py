"""Plots from metrics.jsonl: the learning curves, and the outer-loop diagnostics against env steps.

The trainer writes DIR/learning_curve.png and DIR/diagnostics.png at the end of a run (report/sinks.py); launch/plot.py
is the command line that compares runs.
In the diagnostics figure, runs whose saved configs differ only in `seed` (and in keys that do not change the
trajectory: logging, placement) are drawn as one: the seeds' mean, and their range as a band. Null values (no
episode finished, no noise scale measurable) are skipped. A run grown (or shrunk) to another num_envs is marked in
every panel by a dashed vertical line at the first row logged at the new size, labelled "N a→b".
"""
from __future__ import annotations

import io
import json
import os
import warnings
from typing import Any

import matplotlib
import numpy as np
from etils import epath

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position
from matplotlib import ticker  # pylint: disable=wrong-import-position

from launch.report.metrics_file import read_jsonl  # pylint: disable=wrong-import-position

# The diagnostics figure, one panel each: (title, y label, log scale, ((row key, line style, legend), ...)).
DIAGNOSTIC_PANELS = (
    ("return", "return", False, (("episode_return", "-", "training"), ("eval_return", ":", "evaluation"))),
    ("KL per update", "KL(behaviour ‖ updated)", True, (("kl_mean", "-", "mean"), ("kl_quantile", ":", "quantile"))),
    ("samples per unit KL", "batch size / mean KL", True, (("samples_per_kl", "-", ""),)),
    ("gradient noise scale", "B_simple = tr Σ / |G|²", True,
     (("grad_noise_scale_policy", "-", "policy"), ("grad_noise_scale_value", "--", "value"),
      ("grad_noise_scale", ":", "total loss"))),
    ("clip fraction", "fraction of samples", False, (("clip_fraction", "-", ""),)),
    ("entropy", "policy entropy", False, (("entropy", "-", ""),)),
)


def _save(fig, out_path: str) -> str:
  png = io.BytesIO()
  fig.savefig(png, format="png", dpi=100)
  plt.close(fig)
  epath.Path(out_path).write_bytes(png.getvalue())  # local or remote (gs://...)
  return out_path


def _name(workdir: str) -> str:
  return os.path.basename(os.path.normpath(workdir))


def resizes(rows: list[dict[str, Any]]) -> list[tuple[int, int, int]]:
  """(env steps of the first row at the new size, num_envs before, after) for each change of `num_envs` between
  consecutive rows that record it."""
  out, last = [], None
  for r in rows:
    n = r.get("num_envs")
    if n is None:
      continue
    if last is not None and n != last:
      out.append((r["env_steps"], last, n))
    last = n
  return out


def _mark_resizes(axes, marks: list[tuple[int, int, int]], color: str = "0.4") -> None:
  for ax in np.ravel(axes):
    for steps, before, after in marks:
      ax.axvline(steps, color=color, linestyle="--", linewidth=0.8, alpha=0.7)
      ax.annotate(f"N {before}→{after}", (steps, 1.0), xycoords=("data", "axes fraction"), rotation=90,
                  va="top", ha="right", fontsize="x-small", color=color)


def plot_runs(workdirs: list[str], out_path: str) -> str:
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for workdir in workdirs:
    rows = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    label = _name(workdir)
    for ax, key in zip(axes, ("episode_return", "eval_return")):
      pts = [(r["env_steps"], r[key]) for r in rows if r.get(key) is not None]
      if pts:
        ax.plot(*zip(*pts), marker="." if key == "eval_return" else None, label=label)
    _mark_resizes(axes, resizes(rows), axes[0].lines[-1].get_color() if len(workdirs) > 1 and axes[0].lines else "0.4")
  for ax, title in zip(axes, ("training episode return", "deterministic evaluation return")):
    ax.set_xlabel("env steps")
    ax.set_ylabel("return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.lines:
      ax.legend(fontsize="small")
  fig.tight_layout()
  return _save(fig, out_path)


def _identity(workdir: str) -> str | None:
  """What makes a run another run: its saved config without the seed and the keys free to change on resume (they do
  not change the trajectory). None when it cannot be read (no checkpoint): the run is then a group of its own."""
  from launch.checkpoint import saved_run  # pylint: disable=import-outside-toplevel  (jax, orbax: only here)
  from launch.config import resolve as config_lib, schema as config_schema  # pylint: disable=import-outside-toplevel
  from launch.files import fs_errors  # pylint: disable=import-outside-toplevel

  def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
      out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out

  try:
    config = flat(saved_run.saved_config(workdir))
  except (config_lib.ConfigError, fs_errors.WorkdirError):  # no readable checkpoint (said in one line): compare nothing
    return None
  ignored = set(config_schema.SCHEMA.free_keys()) | {"seed"}
  return json.dumps({k: v for k, v in sorted(config.items()) if k not in ignored}, default=str)


def seed_groups(workdirs: list[str]) -> list[list[str]]:
  """The workdirs as groups of runs that differ only in their seed, in the order they were given."""
  if len(workdirs) < 2:
    return [list(workdirs)]
  groups: dict[Any, list[str]] = {}
  for i, workdir in enumerate(workdirs):
    key = _identity(workdir)
    groups.setdefault(i if key is None else key, []).append(workdir)
  return list(groups.values())


def _series(runs: list[list[dict[str, Any]]], key: str, positive: bool) -> tuple[np.ndarray, np.ndarray]:
  """(env steps, values [steps, runs]) of `key` over the rows that have it; NaN where a run's value is null (or not
  positive, for a log scale), which leaves a gap in the line. Empty when no row has a value."""
  usable = lambda v: v is not None and np.isfinite(v) and (v > 0 or not positive)
  values = [{r["env_steps"]: (r[key] if usable(r[key]) else np.nan) for r in rows if key in r} for rows in runs]
  if not any(np.isfinite(v) for run in values for v in run.values()):
    return np.zeros(0), np.zeros((0, len(runs)))
  x = np.array(sorted(set().union(*values)), dtype=float)
  y = np.array([[v.get(s, np.nan) for v in values] for s in x], dtype=float).reshape(len(x), len(runs))
  return x, y


def diagnostics_figure(workdirs: list[str]):
  """The figure of `plot_diagnostics` (a matplotlib Figure, one axis per DIAGNOSTIC_PANELS entry)."""
  groups = seed_groups(workdirs)
  rows = {w: read_jsonl(os.path.join(w, "metrics.jsonl")) for w in workdirs}
  fig, axes = plt.subplots(2, 3, figsize=(15, 8))
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for (title, ylabel, log, series), ax in zip(DIAGNOSTIC_PANELS, axes.ravel()):
    for g, group in enumerate(groups):
      color = colors[g % len(colors)]
      name = _name(group[0]) + (f" ({len(group)} seeds)" if len(group) > 1 else "")
      for key, style, what in series:
        x, y = _series([rows[w] for w in group], key, positive=log)
        if not len(x):
          continue
        with warnings.catch_warnings():  # a row where every seed's value is null: NaN, a gap
          warnings.simplefilter("ignore", RuntimeWarning)
          mean = np.nanmean(y, axis=1)
        label = ", ".join(s for s in ((name if len(groups) > 1 else ""), what) if s) or None
        ax.plot(x, mean, style, color=color, label=label, marker=".", markersize=6 if key == "eval_return" else 3)
        if len(group) > 1:
          with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            ax.fill_between(x, np.nanmin(y, axis=1), np.nanmax(y, axis=1), color=color, alpha=0.2, linewidth=0)
      marks = sorted({m for w in group for m in resizes(rows[w])})
      _mark_resizes([ax], marks, color if len(groups) > 1 else "0.4")
    ax.set_title(title)
    ax.set_xlabel("env steps")
    ax.xaxis.set_major_formatter(ticker.EngFormatter(sep=""))  # 200k, 1M: not 200000 running into 400000
    ax.set_ylabel(ylabel)
    if log and ax.lines:
      ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if any(line.get_label() and not line.get_label().startswith("_") for line in ax.lines):
      ax.legend(fontsize="small")
  fig.tight_layout()
  return fig


def plot_diagnostics(workdirs: list[str], out_path: str) -> str:
  """Return, KL per update, samples per unit KL, gradient noise scale (policy, value, total loss), clip fraction
  and entropy against env steps, one run or several overlaid (seeds of one config as a band)."""
  return _save(diagnostics_figure(workdirs), out_path)
