"""The console's fd 2 through a small child process that drops two kinds of native noise, both written from C++ straight
to fd 2, out of Python's reach: TensorStore's Python traceback for each callback of a failed read or write that lands
after orbax closed its event loop ("RuntimeError: Event loop is closed"; after a fault, a full disk or too few file
handles, that the run reports in one line, at any moment, from any thread), and Gloo's "[Gloo] Rank 0 is connected to
1 peer ranks" line of each process of a multi-process run.

`install()` (launch.train, unless -v) points fd 2 at a pipe read by this file run as a script, which copies everything
else to the real stderr as it arrives. The child ignores SIGINT and SIGTERM (they are the run's to handle, and its
last words must still reach the console) and reads until every writer is gone, so it outlives this process: a crash
or an abort (XLA's fatal errors are written to fd 2 just before it) loses nothing. Standard library only: the child
starts in ~20 ms.
"""
from __future__ import annotations

import atexit
import errno
import os
import re
import select
import signal
import subprocess
import sys

MARKER = b"Traceback (most recent call last):\n"
# One traceback whose last line says the event loop is closed (frames are indented; the exception line is not).
LOOP_CLOSED = re.compile(rb"Traceback \(most recent call last\):\n(?:  .*\n)*?RuntimeError: Event loop is closed\n")
_TRACEBACK = re.compile(rb"Traceback \(most recent call last\):\n(?:  .*\n)*[^ \n][^\n]*\n")
# Gloo's line for each process of a multi-process run as its CPU collectives connect (the run's start line says it).
GLOO = b"[Gloo] "
GLOO_CONNECTED = re.compile(rb"\[Gloo\] Rank \d+ is connected to \d+ peer ranks\. Expected number of connected peer "
                            rb"ranks is : \d+\n")
_LINE = re.compile(rb"[^\n]*\n")
# marker -> (what a whole candidate is, which wholes are dropped)
_DROPPED = {MARKER: (_TRACEBACK, LOOP_CLOSED), GLOO: (_LINE, GLOO_CONNECTED)}
HOLD_S = 2.0  # an unfinished candidate is held at most this long, then written as it is


def _split(buffer: bytes, eof: bool) -> tuple[bytes, bytes]:
  """(what can be written now, what must be held): text before a candidate (a traceback, a Gloo line) goes out at
  once; a complete candidate is dropped if it is one of the kinds above, written otherwise; an incomplete one (or a
  possible start of a marker at the end) is held."""
  out = b""
  while buffer:
    found = [(i, m) for m in _DROPPED if (i := buffer.find(m)) >= 0]
    if not found:
      keep = 0 if eof else max((k for m in _DROPPED for k in range(min(len(m) - 1, len(buffer)), 0, -1)
                                if m.startswith(buffer[-k:])), default=0)
      return out + buffer[:len(buffer) - keep], buffer[len(buffer) - keep:]
    start, marker = min(found)
    out, buffer = out + buffer[:start], buffer[start:]
    whole_of, dropped = _DROPPED[marker]
    whole = whole_of.match(buffer)
    if whole is None:
      return (out + buffer, b"") if eof else (out, buffer)
    block, buffer = buffer[:whole.end()], buffer[whole.end():]
    if not dropped.fullmatch(block):
      out += block
  return out, b""


def run(source: int, sink: int) -> None:
  """Copies `source` to `sink` until end of file, less the closed loop's tracebacks."""
  held = b""
  while True:
    ready, _, _ = select.select([source], [], [], HOLD_S if held else None)
    if not ready:  # a traceback that did not finish: not the pattern this drops
      os.write(sink, held)
      held = b""
      continue
    try:
      chunk = os.read(source, 1 << 16)
    except OSError as e:  # a pseudo-terminal whose every writer is gone
      if e.errno != errno.EIO:
        raise
      chunk = b""
    now, held = _split(held + chunk, eof=not chunk)
    if now:
      os.write(sink, now)
    if not chunk:
      return


def _channel() -> tuple[int, int]:
  """(read end, write end): a pipe; a pseudo-terminal in raw mode, with the terminal's size, where fd 2 is a terminal
  (the run still writes to a terminal: progress bars keep their width and their in-place updates)."""
  if not os.isatty(2):
    return os.pipe()
  import fcntl  # pylint: disable=import-outside-toplevel
  import termios  # pylint: disable=import-outside-toplevel
  import tty  # pylint: disable=import-outside-toplevel
  master, slave = os.openpty()
  tty.setraw(slave)  # bytes pass as written: no newline translation, no echo
  try:
    fcntl.ioctl(slave, termios.TIOCSWINSZ, fcntl.ioctl(2, termios.TIOCGWINSZ, b"\0" * 8))
  except OSError:
    pass
  return master, slave


def _same_file(a: int, b: int) -> bool:
  try:
    return os.path.sameopenfile(a, b)
  except OSError:
    return False


def install() -> None:
  """Puts the filter between this process's fd 2 and the console (idempotent; a no-op where fd 2 cannot be piped).
  At exit fd 2 is put back and the child is waited for, so that its last lines land before the shell's prompt."""
  if getattr(install, "child", None) is not None:
    return
  sys.stderr.flush()
  read_end, write_end = _channel()
  try:
    child = subprocess.Popen([sys.executable, "-S", os.path.abspath(__file__)], stdin=read_end, stdout=2,
                             stderr=subprocess.DEVNULL, close_fds=True)
  except OSError:
    os.close(read_end)
    os.close(write_end)
    return
  os.close(read_end)
  # stdout and stderr into one file (`2>&1`, a log): both through the pipe, or the filter's hop would reorder them.
  fds = (1, 2) if _same_file(1, 2) else (2,)
  sys.stdout.flush()
  originals = {fd: os.dup(fd) for fd in fds}
  for fd in fds:
    os.dup2(write_end, fd)
  os.close(write_end)
  install.child = child

  def restore() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    for fd, original in originals.items():  # the pipe's writers in this process closed: the child reads to the end
      os.dup2(original, fd)
    try:
      child.wait(timeout=5)
    except subprocess.TimeoutExpired:  # something else holds the pipe (a child process of ours): leave it running
      pass

  atexit.register(restore)


if __name__ == "__main__":
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  signal.signal(signal.SIGTERM, signal.SIG_IGN)
  run(0, 1)
