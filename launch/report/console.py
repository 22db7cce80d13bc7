"""What a run prints: one start line, the progress bar (launch/report/sinks.py), a line per checkpoint when asked for
(`config.log_checkpoints`), and a final summary. Only process 0 prints.

At the default verbosity the libraries underneath stay quiet: INFO logs are off and other libraries' warnings
(orbax's per-save OCDBT notice, absl's TPU probe, Python warnings) are dropped, so nothing lands between the start
line and the summary but the bar. `-v 0` (INFO) or any other `--verbosity` brings them all back.
"""
from __future__ import annotations

import logging as std_logging
import os
import sys
import warnings
from typing import Any

import tqdm
from absl import flags, logging

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # above launch/report/
_OURS = tuple(os.path.join(_ROOT, p) + os.sep for p in ("launch", "envs", "learner", "pipeline", "sharding",
                                                        "benchmarks"))


def _ours_or_error(record: std_logging.LogRecord) -> bool:
  return record.levelno >= std_logging.ERROR or record.pathname.startswith(_OURS)


def configure_logging(verbose: bool | None = None) -> bool:
  """After absl parsed the flags: quiet unless `--verbosity`/`-v` was given (or `verbose`, for a command line that
  parses its own arguments). Returns whether it is quiet."""
  quiet = not (flags.FLAGS["verbosity"].present if verbose is None else verbose)
  std_logging.captureWarnings(True)  # Python warnings become log records, filtered like the rest
  if quiet:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # XLA's C++ INFO and WARNING lines
    logging.set_verbosity(logging.WARNING)
    logging.get_absl_handler().addFilter(_ours_or_error)
    logging.get_absl_logger().addFilter(_ours_or_error)  # also when absl's handler is not installed (no absl.app)
    warnings.simplefilter("ignore")  # warnings printed before the handler filter sees them (e.g. at import)
  return quiet


def say(line: str) -> None:
  """One console line on stdout, clearing and redrawing the progress bar around it."""
  tqdm.tqdm.write(line, file=sys.stdout)
  sys.stdout.flush()


def _num(x: float) -> str:
  return f"{x / 1e6:.2f}M" if x >= 1e6 else f"{x / 1e3:.1f}k" if x >= 1e3 else f"{x:.0f}"


def _mesh(mesh) -> str:
  return ",".join(f"{k}={v}" for k, v in dict(mesh.shape).items())


def start_line(config: Any, resolved: Any, devices: list[Any], actor_mesh: Any, learner_mesh: Any, workdir: str,
               resumed_from: str | None, update: int, extra: str = "") -> str:
  kinds = sorted({d.platform for d in devices})
  mesh = (f"mesh {_mesh(learner_mesh)}" if actor_mesh is learner_mesh else
          f"mesh actors {_mesh(actor_mesh)} + learner {_mesh(learner_mesh)}")
  where = f"resumed from update {update} ({resumed_from})" if resumed_from else "new run"
  if not resumed_from and config.get("restore_from"):
    where += f" from the params of {config.restore_from}"
  mode = "" if config.pipeline.mode == "fused" else f" | pipeline {config.pipeline.mode}"
  return (f"start: env {config.env_name} | {len(devices)} {'/'.join(kinds)} device{'s' * (len(devices) > 1)} | "
          f"{mesh}{mode} | batch {resolved.batch_size:,} = {config.num_envs:,} envs x {config.num_steps} steps | "
          f"{resolved.num_updates:,} updates ({resolved.env_steps:,} env steps) | workdir {workdir} | {where}"
          f"{extra} | compiling")


def checkpoint_line(update: int, path: str) -> str:
  return f"checkpoint: update {update} -> {path}"


def summary_lines(rows: list[dict[str, Any]], first_update: int, first_env_steps: int,
                  files: dict[str, str]) -> list[str]:
  """The end of a run from its metrics rows (all of them, earlier processes' too); `first_update` is where this
  process started, after `first_env_steps` env steps. `files`: name → path of what the run left behind."""
  last = rows[-1] if rows else {}
  evals = [(r["eval_return"], r["update"]) for r in rows if r.get("eval_return") is not None]
  if evals:
    best, neg_update = max((value, -u) for value, u in evals)  # the first update that reached the best
    best_update = -neg_update
    ev = f"eval return {evals[-1][0]:.1f} final, {best:.1f} best (update {best_update})"
  else:
    ev = "no evaluation"
  # Training time of this process, row by row (each row's sps excludes compilation and evaluation).
  mine = [r for r in rows if r["update"] > first_update]
  steps, seconds, before = 0, 0.0, first_env_steps
  for r in mine:
    delta, before = r["env_steps"] - before, r["env_steps"]
    if r.get("sps"):
      steps, seconds = steps + delta, seconds + delta / r["sps"]
  sps = f"{_num(steps / seconds)} SPS" if seconds else "SPS n/a"
  compile_time = next((r["compile_time"] for r in mine if "compile_time" in r), None)
  wall = f"wall time {last.get('wall_time', 0.0):.1f} s" + (
      f" (compile {compile_time:.1f} s)" if compile_time is not None else "")
  head = f"summary: {ev} | {last.get('env_steps', 0):,} env steps | {wall} | {sps} (training)"
  return [head] + [f"  {name:<11} {path}" for name, path in files.items()]


def solve_rate_table(rates: dict[str, float]) -> list[str]:
  """The last evaluation's Kinetix solve rate per level (config.eval.solve_levels), by size; [] when off."""
  if not rates:
    return []
  lines = ["solve rates (sampled policy, last evaluation):"]
  for size in sorted({n.split("/")[0] for n in rates}):
    names = [n for n in rates if n.split("/")[0] == size]
    lines.append(f"  {size}: {sum(rates[n] for n in names) / len(names):.2f} over {len(names)} levels")
    lines += [f"    {n:<32} {rates[n]:.2f}" for n in names]
  return lines + [f"  all: {sum(rates.values()) / len(rates):.2f} over {len(rates)} levels"]
