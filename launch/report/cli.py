"""What the command lines share: bad flags and a start-up the environment makes impossible (XLA_FLAGS that XLA rejects,
JAX_PLATFORMS naming a backend this machine lacks) end in one line and exit code 2, before anything is compiled."""
from __future__ import annotations

import os
import re
import sys

from absl import flags

from launch.files import workdir as workdir_lib

EXIT_USAGE = 2  # invalid flags, config or environment (the table: docs/checkpoints.md#exit-codes)
_GLOG_PREFIX = re.compile(r"^[FEWI]\d{4} [\d:.]+\s+\d+ [\w.]+:\d+\] ")  # XLA's C++ log line prefix


def fail(message: str, code: int = EXIT_USAGE) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(code)


def flags_parser(argv: list[str]) -> list[str]:
  """absl's parsing with a bad flag reported in one line and exit code 2 (absl's own: a "FATAL" line, exit 1)."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(f"{e}; pass --helpshort to see the flags")


def check_xla_flags() -> None:
  """Exits with code 2 and one line when XLA rejects XLA_FLAGS, which it does by ending the process (exit 1) the first
  time it reads them: a forked child reads them first (milliseconds; jax imported, no backend started)."""
  value = os.environ.get("XLA_FLAGS", "").strip()
  if not value:
    return
  read, write = os.pipe()
  sys.stdout.flush()
  sys.stderr.flush()
  pid = os.fork()
  if pid == 0:  # the child: its only job is to read the flags, which XLA does for the first compile options
    try:
      os.close(read)
      os.dup2(write, 1)
      os.dup2(write, 2)
      from jax._src.lib import xla_client  # pylint: disable=import-outside-toplevel
      xla_client.CompileOptions()
    finally:
      os._exit(0)  # pylint: disable=protected-access
  os.close(write)
  chunks = []
  while chunk := os.read(read, 65536):
    chunks.append(chunk)
  os.close(read)
  status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
  said = [_GLOG_PREFIX.sub("", line) for line in b"".join(chunks).decode(errors="replace").splitlines()]
  said = [line for line in said if "XLA_FLAGS" in line]
  if status != 0 and said:
    fail(f"{said[-1].rstrip('.')} (XLA_FLAGS={value!r}); fix or remove it (XLA's flags: the fields of DebugOptions "
         "in xla/xla.proto)")


def start_backend() -> None:
  """Starts JAX's backend; JAX_PLATFORMS naming one this machine cannot start (e.g. tpu without libtpu) exits with
  code 2 and one line."""
  import jax  # pylint: disable=import-outside-toplevel
  try:
    jax.devices()
  except RuntimeError as e:
    platforms = os.environ.get("JAX_PLATFORMS") or jax.config.jax_platforms
    if not platforms or "Unable to initialize backend" not in str(e):
      raise
    reason = str(e).split(" (set JAX_PLATFORMS=", 1)[0]
    fail(f"JAX_PLATFORMS={platforms}: {reason}; set JAX_PLATFORMS to a backend this machine has (e.g. cpu), or "
         "unset it to use the best one available")



def start(*paths: str) -> None:
  """A reader CLI's start-up checks, each one line and exit 2: every URI in `paths` has its client installed,
  XLA accepts XLA_FLAGS, the JAX_PLATFORMS backend exists."""
  for path in paths:
    try:
      workdir_lib.check_client(path)
    except workdir_lib.MissingClientError as e:
      fail(str(e))
  check_xla_flags()
  start_backend()
