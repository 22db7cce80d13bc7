"""Stop requests: SIGTERM/SIGINT or a cluster preemption become a flag the train loop reads after each update, so it
can finish that update, save a checkpoint and exit with launch.train.EXIT_PREEMPTED.

One process: Python handlers for SIGTERM and SIGINT set the flag; they are removed after the first signal, so a second
Ctrl-C interrupts at once.

Several processes (jax.distributed initialised): JAX's preemption service owns SIGTERM (a C++ handler installed by
`jax.distributed.initialize`; we install no Python one, which would replace it; a first SIGINT is passed on to it as
SIGTERM), and `reached_preemption_sync_point` makes every host stop after the same update — a local flag could differ
between hosts and leave them saving different steps. The protocol: the signalled host posts a notice to the
coordination service; every host reports the step id of its last `reached_preemption_sync_point` call; all stop at
max + 1. So the loop must be its only caller (launch/checkpoint/store.py keeps orbax from calling it), with consecutive
step ids that start from the same value on every host: the count of updates done by this process, 1, 2, ..., not the
update number. A notice that arrives before the first call (during start-up or compilation) finds every counter at 0,
and the stop is then after this process's first update, whatever update the run resumed from.
"""
from __future__ import annotations

import os
import signal
import threading
import time

import jax
from absl import logging
from jax.experimental import multihost_utils

# Test-only hook (tests/test_checkpoint.py, tests/test_multihost.py): pause the loop after this update until a stop is
# requested, writing WORKDIR/test_paused_at_<update> (…_p<process> with several processes) first, so a test can signal
# the run at an exact point. With several processes, "requested" means every host has reported its step to JAX's
# preemption protocol, so all of them stop right after this update. Unset in real runs.
TEST_PAUSE_ENV = "PPO_TEST_PAUSE_AT_UPDATE"
TEST_WAIT_S = 300.0
# Where the protocol's hosts post their step ids in the coordination service (xla/tsl/distributed_runtime/preemption/
# preemption_sync_manager.cc); only the test pause reads it.
_PROTOCOL_COUNTERS_KEY = "PREEMPTION_CURRENT_COUNTER/"


class StopRequest:
  """`should_stop(update)`: has a stop been requested (agreed by all hosts) after this update?"""

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.requested = threading.Event()
    self.multiprocess = jax.distributed.is_initialized()
    self._previous = {}
    self._first_update = None  # the first update this process ran (step id 1 of the preemption protocol)
    if threading.current_thread() is threading.main_thread():
      if not self.multiprocess:
        for sig in (signal.SIGTERM, signal.SIGINT):
          self._previous[sig] = signal.signal(sig, self._handle)
      else:  # Ctrl-C: the same as SIGTERM, which JAX's preemption service catches
        self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._forward_to_sigterm)
    pause = os.environ.get(TEST_PAUSE_ENV)
    self._test_pause_at = int(pause) if pause else None

  def _handle(self, signum, frame):
    del frame
    logging.warning("received %s: finishing the current update, then saving a checkpoint and exiting",
                    signal.Signals(signum).name)
    self.requested.set()
    self._restore_handlers()  # a second signal acts as if we had never installed ours

  def _forward_to_sigterm(self, signum, frame):
    del signum, frame
    logging.warning("received SIGINT: passing it on as SIGTERM to JAX's preemption service, so that every process "
                    "stops after the same update")
    self._restore_handlers()
    os.kill(os.getpid(), signal.SIGTERM)

  def _restore_handlers(self):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}

  def should_stop(self, update: int) -> bool:
    """Call after every update, in order: all hosts return True after the same one."""
    if self._first_update is None:
      self._first_update = update
    if update == self._test_pause_at:
      self._test_pause(update)
    if self.multiprocess:
      try:
        return multihost_utils.reached_preemption_sync_point(update - self._first_update + 1)
      except RuntimeError:  # the preemption service is disabled (jax_enable_preemption_service=False)
        return False
    return self.requested.is_set()

  def _test_pause(self, update: int) -> None:
    suffix = f"_p{jax.process_index()}" if self.multiprocess else ""
    open(os.path.join(self.workdir, f"test_paused_at_{update}{suffix}"), "w", encoding="utf-8").close()
    deadline = time.time() + TEST_WAIT_S
    while not self._test_stop_seen() and time.time() < deadline:
      self.requested.wait(0.05)  # short waits so the main thread runs the signal handler promptly

  def _test_stop_seen(self) -> bool:
    if not self.multiprocess:
      return self.requested.is_set()
    from jax._src import distributed  # pylint: disable=import-outside-toplevel  (the runtime's client, as orbax uses)
    reported = distributed.global_state.client.key_value_dir_get(_PROTOCOL_COUNTERS_KEY)
    return len(reported) == jax.process_count()

  def close(self):
    self._restore_handlers()
