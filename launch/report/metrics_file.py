"""metrics.jsonl, the run's rows as JSON lines: `JsonlFile` keeps a resumed run's rows and appends new ones, each in the
file when `append` returns; `read_jsonl` reads them back (plots, tests, benchmarks).

The workdir may be local or remote: object stores cannot append, so on a remote workdir each row rewrites the whole
file (a temporary file renamed over it), a local one is appended to.
"""
from __future__ import annotations

import json
from typing import Any

from etils import epath

from launch.files import workdir as workdir_lib


class JsonlFile:
  """metrics.jsonl: keeps the rows up to `resume_update` already there, then `append`s one row at a time. Each row is
  in the file when `append` returns (a checkpoint saved after it never gets ahead of the metrics)."""

  def __init__(self, path: str | epath.PathLike, resume_update: int, rewrite: bool | None = None):
    self.path = epath.Path(path)
    self.rewrite = workdir_lib.is_remote(path) if rewrite is None else rewrite  # else append
    self.lines = _kept_lines(self.path, resume_update)  # every row of the file
    _replace_contents(self.path, self.lines)
    self._file = None if self.rewrite else self.path.open("a", encoding="utf-8")

  def append(self, row: dict[str, Any]) -> None:
    line = json.dumps(row) + "\n"
    self.lines.append(line)
    try:
      if self.rewrite:
        _replace_contents(self.path, self.lines)
      else:
        self._file.write(line)
        self._file.flush()
    except OSError as e:
      e.filename = e.filename or str(self.path)  # a write to an open file does not say which (launch/files/fs_errors.py)
      raise

  def close(self) -> None:
    if self._file is not None:
      self._file.close()


def _kept_lines(path: epath.Path, max_update: int) -> list[str]:
  """The complete rows of `path` with update <= max_update (a half-written last line is dropped)."""
  if not path.exists():
    return []
  kept = []
  for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
    try:
      row = json.loads(line)
    except json.JSONDecodeError:
      continue  # a line cut short by a kill
    if row["update"] <= max_update:
      kept.append(line if line.endswith("\n") else line + "\n")
  return kept


def _replace_contents(path: epath.Path, lines: list[str]) -> None:
  """Writes a temporary file, then renames it over `path`: never leaves a half-rewritten file."""
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text("".join(lines), encoding="utf-8")
  tmp.replace(path)


def read_jsonl(path: str | epath.PathLike) -> list[dict[str, Any]]:
  return [json.loads(line) for line in epath.Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
