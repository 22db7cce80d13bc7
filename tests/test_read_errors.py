"""What a failed read of a checkpoint step leads to (launch/checkpoint/read_errors.py): a step is moved aside only for
a reason about the step (its integrity checks, its files missing or undecodable); storage errors are retried and, if
they persist, stop the restore with nothing moved; any other exception is a bug and propagates, nothing moved.

Every other reader of a run (launch/checkpoint/reader.py: restore_from, evaluate, export, the segment plan, plot's
seed groups) makes the same checks, reads only (nothing moved), and falls back to the newest valid step in one line;
readers of a running run take a step that stays when the newest is rotated away under them."""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from launch import checkpoint, export
from launch.checkpoint import format as format_lib, params as params_lib, read_errors, reader, saved_run
from launch.checkpoint.store import RunCheckpoints
from launch.config import resolve as config_lib
from launch.files import fs_errors
from launch.report import plots
from launch.run import elastic
from learner import policy as policy_lib
from pipeline import dataflow
from tests.test_checkpoint import _debug_config, _host, _host_file, _state_target


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """Steps 1 and 2 of a debug run with obs_norm (the state of update 0 saved as each, its params times the step, so
  that which step a reader used shows), and what restores them."""
  config = _debug_config(checkpoint_every=1, obs_norm=True)
  init, target = _state_target(config, 1)
  workdir = str(tmp_path_factory.mktemp("saved") / "run")
  ckpts = RunCheckpoints(workdir, config)
  for step in (1, 2):
    state = init().state
    state = state.replace(update=jnp.int32(step), params=jax.tree.map(lambda x, s=step: x * s, state.params))
    ckpts.maybe_save(dataflow.Snapshot(state=state), step, [], [], 0.0, force=True)
  ckpts.close()
  return config, init, target, workdir


@pytest.fixture(autouse=True)
def no_linger(monkeypatch):
  """No pause after a failed read for TensorStore's late callbacks (they print; nothing here reads stderr)."""
  monkeypatch.setattr(fs_errors, "_LINGER_S", 0.0)


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


def _failing_reads(monkeypatch, handler, failures: int):
  """`handler`'s first `failures` reads fail as a storage answering badly would (EIO)."""
  original = handler.restore
  calls = []

  def restore(self, directory, *args, **kwargs):
    calls.append(directory)
    if len(calls) <= failures:
      raise OSError(errno.EIO, "Input/output error", str(directory))
    return original(self, directory, *args, **kwargs)
  monkeypatch.setattr(handler, "restore", restore)
  monkeypatch.setattr(read_errors, "BACKOFF_S", 0.0)
  return calls


def _failing_arrays_reads(monkeypatch, failures: int):
  """The arrays item's first `failures` reads fail."""
  return _failing_reads(monkeypatch, ocp.StandardCheckpointHandler, failures)


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


# The readers of a run other than its own resume (launch/checkpoint/reader.py).

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


@pytest.fixture(scope="module")
def expected(saved):
  """Each step's params as saved (the fixture's init params times the step)."""
  _, init, _, _ = saved
  params = init().state.params
  return {step: _leaves(jax.tree.map(lambda x, s=step: x * s, params)) for step in (1, 2)}


def _readers(saved, workdir, out):
  """What each reader makes of the run: (the step whose params it used, those params) or the error it raised."""
  config, init, target, _ = saved
  restore_config = _debug_config(checkpoint_every=1, obs_norm=True, restore_from=workdir)

  def evaluate():  # launch.evaluate's read
    run = saved_run.load(workdir)
    return run.update, _leaves(run.policy.params)

  def export_():
    step_dir = export.export(workdir, out)
    return int(os.path.basename(step_dir)), _leaves(policy_lib.load_policy(out).params)

  def restore_from():
    return None, _leaves(params_lib.start_from(restore_config, init, target).state.params)

  results = {}
  for name, read in (("evaluate", evaluate), ("export", export_), ("restore_from", restore_from)):
    try:
      results[name] = read()
    except (config_lib.ConfigError, read_errors.StorageUnavailable) as e:
      results[name] = e
  return results


def _word(workdir, step, array, index):
  """Flips the low bit of one stored word of a packed array; the file still decodes (only a fingerprint sees it)."""
  import tensorstore as ts  # pylint: disable=import-outside-toplevel
  stored = ts.open({"driver": "zarr", "kvstore": {"driver": "file",
                                                  "path": f"{workdir}/checkpoints/{step}/arrays/{array}"}}).result()
  value = stored[index].read().result()
  stored[index].write(value ^ 1).result()


