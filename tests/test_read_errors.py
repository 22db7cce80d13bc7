"""What a failed read of a checkpoint step leads to (launch/checkpoint/read_errors.py): a step is moved aside only for
a reason about the step (its integrity checks, its files missing or undecodable); storage errors are retried and, if
they persist, stop the restore with nothing moved; any other exception is a bug and propagates, nothing moved."""
from __future__ import annotations

import dataclasses
import errno
import json
import os

import jax.numpy as jnp
import orbax.checkpoint as ocp
import pytest

from launch import checkpoint
from launch.checkpoint import format as format_lib, read_errors
from launch.checkpoint.store import RunCheckpoints
from tests.test_checkpoint import _debug_config, _host, _host_file, _state_target


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """Steps 1 and 2 of a debug run (the state of update 0 saved as each), and what restores them."""
  config = _debug_config(checkpoint_every=1)
  init, target = _state_target(config, 1)
  workdir = str(tmp_path_factory.mktemp("saved") / "run")
  ckpts = RunCheckpoints(workdir, config)
  for step in (1, 2):
    snapshot = init()
    snapshot = dataclasses.replace(snapshot, state=snapshot.state.replace(update=jnp.int32(step)))
    ckpts.maybe_save(snapshot, step, [], [], 0.0, force=True)
  ckpts.close()
  return config, init, target, workdir


@pytest.fixture
def run(saved, tmp_path):
  """A copy of the saved run for one test, and `restore()` → (the update restored, the error raised)."""
  import shutil  # pylint: disable=import-outside-toplevel
  config, init, target, workdir = saved
  copy = str(tmp_path / "run")
  shutil.copytree(workdir, copy)

  def restore():
    ckpts = RunCheckpoints(copy, config)
    try:
      _, resume = ckpts.restore_or_init(init, target)
      return resume.update
    finally:
      ckpts.close()
  return copy, restore


def _steps(workdir):
  return sorted(int(d) for d in os.listdir(f"{workdir}/checkpoints") if d.isdigit())


def _moved(workdir):
  corrupt = f"{workdir}/checkpoints_corrupt"
  return sorted(int(d.split("-")[0]) for d in os.listdir(corrupt)) if os.path.isdir(corrupt) else []


def test_a_bug_while_restoring_propagates_and_moves_nothing(run, monkeypatch):
  workdir, restore = run
  original = RunCheckpoints._use_step  # pylint: disable=protected-access

  def use_step(self, step, *args):
    if step == 2:
      raise TypeError("a bug in the code that rebuilds the state")
    return original(self, step, *args)
  monkeypatch.setattr(RunCheckpoints, "_use_step", use_step)
  with pytest.raises(TypeError, match="a bug"):
    restore()
  assert _steps(workdir) == [1, 2] and _moved(workdir) == []


def _failing_arrays_reads(monkeypatch, failures: int):
  """The arrays item's first `failures` reads fail as a storage answering badly would (EIO)."""
  original = ocp.StandardCheckpointHandler.restore
  calls = []

  def restore(self, directory, *args, **kwargs):
    calls.append(directory)
    if len(calls) <= failures:
      raise OSError(errno.EIO, "Input/output error", str(directory))
    return original(self, directory, *args, **kwargs)
  monkeypatch.setattr(ocp.StandardCheckpointHandler, "restore", restore)
  monkeypatch.setattr(read_errors, "BACKOFF_S", 0.0)
  return calls


def test_a_transient_storage_error_is_retried(run, monkeypatch):
  workdir, restore = run
  calls = _failing_arrays_reads(monkeypatch, failures=2)
  assert restore() == 2
  assert len(calls) == 3 and _steps(workdir) == [1, 2] and _moved(workdir) == []


def test_a_storage_error_that_persists_stops_in_one_line_and_moves_nothing(run, monkeypatch):
  workdir, restore = run
  calls = _failing_arrays_reads(monkeypatch, failures=100)
  with pytest.raises(read_errors.StorageUnavailable) as raised:
    restore()
  assert len(calls) == read_errors.ATTEMPTS
  message = str(raised.value)
  assert "\n" not in message and f"{workdir}/checkpoints/2" in message and "nothing was moved" in message
  assert _steps(workdir) == [1, 2] and _moved(workdir) == []


def test_a_flipped_bit_in_the_host_record_is_corruption_not_another_config(run):
  """Read as it is, the flipped seed is a must_match key: the run would be refused as another config. The record's
  checksum says the step is corrupt, so the run falls back to the previous step and moves the corrupt one aside."""
  workdir, restore = run
  host = _host(workdir, 2)
  assert host["checksum"] and host["config"]["seed"] == 0
  host["config"]["seed"] = 1
  with open(_host_file(workdir, 2), "w", encoding="utf-8") as f:
    json.dump(host, f)
  assert restore() == 1
  assert _steps(workdir) == [1] and _moved(workdir) == [2]


def test_a_missing_file_is_corruption_and_falls_back(run):
  workdir, restore = run
  os.remove(_host_file(workdir, 2))
  assert restore() == 1
  assert _moved(workdir) == [2]


def test_the_seal_reads_back(tmp_path):
  """The checksum is of the record as JSON reads it back: int keys become strings, tuples lists."""
  host = format_lib.seal({"format": format_lib.FORMAT, "spans": {1: [0, 3]}, "lags": (1, 2)})
  format_lib.check_seal(json.loads(json.dumps(host)), "here")
  broken = json.loads(json.dumps(host))
  broken["lags"][0] = 7
  with pytest.raises(read_errors.CorruptStep, match="checksum"):
    format_lib.check_seal(broken, "here")


def test_classify():
  assert read_errors.classify(FileNotFoundError(errno.ENOENT, "gone")) == read_errors.CORRUPT
  assert read_errors.classify(OSError(errno.EIO, "I/O")) == read_errors.STORAGE
  assert read_errors.classify(ValueError("UNAVAILABLE: 503 from the bucket")) == read_errors.STORAGE
  assert read_errors.classify(ValueError("DATA_LOSS: Error decoding chunk")) == read_errors.CORRUPT
  wrapped = ValueError("could not restore")
  wrapped.__cause__ = json.JSONDecodeError("Expecting value", "x", 0)
  assert read_errors.classify(wrapped) == read_errors.CORRUPT
  assert issubclass(read_errors.StorageUnavailable, checkpoint.store.errors.WorkdirError)  # exit 2, one line
