"""Host-side metric sinks: metrics.jsonl, TensorBoard event files and the console progress bar with ETA.

Only the lead process writes (`enabled=False` elsewhere). Rows are plain dicts of JSON scalars; None marks a value
with no data in its interval (e.g. no training episode finished).
"""
from __future__ import annotations

import json
import math
import os
import sys
from typing import Any

import tqdm


class MetricsSinks:
  """Appends rows to DIR/metrics.jsonl and DIR/tensorboard, and drives a progress bar over env steps."""

  def __init__(self, workdir: str, total_env_steps: int, initial_env_steps: int = 0, enabled: bool = True,
               resume_update: int = 0):
    """Rows after `resume_update` (from a run that went further than its last checkpoint) are dropped first."""
    self.enabled = enabled
    self.last_row = None  # the last row kept, if any
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
    self.last_row = truncate_jsonl(self.jsonl_path, resume_update)
    self._jsonl = open(self.jsonl_path, "a", encoding="utf-8")
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
    # TensorBoard hides the events at steps >= purge_step written before this point.
    self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=initial_env_steps + 1)
    self._bar = tqdm.tqdm(total=total_env_steps, initial=initial_env_steps, unit="step", unit_scale=True,
                          dynamic_ncols=True, file=sys.stderr, mininterval=1.0, smoothing=0.1,
                          desc="train")

  def write(self, row: dict[str, Any]) -> None:
    if not self.enabled:
      return
    self._jsonl.write(json.dumps(row) + "\n")
    self._jsonl.flush()
    step = row["env_steps"]
    for key, value in row.items():
      if key not in ("update", "env_steps") and isinstance(value, (int, float)) and math.isfinite(value):
        self._tb.add_scalar(key, value, step)
    self._bar.update(step - self._bar.n)
    postfix = {k: f"{row[k]:.1f}" for k in ("episode_return", "eval_return") if row.get(k) is not None}
    self._bar.set_postfix(postfix, refresh=False)

  def close(self) -> None:
    if not self.enabled:
      return
    self._bar.close()
    self._tb.flush()
    self._tb.close()
    self._jsonl.close()


def truncate_jsonl(path: str, max_update: int) -> dict[str, Any] | None:
  """Keeps the complete rows of `path` with update <= max_update (dropping a half-written last line); returns the
  last row kept."""
  if not os.path.exists(path):
    return None
  kept = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        continue  # a line cut short by a kill
      if row["update"] <= max_update:
        kept.append(line if line.endswith("\n") else line + "\n")
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.writelines(kept)
  os.replace(tmp, path)  # never leaves a half-rewritten file
  return json.loads(kept[-1]) if kept else None


def read_jsonl(path: str) -> list[dict[str, Any]]:
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]