def _byte(path):
  """Flips the low bit of a file's middle byte."""
  with open(path, "r+b") as f:
    data = bytearray(f.read())
    data[len(data) // 2] ^= 1
    f.seek(0)
    f.write(data)


def _span(workdir, part):
  return _host(workdir, 2)["spans"][format_lib.LEARNER][part]["flat_uint32"][0]


FLIPS = {  # a file kind of a step → how a bit of it is flipped
    "host record": lambda w: _byte(_host_file(w, 2)),
    "params": lambda w: _word(w, 2, "learner.flat_uint32", _span(w, "params") + 1),
    "optimizer state": lambda w: _word(w, 2, "learner.flat_uint32", _span(w, "train_state") + 1),
    "runner (observation statistics)": lambda w: _word(w, 2, "runner.flat_uint32", 0),
    "runner (env states)": lambda w: _word(w, 2, "runner.env_uint32", (3, 1)),
    "compressed params chunk": lambda w: _byte(f"{w}/checkpoints/2/arrays/learner.flat_uint32/0"),
    "array metadata": lambda w: [_byte(f"{w}/checkpoints/2/arrays/{f}") for f in (
        "_METADATA", "_sharding", "learner.flat_uint32/.zarray", "array_metadatas/process_0")],
}


@pytest.mark.parametrize("kind", list(FLIPS))
def test_a_flipped_bit_anywhere_is_never_used_by_any_reader(saved, expected, run, tmp_path, kind, caplog):
  """restore_from, evaluate and export either read the intact newest step or fall back to step 1, saying which step
  they skipped and why; they never use a changed byte and never move anything."""
  workdir, _ = run
  FLIPS[kind](workdir)
  for name, got in _readers(saved, workdir, str(tmp_path / "policy")).items():
    assert not isinstance(got, Exception), f"{name}: {got}"
    step, params = got
    used = next((s for s in (2, 1) if all(np.array_equal(a, b) for a, b in zip(params, expected[s]))), None)
    assert used is not None, f"{name} used params that are neither step's: changed bytes"
    assert step in (None, used), (name, step, used)
    if kind != "array metadata":  # those files are checked by the library or unused; the data changed here
      assert used == 1, f"{name} used the flipped step"
  skipped = [r.getMessage() for r in caplog.records if "is unreadable" in r.getMessage()]
  if kind != "array metadata":
    assert len(skipped) == 3 and all(f"{workdir}/checkpoints/2 is unreadable (" in m and
                                     f"using {workdir}/checkpoints/1 (update 1) instead" in m for m in skipped), skipped
  assert _steps(workdir) == [1, 2] and _moved(workdir) == []


def test_a_reader_refuses_in_one_line_when_no_step_is_valid(saved, run, tmp_path):
  workdir, _ = run
  for step in (1, 2):
    _word(workdir, step, "learner.flat_uint32", 5)
  results = _readers(saved, workdir, str(tmp_path / "policy"))
  for name, what in (("evaluate", "--workdir="), ("export", "--workdir="), ("restore_from", "config.restore_from=")):
    message = str(results[name])
    assert isinstance(results[name], reader.NoReadableStep) and "\n" not in message, message
    assert message.startswith(what) and "step 2: " in message and "step 1: " in message, message
    assert "fingerprint" in message and "nothing was moved" in message
  assert _steps(workdir) == [1, 2] and _moved(workdir) == []


@pytest.mark.parametrize("cli", ["evaluate", "export"])
def test_the_clis_exit_2_in_one_line_on_corrupt_or_failing_storage(run, tmp_path, cli):
  """launch.evaluate on a run with every step corrupt; launch.export while the storage keeps failing (EIO)."""
  workdir, _ = run
  if cli == "evaluate":
    for step in (1, 2):
      _word(workdir, step, "learner.flat_uint32", 5)
  inject = "" if cli == "evaluate" else (
      "import errno, orbax.checkpoint as ocp\n"
      "from launch.checkpoint import read_errors\n"
      "read_errors.BACKOFF_S = 0.0\n"
      "def fail(self, directory, *a, **k): raise OSError(errno.EIO, 'Input/output error', str(directory))\n"
      "ocp.PyTreeCheckpointHandler.restore = fail\n")
  argv = [cli, f"--workdir={workdir}"] + ([f"--out={tmp_path / 'policy'}"] if cli == "export" else [])
  code = inject + f"import runpy, sys\nsys.argv = {argv!r}\nrunpy.run_module('launch.{cli}', run_name='__main__')\n"
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                        env=dict(os.environ, XLA_FLAGS=""), timeout=300)
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert lines[-1].startswith("error: ") and "restore_from" not in proc.stderr, proc.stderr[-3000:]
  if cli == "evaluate":
    assert lines[-1].startswith(f"error: --workdir={workdir}: no readable checkpoint"), lines[-1]
  else:
    assert f"cannot read the checkpoint {workdir}/checkpoints/2" in lines[-1] and "nothing was moved" in lines[-1]
  assert _steps(workdir) == [1, 2] and _moved(workdir) == []


