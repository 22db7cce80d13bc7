"""One writer per workdir: WORKDIR/.lock names the run that holds it (host, pid, start time, run id) and carries a
heartbeat that a background thread refreshes. A second trainer on the same workdir refuses (exit 2) naming the
holder; a holder that crashed does not leave the workdir stuck: its lock is stale once its process is gone (same
machine) or its heartbeat is older than `PPO_LOCK_STALE_S` seconds (any machine), and the next run takes it over.

The lock is created atomically (O_CREAT | O_EXCL, which NFS v3+ and other shared file systems honour); a stale one is
renamed aside first, and restored if what was renamed turns out to be a fresh lock another run took meanwhile. On an
object store (gs://) there is no atomic create-if-absent through etils.epath: the lock is then best effort (create if
absent, read back, keep only if it is still ours). The heartbeat is the lock file's mtime where the file system has
one (refreshing it needs no space: it still works on a full disk), else a field rewritten in the file.

The processes of one multi-process run share the lock: process 0 takes it, and its outcome (with the message) is
broadcast, so that either all go on or all stop with the same error.
"""
from __future__ import annotations

import dataclasses
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable

import jax
import numpy as np
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from launch.files import fs_errors as errors
from launch.files import workdir as workdir_lib

LOCK_NAME = ".lock"
HEARTBEAT_S = float(os.environ.get("PPO_LOCK_HEARTBEAT_S", "10"))
STALE_S = float(os.environ.get("PPO_LOCK_STALE_S", "60"))
_MESSAGE_BYTES = 2048  # the outcome broadcast to the other processes


class WorkdirBusy(errors.WorkdirError):
  """Another run holds the workdir's lock."""


def _machine() -> str:
  """This machine and pid namespace: a pid is only meaningful to a process with the same one."""
  parts = [socket.gethostname()]
  for path in ("/proc/sys/kernel/random/boot_id", "/proc/self/ns/pid"):
    try:
      parts.append(os.readlink(path) if path.endswith("pid") else open(path, encoding="ascii").read().strip())
    except OSError:
      pass
  return "/".join(parts)


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # someone else's live process
    return True
  return True


@dataclasses.dataclass(frozen=True)
class Holder:
  host: str
  pid: int
  start: float
  run_id: str
  machine: str
  heartbeat: float  # the newest of the file's heartbeat field and its mtime

  def describe(self, now: float) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.start))
    return f"host {self.host}, pid {self.pid} (started {started}, last heartbeat {now - self.heartbeat:.0f} s ago)"

  def stale_reason(self, now: float) -> str | None:
    if self.machine == _machine() and not _pid_alive(self.pid):
      return f"its process {self.pid} on this machine is no longer running"
    if now - self.heartbeat > STALE_S:
      return f"no heartbeat for {now - self.heartbeat:.0f} s (more than PPO_LOCK_STALE_S={STALE_S:.0f})"
    return None


