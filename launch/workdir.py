"""Workdir paths that may be local directories or remote URIs (gs://bucket/run on a TPU pod); file I/O on them goes
through etils.epath (as orbax's does)."""
from __future__ import annotations

import os
import re

_URI = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_remote(path: str | os.PathLike) -> bool:
  """A URI such as gs://bucket/dir, as opposed to a local file system path."""
  return bool(_URI.match(os.fspath(path)))


def absolute(path: str | os.PathLike) -> str:
  """A local path made absolute; a URI unchanged (os.path.abspath would turn gs://b/x into CWD/gs:/b/x)."""
  return os.fspath(path) if is_remote(path) else os.path.abspath(path)