def _save_as(workdir, step, new):
  """A copy of `step` saved as update `new` (its record names `new`; the arrays are `step`'s)."""
  shutil.copytree(f"{workdir}/checkpoints/{step}", f"{workdir}/checkpoints/{new}")
  host = _host(workdir, new)
  host["update"] = new
  with open(_host_file(workdir, new), "w", encoding="utf-8") as f:
    json.dump(format_lib.seal({k: v for k, v in host.items() if k != format_lib.CHECKSUM}), f)


@pytest.mark.parametrize("when", ["before its host record", "before its arrays", "half deleted, a newer step saved"])
def test_readers_of_a_running_run_take_a_step_that_stays(saved, expected, run, monkeypatch, when, caplog):
  """The run rotates its newest step away between the reader's listing and its reads (as a run saving every update
  does): the reader lists again and reads the newest step there, and its messages name what the user gave."""
  workdir, _ = run
  handler = ocp.JsonCheckpointHandler if when == "before its host record" else ocp.PyTreeCheckpointHandler
  original = handler.restore
  rotated = []

  def restore(self, directory, *args, **kwargs):
    if not rotated:
      rotated.append(directory)
      if when.startswith("half deleted"):  # the run saved step 3 and is still deleting step 2
        _save_as(workdir, 2, 3)
        shutil.rmtree(f"{workdir}/checkpoints/2/arrays")
      else:
        shutil.rmtree(f"{workdir}/checkpoints/2")  # the run's rotation (keep_checkpoints)
    return original(self, directory, *args, **kwargs)
  monkeypatch.setattr(handler, "restore", restore)
  run_ = saved_run.load(workdir)
  used = 2 if when.startswith("half deleted") else 1  # step 3 holds step 2's params
  assert rotated and run_.update == (3 if used == 2 else 1) and all(
      np.array_equal(a, b) for a, b in zip(_leaves(run_.policy.params), expected[used]))
  assert not [r for r in caplog.records if "is unreadable" in r.getMessage()]
  assert _moved(workdir) == []
  shutil.rmtree(f"{workdir}/checkpoints/3", ignore_errors=True)
  shutil.rmtree(f"{workdir}/checkpoints/2", ignore_errors=True)
  # Everything gone while read: the message is the command's, not config.restore_from's.
  shutil.rmtree(f"{workdir}/checkpoints/1")
  with pytest.raises(reader.NoCheckpoint, match="^" + re.escape(f"--workdir={workdir}: holds no checkpoint")):
    saved_run.load(workdir)


@pytest.mark.parametrize("handler", [ocp.JsonCheckpointHandler, ocp.PyTreeCheckpointHandler])
def test_readers_retry_transient_storage_errors_and_stop_on_lasting_ones(saved, run, tmp_path, monkeypatch, handler):
  workdir, _ = run
  calls = _failing_reads(monkeypatch, handler, failures=2)
  results = _readers(saved, workdir, str(tmp_path / "policy"))
  assert [results[n][0] for n in ("evaluate", "export")] == [2, 2], results
  assert len(calls) == 3 + 2  # two failed reads, then one each
  monkeypatch.undo()
  calls = _failing_reads(monkeypatch, handler, failures=100)
  for name, got in _readers(saved, workdir, str(tmp_path / "policy2")).items():
    assert isinstance(got, read_errors.StorageUnavailable), (name, got)
    assert "\n" not in str(got) and f"{workdir}/checkpoints/2" in str(got) and "nothing was moved" in str(got)
  assert len(calls) == 3 * read_errors.ATTEMPTS
  assert _steps(workdir) == [1, 2] and _moved(workdir) == []


def test_the_segment_plan_and_plots_seed_groups_skip_a_corrupt_host_record(run, tmp_path):
  """Read as they are, a changed record would plan the run at its num_envs and group the run by its env_name; its
  checksum says the step is corrupt, so both read step 1's record instead (and move nothing)."""
  workdir, _ = run
  other = str(tmp_path / "other_seed")
  shutil.copytree(workdir, other)
  for step in (1, 2):  # the same run with another seed: one seed group
    host = _host(other, step)
    host["config"]["seed"] = 1
    with open(_host_file(other, step), "w", encoding="utf-8") as f:
      json.dump(format_lib.seal({k: v for k, v in host.items() if k != "checksum"}), f)
  assert plots.seed_groups([workdir, other]) == [[workdir, other]]
  host = _host(other, 2)
  host["config"]["num_envs"] *= 2
  host["config"]["env_name"] = "cue"
  with open(_host_file(other, 2), "w", encoding="utf-8") as f:
    json.dump(host, f)
  planned = elastic.newest_host(other)
  assert planned["update"] == 1 and planned["config"]["num_envs"] == _host(workdir, 2)["config"]["num_envs"]
  assert plots.seed_groups([workdir, other]) == [[workdir, other]]
  assert _steps(other) == [1, 2] and _moved(other) == []
