"""metrics.jsonl, the run's rows as JSON lines: `JsonlFile` keeps a resumed run's rows and appends new ones, each in the
file when `append` returns; `read_jsonl` reads them back (plots, tests, benchmarks).

The workdir may be local or remote: object stores cannot append, so on a remote workdir each row rewrites the whole
file (a temporary file renamed over it), a local one is appended to.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from etils import epath

from launch.files import workdir as workdir_lib


class MetricsFileError(ValueError):
  """A complete line of metrics.jsonl that is not a row (the message names the file and the line number)."""


class JsonlFile:
  """metrics.jsonl: keeps the rows up to `resume_update` already there, then `append`s one row at a time. Each row is
  in the file when `append` returns (a checkpoint saved after it never gets ahead of the metrics).

  `covered_update`: the update of the last row the resumed checkpoint covers (written before it was saved). Rows the
  file lacks up to there (deleted, cut short) and malformed lines (dropped) are said in `notes`, one line each."""

  def __init__(self, path: str | epath.PathLike, resume_update: int, rewrite: bool | None = None,
               covered_update: int = 0):
    self.path = epath.Path(path)
    self.rewrite = workdir_lib.is_remote(path) if rewrite is None else rewrite  # else append
    self.lines, self.notes = _kept_lines(self.path, resume_update)  # every row of the file
    last = json.loads(self.lines[-1])["update"] if self.lines else None
    if covered_update > 0 and (last is None or last < covered_update):
      lacks = "has no rows" if last is None else f"has no rows after update {last}"
      cause = "cut short or rows deleted" if self.path.exists() else "deleted"
      self.notes.append(f"{self.path} {lacks} but the checkpoint resumed covers rows up to update {covered_update} "
                        f"(the file was {cause}): those rows are lost; the run goes on, its learning curves with a gap")
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


def _rows(path: epath.Path, text: str) -> Iterator[tuple[int, str, dict[str, Any] | None]]:
  """(line number, line, row or None when malformed) of each line; a last line cut short (no newline: a kill during
  its write, or a run writing it now) is left out."""
  lines = text.splitlines(keepends=True)
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
      row = row if isinstance(row, dict) and isinstance(row.get("update"), int) else None
    except json.JSONDecodeError:
      if number == len(lines) and not line.endswith("\n"):
        return
      row = None
    yield number, line, row


def _malformed(path: epath.Path, number: int, line: str) -> str:
  text = line.strip()
  return f"{path} line {number} is not a metrics row: {text[:60]!r}{'…' if len(text) > 60 else ''}"


def _kept_lines(path: epath.Path, max_update: int) -> tuple[list[str], list[str]]:
  """The complete rows of `path` with update <= max_update, and a note for each malformed line (dropped)."""
  if not path.exists():
    return [], []
  kept, notes = [], []
  for number, line, row in _rows(path, path.read_text(encoding="utf-8")):
    if row is None:
      notes.append(_malformed(path, number, line) + "; dropped")
    elif row["update"] <= max_update:
      kept.append(line if line.endswith("\n") else line + "\n")
  return kept, notes


def _replace_contents(path: epath.Path, lines: list[str]) -> None:
  """Writes a temporary file, then renames it over `path`: never leaves a half-rewritten file."""
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text("".join(lines), encoding="utf-8")
  tmp.replace(path)


def read_jsonl(path: str | epath.PathLike) -> list[dict[str, Any]]:
  """The rows of a metrics.jsonl, less a last line cut short; a malformed line raises MetricsFileError."""
  path = epath.Path(path)
  rows = []
  for number, line, row in _rows(path, path.read_text(encoding="utf-8")):
    if row is None:
      raise MetricsFileError(_malformed(path, number, line))
    rows.append(row)
  return rows
