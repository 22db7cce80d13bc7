"""Stop requests: SIGTERM/SIGINT or a cluster preemption become a flag the train loop reads after each update, so it
can finish that update, save a checkpoint and exit with launch.train.EXIT_PREEMPTED.

One process: Python handlers for SIGTERM and SIGINT set the flag. Run by launch.train (`EXIT_AT_ONCE`), a thread
woken by the signal itself (`signal.set_wakeup_fd`, so also while the main thread is inside XLA's compiler) ends the
process at once when there is nothing to save: on a stop during start-up (before the first update) with exit code
EXIT_PREEMPTED, and on a second signal with 128 + its number (130 for Ctrl-C), each with one final line saying what
is saved; `AT_EXIT_NOW` holds what must run first (releasing the workdir lock). Used as a library (tests), the
handlers are removed after the first signal instead, so a second Ctrl-C interrupts at once.

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
import sys
import threading
import time
from collections.abc import Callable

import jax
from absl import logging
from jax.experimental import multihost_utils

from launch.files import fs_errors as errors

EXIT_PREEMPTED = 3  # launch.train's
EXIT_AT_ONCE = False  # set by launch.train, which owns the process: may a signal end it from the watcher thread?
AT_EXIT_NOW: list[Callable[[], None]] = []  # run before such an exit (e.g. releasing the workdir lock)

# Test-only hook (tests/test_checkpoint.py, tests/test_multihost.py): pause the loop after this update until a stop is
# requested, writing WORKDIR/test_paused_at_<update> (…_p<process> with several processes) first, so a test can signal
# the run at an exact point. With several processes, "requested" means every host has reported its step to JAX's
# preemption protocol, so all of them stop right after this update. Unset in real runs.
TEST_PAUSE_ENV = "PPO_TEST_PAUSE_AT_UPDATE"
TEST_WAIT_S = 300.0
# Where the protocol's hosts post their step ids in the coordination service (xla/tsl/distributed_runtime/preemption/
# preemption_sync_manager.cc); only the test pause reads it.
_PROTOCOL_COUNTERS_KEY = "PREEMPTION_CURRENT_COUNTER/"


class StoppedBeforeStart(Exception):
  """A stop was requested before the first update: nothing new to save (exit EXIT_PREEMPTED)."""

  def __init__(self, workdir: str):
    super().__init__(f"stopped on request before the first update: nothing to save; {_saved(workdir)}")


def _saved(workdir: str) -> str:
  steps = errors.complete_steps(workdir)
  if not steps:
    return "no checkpoint yet: rerunning the same command starts the run"
  return (f"the newest checkpoint, {os.path.join(workdir, 'checkpoints', str(steps[-1]))} (update {steps[-1]}), is "
          "unchanged: rerun the same command to resume from it")


def _exit_now(code: int, line: str) -> None:
  for cleanup in list(AT_EXIT_NOW):
    try:
      cleanup()
    except Exception:  # pylint: disable=broad-except  (the exit must happen)
      pass
  try:
    sys.stderr.flush()
  finally:
    os.write(2, ("\n" + line + "\n").encode())
    os._exit(code)  # pylint: disable=protected-access


class StopRequest:
  """`should_stop(update)`: has a stop been requested (agreed by all hosts) after this update?"""

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.requested = threading.Event()
    self.multiprocess = jax.distributed.is_initialized()
    self._previous = {}
    self._first_update = None  # the first update this process ran (step id 1 of the preemption protocol)
    self._watch = None  # (read end, write end, previous wakeup fd, thread) with EXIT_AT_ONCE
    self._starting = False  # before the first update: a stop may exit at once (EXIT_AT_ONCE)
    self._phase = threading.Lock()  # held by the watcher while it ends the process
    self._signals = 0
    if threading.current_thread() is threading.main_thread():
      if not self.multiprocess:
        for sig in (signal.SIGTERM, signal.SIGINT):
          self._previous[sig] = signal.signal(sig, self._handle)
        if EXIT_AT_ONCE:
          self._start_watcher()
      else:  # Ctrl-C: the same as SIGTERM, which JAX's preemption service catches
        self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._forward_to_sigterm)
    pause = os.environ.get(TEST_PAUSE_ENV)
    self._test_pause_at = int(pause) if pause else None

  def _start_watcher(self):
    read, write = os.pipe()
    os.set_blocking(write, False)
    previous = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
    thread = threading.Thread(target=self._watcher, args=(read,), name="stop-watcher", daemon=True)
    self._watch = (read, write, previous, thread)
    thread.start()

  def _watcher(self, read: int) -> None:
    """Runs as soon as a signal arrives, whatever the main thread is doing (e.g. compiling)."""
    while True:
      data = os.read(read, 64)
      if not data:
        return
      for signum in data:
        if signum not in (signal.SIGTERM, signal.SIGINT):
          continue
        name = signal.Signals(signum).name
        self._signals += 1
        self.requested.set()
        if self._signals > 1:
          with self._phase:
            _exit_now(128 + signum, f"stopped at once by a second {name}, without saving the current update; "
                      f"{_saved(self.workdir)}")
          continue
        with self._phase:
          if self._starting:
            self._exit_starting(name)

  def _exit_starting(self, name: str) -> None:
    _exit_now(EXIT_PREEMPTED, f"stopped by {name} during start-up, before the first update: nothing to save; "
              f"{_saved(self.workdir)}")

  def starting(self, value: bool) -> None:
    """Marks the start-up (compilation) before the first update, during which a stop has nothing to save: with
    EXIT_AT_ONCE the process ends at once (also for a stop that came earlier, e.g. while restoring)."""
    with self._phase:
      self._starting = value
      if value and self._watch is not None and self.requested.is_set():
        self._exit_starting("a signal")

  def stopped_before_start(self) -> bool:
    """Was a stop requested before the first update (one process; several stop after their first update)?"""
    return not self.multiprocess and self.requested.is_set()

  def _handle(self, signum, frame):
    del frame
    if self._watch is not None:  # the watcher thread has acted on it already
      if self._signals <= 1:
        logging.warning("received %s: finishing the current update, then saving a checkpoint and exiting (a second "
                        "signal stops at once)", signal.Signals(signum).name)
      return
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
    if self._watch is not None:
      read, write, previous, thread = self._watch
      signal.set_wakeup_fd(previous)
      os.close(write)
      thread.join()
      os.close(read)
      self._watch = None
