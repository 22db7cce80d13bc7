"""The orbax CheckpointManager the run's checkpoints use (launch/checkpoint/store.py), and orbax's logs kept quiet."""
from __future__ import annotations

import os

import orbax.checkpoint as ocp
from absl import logging


def _drop_orbax_info(record) -> bool:  # levelno is the std library's (30 = WARNING), not absl's
  return record.levelno >= 30 or f"{os.sep}orbax{os.sep}" not in record.pathname


# Orbax logs ~25 INFO lines per save; keep its warnings and errors only.
logging.get_absl_logger().addFilter(_drop_orbax_info)


class CheckpointManager(ocp.CheckpointManager):
  """Never asks JAX's preemption sync point: launch/run/preemption.py must be its only caller. Orbax asks it with the
  step of each save, also from its finalize thread once the loop is further on, which would move this host's protocol
  counter back and could leave the hosts stopping at different updates."""

  def reached_preemption(self, step: int) -> bool:
    del step
    return False
