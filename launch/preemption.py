"""Stop requests: SIGTERM/SIGINT or a cluster preemption become a flag the train loop reads after each update, so it
can finish that update, save a checkpoint and exit with launch.train.EXIT_PREEMPTED.

One process: Python handlers for SIGTERM and SIGINT set the flag; they are removed after the first signal, so a second
Ctrl-C interrupts at once. Several processes (jax.distributed initialised): JAX's preemption service owns SIGTERM and
`reached_preemption_sync_point(update)` makes every host stop after the same update — a local flag could differ
between hosts and leave them saving different steps.
"""
from __future__ import annotations

import os
import signal
import threading
import time

import jax
from absl import logging
from jax.experimental import multihost_utils

# Test-only hook (tests/test_checkpoint.py): pause the loop after this update until a stop is requested, writing
# WORKDIR/test_paused_at_<update> first, so a test can signal the run at an exact point. Unset in real runs.
TEST_PAUSE_ENV = "PPO_TEST_PAUSE_AT_UPDATE"
TEST_WAIT_S = 300.0


class StopRequest:
  """`should_stop(update)`: has a stop been requested (agreed by all hosts) after this update?"""

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.requested = threading.Event()
    self.multiprocess = jax.distributed.is_initialized()
    self._previous = {}
    if not self.multiprocess and threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    pause = os.environ.get(TEST_PAUSE_ENV)
    self._test_pause_at = int(pause) if pause else None

  def _handle(self, signum, frame):
    del frame
    logging.warning("received %s: finishing the current update, then saving a checkpoint and exiting",
                    signal.Signals(signum).name)
    self.requested.set()
    self._restore_handlers()  # a second signal acts as if we had never installed ours

  def _restore_handlers(self):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}

  def should_stop(self, update: int) -> bool:
    if update == self._test_pause_at:
      open(os.path.join(self.workdir, f"test_paused_at_{update}"), "w", encoding="utf-8").close()
      deadline = time.time() + TEST_WAIT_S
      while not self.requested.is_set() and time.time() < deadline:
        self.requested.wait(0.05)  # short waits so the main thread runs the signal handler promptly
    if self.multiprocess:
      try:
        return multihost_utils.reached_preemption_sync_point(update)
      except RuntimeError:  # the preemption service is disabled (jax_enable_preemption_service=False)
        return False
    return self.requested.is_set()

  def close(self):
    self._restore_handlers()
