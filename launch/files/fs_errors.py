"""Failures a user can act on, said in one line: a workdir or disk that cannot be written (found anywhere in an
exception's chain, also inside orbax's and TensorStore's wrapped errors), an unreadable checkpoint file, and what is
safe afterwards (the checkpoint a rerun resumes from). Also keeps the tracebacks that orbax and TensorStore print for
such failures off the console at the default verbosity (any --verbosity / -v shows them)."""
from __future__ import annotations

import contextlib
import errno
import os
import re
import resource
import sys
import tempfile
import time
from collections.abc import Iterator

from absl import flags, logging
from etils import epath

from launch.files import stderr_filter, workdir as workdir_lib

# The causes a user can fix: space, permissions, a path that is not a directory, a read-only or failing disk, too few
# file handles (the process's `ulimit -n`, or the system's table).
FILE_HANDLE_ERRNOS = (errno.EMFILE, errno.ENFILE)
FILESYSTEM_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR,
                     errno.EEXIST, errno.EIO, errno.EFBIG, errno.ENAMETOOLONG, errno.ENOENT) + FILE_HANDLE_ERRNOS
_STRERRORS = {os.strerror(e): e for e in FILESYSTEM_ERRNOS if e != errno.ENOENT}
_FILE_HANDLE_STRERRORS = {os.strerror(e) for e in FILE_HANDLE_ERRNOS}  # ENOENT alone is too common a text
_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")  # TensorStore's
_ERRNO = re.compile(r"\[Errno (\d+)\]")
_QUOTED_PATH = re.compile(r"""["']((?:/|[a-z][a-z0-9+.-]*://)[^"']+)["']""")
_SPEC_PATH = re.compile(r"""'path': '([^']+)'""")  # in a TensorStore spec


class WorkdirError(Exception):
  """The workdir cannot be used (written, created, locked): launch.train exits with code 2."""


def _chain(error: BaseException) -> Iterator[BaseException]:
  seen = set()
  todo = [error]
  while todo:
    e = todo.pop(0)
    if e is None or id(e) in seen:
      continue
    seen.add(id(e))
    yield e
    todo += [e.__cause__, e.__context__, *getattr(e, "exceptions", ())]


def filesystem_cause(error: BaseException, workdir: str | None = None) -> tuple[str | None, str] | None:
  """(path or None, strerror) of the first file-system failure in `error`'s chain, else None.

  With `workdir`, a failure that names a path outside it is not the workdir's (e.g. a full /tmp), unless the path is
  one of its ancestors (created on the way to it); a missing file (ENOENT) counts only when it is under it (else it is
  some other mistake)."""
  def ours(path: str | None) -> bool:
    if workdir is None or path is None:
      return True
    inside = lambda p: os.fspath(p) if workdir_lib.is_remote(p) else os.path.abspath(workdir_lib.expand(p))
    path, root = inside(path), inside(workdir)
    return path.startswith(root) or root.startswith(path.rstrip("/") + "/")

  for e in _chain(error):
    if isinstance(e, OSError) and e.errno in FILESYSTEM_ERRNOS:
      path = e.filename if e.filename is None else os.fspath(e.filename)
      if ours(path) and (e.errno != errno.ENOENT or (workdir and path)):
        return path, os.strerror(e.errno)
      continue
    text = str(e)
    code = _OS_ERROR_CODE.search(text) or _ERRNO.search(text)
    number = int(code.group(1)) if code else next((n for s, n in _STRERRORS.items() if s in text), None)
    if number in FILESYSTEM_ERRNOS and number != errno.ENOENT:
      found = _QUOTED_PATH.search(text)
      path = found.group(1) if found else None
      if ours(path):
        return path, os.strerror(number)
  return None


def complete_steps(workdir: str) -> list[int]:
  """The checkpoint steps under WORKDIR/checkpoints that were completed (orbax renames a save when it is done)."""
  try:
    return sorted(int(p.name) for p in epath.Path(workdir, "checkpoints").iterdir() if p.name.isdigit())
  except Exception:  # pylint: disable=broad-except  (the directory itself may be what failed)
    return []


def what_is_safe(workdir: str) -> str:
  """Which checkpoint a rerun of the same command resumes from."""
  steps = complete_steps(workdir)
  if not steps:
    try:
      rows = epath.Path(workdir, "metrics.jsonl").stat().length > 0
    except Exception:  # pylint: disable=broad-except
      rows = False
    if rows:
      return ("no checkpoint was saved yet; after fixing it, rerun with --fresh to start over (metrics.jsonl is "
              "moved aside), or use another --workdir")
    return "no checkpoint was saved yet; after fixing it (or with another --workdir), rerun the same command"
  last = steps[-1]
  return (f"nothing saved is lost: {os.path.join(workdir, 'checkpoints', str(last))} (update {last}) is complete; "
          "after fixing it, rerun the same command to resume from there")


