"""The one reader of checkpoint steps: every reader of a run goes through it (the trainer's resume in store.py,
`config.restore_from` in params.py, launch.evaluate / launch.export in saved_run.py, the segment plan in
launch/run/elastic.py, launch.plot's seed groups).

What it checks before anything of a step is used: the host record's checksum (`format.check_seal`), the update it
names, and, when arrays are read, the checkpoint format and every packed array against the fingerprint saved with it
(the whole step: params, optimizer state, runner). A storage error is retried with backoff
(launch/checkpoint/read_errors.py) before the step counts as unreadable; it then stops the read (StorageUnavailable,
exit 2). A step that fails a check is skipped for the newest one that passes, with one line naming the skipped step
and why. `newest` never moves anything: only the trainer's resume moves a corrupt step of its own run aside
(store.py). A step removed while it is read (a running run's rotation) is no fault: the steps are listed again and
the newest is read.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from launch.config import resolve as config_lib
from launch.files import fs_errors, workdir as workdir_lib
from launch.checkpoint import format as format_lib, read_errors

RACES = 8  # steps that may vanish under one read (a run saving every update) before the reader gives up


class NoCheckpoint(config_lib.ConfigError):
  """No such directory, or no checkpoint step in it."""


class NoReadableStep(config_lib.ConfigError):
  """Every step failed a check (or vanished): one line naming each step and why; nothing was moved."""


@dataclasses.dataclass(frozen=True)
class Step:
  """One step as read and checked: its host record and (when asked for) its packed arrays as numpy, by item."""
  directory: epath.Path  # the checkpoints directory
  step: int
  host: dict[str, Any]
  arrays: dict[str, dict[str, np.ndarray]] | None

  @property
  def path(self) -> str:
    return str(self.directory / str(self.step))


def locate(path: str) -> tuple[epath.Path, int | None]:
  """(checkpoints directory, the step or None for the newest) of a run's workdir, its checkpoints/ or one step
  directory; local or gs://... (file checks through etils.epath, as orbax's)."""
  root = epath.Path(workdir_lib.absolute(path))
  if (root / "checkpoints").is_dir():
    return root / "checkpoints", None
  if root.name.isdigit():
    return root.parent, int(root.name)
  return root, None


def steps(directory: epath.Path) -> list[int]:
  """The complete steps, newest first (orbax's finalized ones: a save in progress is not listed)."""
  return sorted(read_errors.read(lambda: ocp.path.step.checkpoint_steps(directory), str(directory)), reverse=True)


def read_host(step_dir: epath.Path, where: str) -> dict[str, Any]:
  """The step's host record, read (storage errors retried) and checked against its checksum."""
  host = read_errors.read(lambda: ocp.JsonCheckpointHandler().restore(step_dir / "host",
                                                                       args=ocp.args.JsonRestore()), where)
  if not isinstance(host, dict):
    raise read_errors.CorruptStep(f"{where}: its host record is not a JSON object")
  format_lib.check_seal(host, where)
  return host


def host_fingerprint(words: np.ndarray) -> int:
  """format.fingerprints of one packed array (uint8/16/32 words) on the host, without a device or a compile."""
  bits, total = words.reshape(-1), np.uint32(0)
  chunk = 1 << 24  # bounds the temporaries for a large runner
  for start in range(0, bits.size, chunk):
    part = bits[start:start + chunk].astype(np.uint32)
    weights = 2 * np.arange(start, start + part.size, dtype=np.uint64).astype(np.uint32) + np.uint32(1)
    total = np.uint32(total + np.sum(part * weights, dtype=np.uint32))
  return int(total)


def check_fingerprints(got: dict[str, Any], host: dict[str, Any], where: str) -> None:
  """Raises CorruptStep unless every packed array read (`got`: item → array → fingerprint) matches the record."""
  saved = host.get("fingerprint") or {}
  bad = [f"{item}.{name}" for item, arrays in got.items() for name, value in arrays.items()
         if (saved.get(item) or {}).get(name) != value]
  if bad:
    raise read_errors.CorruptStep(f"{where}: the arrays {', '.join(bad)} do not match the fingerprint saved with "
                                  "them (corrupted bytes)")


