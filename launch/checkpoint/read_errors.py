"""Why a checkpoint step could not be read, and what follows from it.

A step is *corrupt* — moved aside to checkpoints_corrupt/, and the run falls back to the previous step — only for a
reason about the step itself: one of this project's integrity checks fails (the host record's checksum, the arrays'
fingerprints, the update the step holds), or the storage library finds the step's files missing or cannot decode
them. A *storage* error (an I/O error, a bucket's 503, a timeout, a permission) is retried with backoff; if it
persists, the restore stops with one line and moves nothing (`StorageUnavailable`, exit 2). Any other exception is
a bug in the reading code: it propagates with its traceback and never moves a checkpoint.
"""
from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import TypeVar

from absl import logging

from launch.files import fs_errors

T = TypeVar("T")

CORRUPT, STORAGE = "corrupt", "storage"
ATTEMPTS = 4  # reads of a step before a storage error is final
BACKOFF_S = 1.0  # the first retry's delay; doubled after each (1, 2, 4 s)

# TensorStore/absl status codes in an error's text: the step's own bytes (missing, damaged, not what the spec says)
# versus the storage answering badly.
_STATUS = re.compile(r"\b(NOT_FOUND|DATA_LOSS|INVALID_ARGUMENT|OUT_OF_RANGE|FAILED_PRECONDITION|UNAVAILABLE|"
                     r"DEADLINE_EXCEEDED|ABORTED|RESOURCE_EXHAUSTED|PERMISSION_DENIED|UNAUTHENTICATED|CANCELLED)\b")
_CORRUPT_STATUSES = {"NOT_FOUND", "DATA_LOSS", "INVALID_ARGUMENT", "OUT_OF_RANGE", "FAILED_PRECONDITION"}


class CorruptStep(Exception):
  """A step's content fails a check or cannot be decoded: the step is unreadable, whatever is retried."""


class StorageUnavailable(fs_errors.WorkdirError):
  """The storage kept failing to read a step: nothing was moved; a rerun tries again."""


def classify(error: BaseException) -> str:
  """CORRUPT or STORAGE, for an error raised while the storage library read a step's files."""
  chain = list(fs_errors._chain(error))  # pylint: disable=protected-access
  for e in chain:
    if isinstance(e, CorruptStep):
      return CORRUPT
    if isinstance(e, (FileNotFoundError, NotADirectoryError, IsADirectoryError, json.JSONDecodeError,
                      UnicodeDecodeError)):
      return CORRUPT
    if isinstance(e, OSError):
      return STORAGE
  for e in chain:
    found = _STATUS.search(str(e))
    if found:
      return CORRUPT if found.group(1) in _CORRUPT_STATUSES else STORAGE
  return CORRUPT  # the library could not make sense of the step's files


def read(what: Callable[[], T], where: str) -> T:
  """`what()`, a read of the step at `where` by the storage library, retried while the storage fails.

  Raises CorruptStep when the step's files are missing or undecodable, StorageUnavailable when the storage still
  fails after ATTEMPTS reads."""
  delay = BACKOFF_S
  for attempt in range(1, ATTEMPTS + 1):
    try:
      return what()
    except Exception as e:  # pylint: disable=broad-except  (classified: corrupt, storage; the library's own)
      cause = fs_errors.unreadable(e)
      if classify(e) == CORRUPT:
        raise CorruptStep(cause) from e
      if attempt == ATTEMPTS:
        raise StorageUnavailable(
            f"cannot read the checkpoint {where}: {cause} (read {ATTEMPTS} times); nothing was moved: rerun when "
            "the storage answers") from e
      logging.warning("reading %s failed (%s); retrying in %.1f s", where, cause, delay)
      time.sleep(delay)
      delay *= 2
  raise AssertionError("unreachable")