def workdir_message(error: BaseException, workdir: str) -> str | None:
  """The one-line report of a file-system failure in `error`, or None if it is not one."""
  cause = filesystem_cause(error, workdir)
  if cause is None:
    return None
  path, reason = cause
  if reason in _FILE_HANDLE_STRERRORS:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return (f"out of file handles: {reason}: {path or workdir} (this process may open {soft} files at once: "
            f"`ulimit -n`); raise the limit (e.g. `ulimit -n 65536`) and rerun; {what_is_safe(workdir)}")
  return f"cannot write to the workdir: {reason}: {path or workdir}; {what_is_safe(workdir)}"


def unreadable(error: BaseException, limit: int = 300) -> str:
  """An unreadable checkpoint's error as one line naming the file, not orbax's wrapped TensorStore spec."""
  spec_path = next((m.group(1) for e in _chain(error) for m in [_SPEC_PATH.search(str(e))] if m), None)
  cause = error
  if spec_path:  # orbax's "error while reading array index ... See full TensorStore details: <spec>" hides the cause
    inner = [e for e in _chain(error) if not _SPEC_PATH.search(str(e)) and str(e).strip()]
    cause = inner[0] if inner else error
  text = f"{type(cause).__name__}: {cause}".strip().splitlines()[0]
  if spec_path:
    text = f"{spec_path.rstrip('/')}: {text}"
  return text if len(text) <= limit else text[:limit] + "…"


# Console noise.


def _verbose() -> bool:
  """Was --verbosity (-v) given? Then everything is shown, as launch/report/console.py does for the libraries' logs."""
  try:
    return flags.FLAGS["verbosity"].present > 0
  except (KeyError, flags.Error):
    return False


def _raised_in_orbax(error: BaseException | None) -> bool:
  """Whether a frame of `error`'s chain (its cause, its context) is orbax's."""
  for e in _chain(error) if error is not None else ():
    tb = e.__traceback__
    while tb is not None:
      if f"{os.sep}orbax{os.sep}" in tb.tb_frame.f_code.co_filename:
        return True
      tb = tb.tb_next
  return False


def _drop_orbax_filesystem_errors(record) -> bool:
  """Orbax logs every thread's traceback of a failed save, and asyncio logs those of its futures that nobody awaited
  once the save failed ("Future exception was never retrieved"); the run reports the failure once, in one line."""
  error = record.exc_info[1] if record.exc_info else None
  if _verbose() or record.levelno < 40 or not (f"{os.sep}orbax{os.sep}" in record.pathname  # 40: ERROR
                                               or _raised_in_orbax(error)):
    return True
  return not ((error is not None and filesystem_cause(error)) or filesystem_cause(Exception(record.getMessage())))


def _quiet_unraisable(unraisable) -> None:
  """Orbax's restore leaves coroutines of a failed read that raise again when collected ("Exception ignored in:
  <coroutine ...>"): the failure was already reported, naming the file."""
  code = getattr(getattr(unraisable, "object", None), "cr_code", None)  # a coroutine's
  files = [code.co_filename] if code is not None else []
  tb = unraisable.exc_traceback
  while tb is not None:
    files.append(tb.tb_frame.f_code.co_filename)
    tb = tb.tb_next
  if not _verbose() and (any(f"{os.sep}orbax{os.sep}" in f for f in files) or _half_made_loop(unraisable)):
    return
  sys.__unraisablehook__(unraisable)


def _half_made_loop(unraisable) -> bool:
  """An asyncio event loop whose construction failed (its socket pair: out of file handles, reported by the run)
  raises again when collected."""
  return (getattr(unraisable.object, "__qualname__", "") == "BaseEventLoop.__del__"
          and isinstance(unraisable.exc_value, AttributeError))


def install_console_filters() -> None:
  """For launch.train: orbax's repeated tracebacks of file-system failures and of a failed restore stay off, and so
  do TensorStore's native ones after a failed read or write (launch/files/stderr_filter.py)."""
  logging.get_absl_logger().addFilter(_drop_orbax_filesystem_errors)
  # Other loggers' records (asyncio's) reach absl's handler through the root logger, past the absl logger's filters.
  logging.get_absl_handler().addFilter(_drop_orbax_filesystem_errors)
  sys.unraisablehook = _quiet_unraisable
  if not _verbose():
    stderr_filter.install()


# What TensorStore prints (from C++, to fd 2) for each callback of a failed restore's other reads that completes after
# orbax closed the restore's event loop; it may land during the next read.
LOOP_CLOSED = stderr_filter.LOOP_CLOSED
_LINGER_S = 0.3  # after a failed read, for its other reads' callbacks to land here rather than later


@contextlib.contextmanager
def stderr_kept_if_failed() -> Iterator[None]:
  """Holds what C++ code writes to fd 2 inside the block (TensorStore prints the tracebacks of a failed read's
  callbacks there, out of Python's reach); replays it, less those tracebacks, unless the block raised (the caller
  reports that failure)."""
  if _verbose():
    yield
    return
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as held:
    os.dup2(held.fileno(), 2)
    failed = True
    try:
      yield
      failed = False
    finally:
      if failed:
        time.sleep(_LINGER_S)
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      if not failed:
        held.seek(0)
        text = LOOP_CLOSED.sub(b"", held.read())
        if text:
          os.write(2, text)