def read_arrays(step_dir: epath.Path, host: dict[str, Any], where: str) -> dict[str, dict[str, np.ndarray]]:
  """Every packed array of the step as numpy (a runner saved unpacked, without fingerprints, is not read), each
  checked against its fingerprint."""
  want = {item: {name: ocp.RestoreArgs(restore_type=np.ndarray) for name in arrays}
          for item, arrays in (host.get("fingerprint") or {}).items() if arrays}
  handler = ocp.PyTreeCheckpointHandler(use_ocdbt=False)
  try:
    arrays = read_errors.read(lambda: handler.restore(step_dir / "arrays", args=ocp.args.PyTreeRestore(
        want, restore_args=want, partial_restore=True)), where)
  finally:
    handler.close()
  got = {item: {name: np.asarray(arrays[item][name]) for name in names} for item, names in want.items()}
  check_fingerprints({item: {name: host_fingerprint(x) for name, x in a.items()} for item, a in got.items()}, host,
                     where)
  return got


def _read(directory: epath.Path, step: int, with_arrays: bool, what: str) -> Step:
  step_dir = directory / str(step)
  where = str(step_dir)
  host = read_host(step_dir, where)
  if host.get("update") != step:
    raise read_errors.CorruptStep(f"{where}: its host record names update {host.get('update')}, not {step}")
  if not with_arrays:
    return Step(directory, step, host, None)
  if host.get("format") != format_lib.FORMAT:  # not corrupt: refused, the older steps are of the same version
    raise config_lib.ConfigError(f"{what}: {where} was written by another version of this code (another checkpoint "
                                 "format); read it with that version")
  return Step(directory, step, host, read_arrays(step_dir, host, where))


def newest(path: str, what: str, arrays: bool = True, quiet: bool = False) -> Step:
  """The newest step under `path` (a run's workdir, its checkpoints/ or one step directory) that reads and passes
  every check, with its arrays unless `arrays` is False (host record only). Read-only: nothing is moved.

  `what` names the source in messages as the user gave it (e.g. "--workdir=DIR", "config.restore_from=DIR"). A
  skipped step is said in one warning line (an info line with `quiet`: a caller that reports it itself). Raises
  NoCheckpoint, NoReadableStep (one line each), ConfigError for a step of another format, StorageUnavailable when
  the storage keeps failing; any other error is a bug and propagates."""
  directory, pinned = locate(path)
  if not directory.is_dir() or (pinned is not None and not (directory / str(pinned)).is_dir()):
    raise NoCheckpoint(f"{what}: no such directory")
  skipped: dict[int, str] = {}
  races = 0
  while True:
    try:
      listed = [pinned] if pinned is not None else steps(directory)
    except read_errors.CorruptStep as e:  # a step removed while the directory was listed
      races += 1
      if races > RACES:
        raise NoCheckpoint(f"{what}: cannot list {directory}: {_why(e, str(directory))}") from e
      continue
    todo = [s for s in listed if s not in skipped]
    if not todo:
      break
    step = todo[0]
    where = str(directory / str(step))
    try:
      with fs_errors.stderr_kept_if_failed():  # TensorStore's tracebacks of a failed read: reported in one line
        found = _read(directory, step, arrays, what)
    except read_errors.CorruptStep as e:
      if pinned is None and races < RACES and _rotated(directory, step, listed):
        races += 1  # the run that writes it removed it while it was read (or is removing it): list again
        logging.info("%s: %s was removed while being read (the run is still saving); reading the newest again",
                     what, where)
        continue
      skipped[step] = _why(e, where)
      continue
    for bad, why in skipped.items():
      (logging.info if quiet else logging.warning)(
          "%s: checkpoint %s is unreadable (%s); using %s (update %d) instead; nothing was moved", what,
          directory / str(bad), why, found.path, found.step)
    return found
  if not skipped:
    raise NoCheckpoint(f"{what}: holds no checkpoint (train first, or wait for the first save: "
                       "config.checkpoint_every)")
  raise NoReadableStep(f"{what}: no readable checkpoint in {directory} (" +
                       "; ".join(f"step {s}: {why}" for s, why in skipped.items()) + "); nothing was moved")


def _rotated(directory: epath.Path, step: int, listed: list[int]) -> bool:
  """Whether `step` is gone, or newer steps were saved since `listed` (rotation removes the oldest steps: one being
  removed may still be listed, half deleted, so newer ones are read first)."""
  try:
    now = steps(directory)
  except read_errors.CorruptStep:  # another step removed meanwhile
    return True
  return step not in now or max(now, default=-1) > max(listed)


def _why(error: BaseException, where: str, limit: int = 300) -> str:
  """A skipped step's reason in a few words (the step is named beside it)."""
  text = (str(error).strip().splitlines() or [type(error).__name__])[0].removeprefix(f"{where}: ")
  return text if len(text) <= limit else text[:limit] + "…"
