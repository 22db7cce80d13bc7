"""Workdir paths that may be local directories or remote URIs (gs://bucket/run on a TPU pod); file I/O on them goes
through etils.epath (as orbax's does), as does moving a directory. Also what a start may do to a workdir: refuse to
discard its history (`check_history`), move it aside (`--fresh`), and leave it as it was after a failed start
(`Tidy`)."""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import time

from absl import logging
from etils import epath

_URI = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_remote(path: str | os.PathLike) -> bool:
  """A URI such as gs://bucket/dir, as opposed to a local file system path."""
  return bool(_URI.match(os.fspath(path)))


def expand(path: str | os.PathLike) -> str:
  """A local path with `~` (or `~user`) expanded, as a shell would have (it does not in `--workdir=~/x`); a URI
  unchanged."""
  return os.fspath(path) if is_remote(path) else os.path.expanduser(os.fspath(path))


def absolute(path: str | os.PathLike) -> str:
  """A local path, `~` expanded, made absolute; a URI unchanged (os.path.abspath would turn gs://b/x into
  CWD/gs:/b/x)."""
  return os.fspath(path) if is_remote(path) else os.path.abspath(expand(path))


class MissingClientError(ImportError):
  """A URI whose file system client is not installed (a pip extra; launch.train exits with code 2)."""


# etils.epath reaches these stores through fsspec (unless TensorFlow is installed: then through tf.io.gfile).
_FSSPEC_CLIENTS = {"gs": ("gcsfs", "gcs"), "s3": ("s3fs", None), "az": ("adlfs", None)}


def check_client(path: str | os.PathLike) -> None:
  """Raises MissingClientError, naming the extra to install, when `path` is a URI whose client is missing (without it
  the first file operation fails deep inside fsspec)."""
  if not is_remote(path):
    return
  scheme = os.fspath(path).split("://", 1)[0].lower()
  if scheme not in _FSSPEC_CLIENTS or importlib.util.find_spec("tensorflow") is not None:
    return
  module, extra = _FSSPEC_CLIENTS[scheme]
  try:
    importlib.import_module(module)
  except ImportError:
    needs, install = ((f"the {extra} extra ({module})", f'pip install -e ".[{extra}]"') if extra else
                      (module, f"pip install {module}"))
    raise MissingClientError(f"{os.fspath(path)}: a {scheme}:// path needs {needs}, which is not installed; "
                             f"install it with: {install}") from None


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


# A run's files in its workdir, for the history check, --fresh and leaving a failed start's workdir as it was.
RUN_FILES = ("metrics.jsonl", "tensorboard", "checkpoints", "checkpoints_corrupt", "learning_curve.png",
             "diagnostics.png")


class HistoryError(Exception):
  """The workdir holds metrics rows that no checkpoint can resume: starting over would discard them (exit 2)."""


def _metrics_rows(path: epath.Path) -> tuple[int, int | None]:
  """The number of complete rows of metrics.jsonl and the last one's update."""
  if not path.exists():
    return 0, None
  count, last = 0, None
  for line in path.read_text(encoding="utf-8").splitlines():
    try:
      last, count = int(json.loads(line)["update"]), count + 1
    except (ValueError, KeyError, TypeError):
      continue
  return count, last


def check_history(workdir: str | os.PathLike, fresh: bool) -> None:
  """Refuses (HistoryError) a workdir whose metrics.jsonl has rows but that has no checkpoint to resume them from,
  unless `fresh`: then every run file is moved aside into WORKDIR/previous-<time>/, with a warning saying so."""
  directory = epath.Path(workdir)
  present = [name for name in RUN_FILES if (directory / name).exists()]
  if fresh:
    if present:
      aside = directory / time.strftime("previous-%Y%m%d-%H%M%S")
      aside.mkdir(parents=True, exist_ok=True)
      for name in present:
        if (directory / name).is_dir():
          move_tree(directory / name, aside / name)
        else:
          _move_file(directory / name, aside / name)
      logging.warning("--fresh: moved the previous run's %s to %s; starting over from update 0", ", ".join(present),
                      aside)
    return
  checkpoints = directory / "checkpoints"
  if checkpoints.exists() and any(p.name.isdigit() for p in checkpoints.iterdir()):
    return
  rows, last = _metrics_rows(directory / "metrics.jsonl")
  if rows:
    raise HistoryError(
        f"--workdir={workdir} has {rows} metrics rows (up to update {last}) in metrics.jsonl but no checkpoint to "
        f"resume them from (none in {checkpoints}), so continuing would start over and discard them. Rerun with "
        f"--fresh to move the old files aside (into {directory}/previous-<time>/) and start over, or use another "
        f"--workdir")


def _move_file(src: epath.Path, dst: epath.Path) -> None:
  try:
    src.rename(dst)
  except Exception:  # pylint: disable=broad-except  (no rename on this store: copy, then delete)
    src.copy(dst)
    src.unlink()


class Tidy:
  """What a start finds in the workdir, so that a failed start can leave it as it was: `undo()` removes the run
  files (and the workdir) this start created, unless they hold results (metrics rows, a checkpoint step)."""

  def __init__(self, workdir: str | os.PathLike):
    self.directory = epath.Path(workdir)
    self.existed = {name: (self.directory / name).exists() for name in ("",) + RUN_FILES}

  def undo(self) -> None:
    d = self.directory
    created = lambda name: not self.existed[name] and (d / name).exists()
    try:
      if created("checkpoints") and not list((d / "checkpoints").iterdir()):
        (d / "checkpoints").rmdir()
      no_rows = not (d / "metrics.jsonl").exists() or (d / "metrics.jsonl").stat().length == 0
      if created("metrics.jsonl") and no_rows:
        (d / "metrics.jsonl").unlink()
      if created("tensorboard") and no_rows:  # no row, no scalar in it either
        (d / "tensorboard").rmtree()
      if created("") and not list(d.iterdir()):
        d.rmdir()
    except Exception as e:  # pylint: disable=broad-except  (tidying must not hide the error that ended the start)
      logging.warning("could not remove what the failed start created in %s: %s", d, e)
