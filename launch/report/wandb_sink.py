"""Weights & Biases sink (optional extra: pip install -e ".[wandb]"): the scalars of every metrics row, as
TensorBoard gets them (x axis: env_steps), and the learning-curve plot at the end.

On when `config.wandb.project` is set; only process 0 logs. The W&B run id is stored in WORKDIR/wandb_run_id, so a
resumed run continues the same W&B run (the rows replayed after a resume equal the first ones, so their points
coincide). `config.wandb.mode=offline` writes the run under WORKDIR/wandb (upload it later with `wandb sync`).
"""
from __future__ import annotations

import math
import os
import secrets
from typing import Any

import ml_collections
from etils import epath

from launch.config import rules as config_rules
from launch.files import workdir as workdir_lib

RUN_ID_FILE = "wandb_run_id"
MODES = ("online", "offline", "disabled")


class WandbSink:
  """`write(row)` per metrics row, `log_image(name, path)`, `close()`."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    try:
      import wandb  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise ImportError(f"config.wandb.project {config_rules.wandb_missing_message()} ({e})") from None
    self._wandb = wandb
    id_file = epath.Path(workdir) / RUN_ID_FILE
    run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(4)  # W&B ids: [a-z0-9]
    local = None if workdir_lib.is_remote(workdir) else workdir_lib.absolute(workdir)
    cfg = config.wandb
    self.run = wandb.init(
        project=cfg.project, entity=cfg.entity or None, name=cfg.name or os.path.basename(os.path.normpath(workdir)),
        id=run_id, resume="allow", dir=local, mode=cfg.mode, config=config.to_dict(),
        # W&B must neither wrap the console (the progress bar) nor print its own banner lines.
        settings=wandb.Settings(console="off", silent=True))
    id_file.parent.mkdir(parents=True, exist_ok=True)
    id_file.write_text(run_id)
    self.run.define_metric("env_steps")
    self.run.define_metric("*", step_metric="env_steps")

  @property
  def description(self) -> str:
    return f"W&B {self.run.project}/{self.run.id} ({self.run.settings.mode})"

  def write(self, row: dict[str, Any]) -> None:
    self.run.log({k: v for k, v in row.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)})

  def log_image(self, name: str, path: str) -> None:
    self.run.log({name: self._wandb.Image(path)})

  def close(self, exit_code: int = 0) -> None:
    self.run.finish(exit_code=exit_code)
