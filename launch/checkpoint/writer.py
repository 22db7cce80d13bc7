"""The checkpoint writer thread: runs the loop's save jobs in order, so that the loop only waits for a job to be
queued."""
from __future__ import annotations

import queue
import threading
from collections.abc import Callable


class Writer:
  """One thread that runs save jobs in order.

  A job (see store.RunCheckpoints.maybe_save) pulls the update's metrics and fingerprints to the host, which waits for
  the update to finish, and then runs orbax's synchronous part of the save: thread start-ups, directory creation and
  the device-to-host copy, ~10-20 ms that would otherwise keep the loop from dispatching the next update. One job
  waits in the queue at most, so the loop cannot run ahead of the saves. The first error is kept and re-raised to the
  loop; later jobs are dropped."""

  def __init__(self):
    self._jobs: queue.Queue = queue.Queue(maxsize=1)
    self._error: BaseException | None = None
    self._thread = threading.Thread(target=self._run, name="checkpoint-writer", daemon=True)
    self._thread.start()

  def _run(self) -> None:
    while True:
      job = self._jobs.get()
      try:
        if job is None:
          return
        if self._error is None:
          job()
      except BaseException as e:  # pylint: disable=broad-except  (re-raised in the loop's thread)
        self._error = e
      finally:
        self._jobs.task_done()

  def _raise(self) -> None:
    if self._error is not None:
      error, self._error = self._error, None
      raise error

  def is_current_thread(self) -> bool:
    return threading.current_thread() is self._thread

  def submit(self, job: Callable[[], None]) -> None:
    self._raise()
    self._jobs.put(job)

  def drain(self) -> None:
    """Waits until every queued job has run; raises the first error."""
    self._jobs.join()
    self._raise()

  def close(self) -> None:
    self._jobs.put(None)
    self._thread.join()