class WorkdirLock:
  """`acquire()` or WorkdirBusy; `release()` at the end. `lost` turns True if another run took the lock over."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.path = epath.Path(workdir) / LOCK_NAME
    self.remote = workdir_lib.is_remote(workdir)
    self.run_id = uuid.uuid4().hex
    self.lost = False
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  def _record(self) -> str:
    now = time.time()
    return json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "start": now, "run_id": self.run_id,
                       "machine": _machine(), "heartbeat": now})

  def _read(self, path: epath.Path | None = None) -> Holder | None:
    """The lock's holder; None if there is no lock. A lock being written (empty or cut short) reads as a holder
    with an unknown pid whose heartbeat is the file's mtime."""
    path = path or self.path
    try:
      text = path.read_text(encoding="utf-8")
      mtime = path.stat().mtime
    except FileNotFoundError:
      return None
    try:
      d = json.loads(text)
      return Holder(host=str(d["host"]), pid=int(d["pid"]), start=float(d["start"]), run_id=str(d["run_id"]),
                    machine=str(d.get("machine", "")), heartbeat=max(float(d.get("heartbeat", 0)), mtime))
    except (ValueError, KeyError, TypeError):
      return Holder(host="?", pid=-1, start=mtime, run_id="", machine="", heartbeat=mtime)

  def _create(self) -> bool:
    """Creates the lock if there is none; True if this run now holds it."""
    if self.remote:
      if self.path.exists():
        return False
      self.path.write_text(self._record(), encoding="utf-8")
      time.sleep(0.5)  # another run's write in the same moment wins or loses here, not later
      holder = self._read()
      return holder is not None and holder.run_id == self.run_id
    try:
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    try:
      os.write(fd, self._record().encode())
      os.fsync(fd)
    finally:
      os.close(fd)
    return True

  def _break(self, holder: Holder, reason: str) -> None:
    """Removes a stale lock, unless another run replaced it since it was read."""
    if self.remote:
      self.path.unlink(missing_ok=True)
    else:
      aside = self.path.with_name(f"{LOCK_NAME}.stale-{self.run_id}")
      try:
        os.rename(self.path, aside)
      except FileNotFoundError:
        return  # another run broke it first
      moved = self._read(aside)
      if moved is not None and (moved.run_id, moved.pid) != (holder.run_id, holder.pid):
        try:  # a fresh lock of a run that broke the stale one first: put it back
          os.link(aside, self.path)
        except FileExistsError:
          pass
      os.unlink(aside)
    logging.warning("took over the lock %s of %s: %s", self.path, holder.describe(time.time()), reason)

  def acquire(self) -> None:
    self.path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(20):
      if self._create():
        self._thread = threading.Thread(target=self._beat, name="workdir-lock", daemon=True)
        self._thread.start()
        return
      holder = self._read()
      if holder is None:
        continue  # released meanwhile
      now = time.time()
      reason = holder.stale_reason(now)
      if reason is None and holder.pid == -1 and now - holder.heartbeat < 5:
        time.sleep(0.2)  # being written by a run starting right now: read it again
        continue
      if reason is None:
        raise WorkdirBusy(
            f"--workdir={self.workdir} is in use by another run: {holder.describe(now)}; its lock is {self.path}. "
            f"Wait for that run to end, or use another --workdir; if it is no longer running (e.g. on a machine that "
            f"went down), its lock is taken over once its heartbeat is {STALE_S:.0f} s old, or delete {self.path}")
      self._break(holder, reason)
    raise WorkdirBusy(f"could not take the lock {self.path}: other runs keep taking it; use another --workdir")

  def _beat(self) -> None:
    warned = False
    while not self._stop.wait(HEARTBEAT_S):
      try:
        holder = self._read()
        if holder is None or holder.run_id != self.run_id:
          self.lost = True
          logging.error("the lock %s was taken over by another run (%s): this run's heartbeat stalled for more than "
                        "%.0f s; two runs may now write to %s", self.path,
                        holder.describe(time.time()) if holder else "removed", STALE_S, self.workdir)
          return
        if self.remote:
          record = json.loads(self.path.read_text(encoding="utf-8"))
          record["heartbeat"] = time.time()
          self.path.write_text(json.dumps(record), encoding="utf-8")
        else:
          os.utime(self.path)
      except Exception as e:  # pylint: disable=broad-except  (a failing heartbeat must not stop training)
        if not warned:
          logging.warning("could not refresh the lock %s: %s", self.path, e)
          warned = True

  def release(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
      self._thread = None
      holder = self._read()
      if holder is not None and holder.run_id == self.run_id:
        self.path.unlink(missing_ok=True)


def acquire(workdir: str, then: Callable[[], None] = lambda: None) -> WorkdirLock | None:
  """Takes WORKDIR's lock (process 0) and runs `then` (checks that need the lock, e.g. of the run's history) there;
  with several processes they all learn the outcome, so all go on or all raise the same error. Returns the lock on
  process 0, None on the others."""
  lock, error = None, None
  if jax.process_index() == 0:
    try:
      lock = WorkdirLock(workdir)
      lock.acquire()
      then()
    except Exception as e:  # pylint: disable=broad-except  (broadcast, then raised on every process)
      error = e
      if lock is not None:
        lock.release()
      lock = None
  if jax.process_count() > 1:
    text = "" if error is None else str(errors.workdir_message(error, workdir) or error)
    encoded = np.zeros(_MESSAGE_BYTES + 1, np.uint8)
    data = text.encode()[:_MESSAGE_BYTES]
    encoded[0], encoded[1:1 + len(data)] = error is not None, np.frombuffer(data, np.uint8)
    encoded = np.asarray(multihost_utils.broadcast_one_to_all(encoded))
    if error is None and encoded[0]:
      error = WorkdirBusy(bytes(encoded[1:]).rstrip(b"\0").decode(errors="replace") + " (reported by process 0)")
  if error is not None:
    raise error
  return lock
