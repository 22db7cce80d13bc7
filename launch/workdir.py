"""Workdir paths that may be local directories or remote URIs (gs://bucket/run on a TPU pod); file I/O on them goes
through etils.epath (as orbax's does), as does moving a directory."""
from __future__ import annotations

import os
import re

from etils import epath

_URI = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_remote(path: str | os.PathLike) -> bool:
  """A URI such as gs://bucket/dir, as opposed to a local file system path."""
  return bool(_URI.match(os.fspath(path)))


def absolute(path: str | os.PathLike) -> str:
  """A local path made absolute; a URI unchanged (os.path.abspath would turn gs://b/x into CWD/gs:/b/x)."""
  return os.fspath(path) if is_remote(path) else os.path.abspath(path)


def move_tree(src: epath.Path, dst: epath.Path) -> None:
  """Moves directory `src` to `dst` (local or gs://...): a rename where the file system has one for directories, else
  copy and delete (object stores)."""
  dst.parent.mkdir(parents=True, exist_ok=True)
  try:
    src.rename(dst)
    return
  except Exception:  # pylint: disable=broad-except  (no directory rename here: copy, then delete)
    if dst.exists():
      dst.rmtree()
  for root, _, files in src.walk():
    here = dst / root.relative_to(src)
    here.mkdir(parents=True, exist_ok=True)
    for name in files:
      (root / name).copy(here / name)
  src.rmtree()
