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

  def __init__(self, workdir: str, total_env_steps: int, initial_env_steps: int = 0, enabled: bool = True):
    self.enabled = enabled
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
    self._jsonl = open(self.jsonl_path, "a", encoding="utf-8")
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
    self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
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


def read_jsonl(path: str) -> list[dict[str, Any]]:
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]
