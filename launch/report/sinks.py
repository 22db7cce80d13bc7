"""Host-side metric sinks: metrics.jsonl, TensorBoard event files, the console progress bar with ETA, optional extra
sinks (launch/report/wandb_sink.py), and at the end of a completed run the learning-curve and diagnostics plots.

Only the lead process writes (`enabled=False` elsewhere). Rows are plain dicts of JSON scalars; None marks a value
with no data in its interval (e.g. no training episode finished).

The workdir may be local or remote (gs://bucket/run on a TPU pod): files go through etils.epath, and TensorBoard
through tensorboardX's own gs:// writer. Object stores cannot append, so on a remote workdir each row rewrites the whole
metrics.jsonl (a few hundred bytes a row, rows every `log_every` updates); a local one is appended to.
"""
from __future__ import annotations

import json
import math
import os
import sys
from typing import Any

import tqdm
from etils import epath

from launch.report import plots as plot_lib
from launch.report.metrics_file import JsonlFile


class MetricsSinks:
  """Appends rows to DIR/metrics.jsonl, DIR/tensorboard and the `extra` sinks (e.g. report/wandb_sink.py), drives a
  progress bar over env steps, and on a completed run's close writes DIR/learning_curve.png and DIR/diagnostics.png
  (report/plots.py; both sent to the extras)."""

  def __init__(self, workdir: str, total_env_steps: int, initial_env_steps: int = 0, enabled: bool = True,
               resume_update: int = 0, extra: tuple[Any, ...] = (), covered_update: int = 0):
    """Rows after `resume_update` (from a run that went further than its last checkpoint) are dropped first. Rows
    missing up to `covered_update` (the last the resumed checkpoint covers) and malformed lines are in `notes`, and in
    the first row written, as `metrics_lost`."""
    self.enabled = enabled
    self.last_row = None  # the last row kept, if any
    self.notes: list[str] = []
    self.plot_path = self.diagnostics_path = None  # set by close(plot=True)
    self._extra = extra
    if not enabled:
      return
    self._workdir = workdir
    directory = epath.Path(workdir)
    directory.mkdir(parents=True, exist_ok=True)
    self._jsonl = JsonlFile(directory / "metrics.jsonl", resume_update, covered_update=covered_update)
    self.notes = list(self._jsonl.notes)
    self._unrecorded = list(self.notes)  # into the next row
    self.jsonl_path = str(self._jsonl.path)
    self.last_row = json.loads(self._jsonl.lines[-1]) if self._jsonl.lines else None
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
    # TensorBoard hides the events at steps >= purge_step written before this point.
    # Event files are named by the second and the host; the pid keeps a quick restart from overwriting the last one.
    self._tb = SummaryWriter(str(directory / "tensorboard"), purge_step=initial_env_steps + 1,
                             filename_suffix=f".{os.getpid()}")
    self._bar = tqdm.tqdm(total=total_env_steps, initial=initial_env_steps, unit="step", unit_scale=True,
                          dynamic_ncols=True, file=sys.stderr, mininterval=1.0, smoothing=0.1,
                          desc="train")

  def write(self, row: dict[str, Any]) -> None:
    if not self.enabled:
      return
    if self._unrecorded:
      row["metrics_lost"], self._unrecorded = " | ".join(self._unrecorded), []
    self._jsonl.append(row)
    step = row["env_steps"]
    for key, value in row.items():
      if key not in ("update", "env_steps") and isinstance(value, (int, float)) and math.isfinite(value):
        self._tb.add_scalar(key, value, step)
    self._bar.update(step - self._bar.n)
    postfix = {k: f"{row[k]:.1f}" for k in ("episode_return", "eval_return") if row.get(k) is not None}
    self._bar.set_postfix(postfix, refresh=False)
    for sink in self._extra:
      sink.write(row)

  def close(self, plot: bool = False, failed: bool = False) -> None:
    """`plot`: the run completed; draw its learning curves (all rows, earlier processes' too). `failed`: the run is
    ending with an error, whose message is the last line (not the bar drawn once more)."""
    if not self.enabled:
      return
    if failed:
      self._bar.leave = False
    self._bar.close()
    self._tb.flush()
    self._tb.close()
    self._jsonl.close()
    try:
      if plot:
        self.plot_path = plot_lib.plot_runs([self._workdir], f"{self._workdir}/learning_curve.png")
        self.diagnostics_path = plot_lib.plot_diagnostics([self._workdir], f"{self._workdir}/diagnostics.png")
        for sink in self._extra:
          sink.log_image("learning_curve", self.plot_path)
          sink.log_image("diagnostics", self.diagnostics_path)
    finally:
      for sink in self._extra:
        sink.close(exit_code=0 if plot else 1)
