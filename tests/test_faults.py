"""Faults a user hits, each a one-line message and a documented exit code, with nothing lost: two trainers on one
workdir, a workdir that cannot be written, a disk that fills during a save, deleted checkpoints, configs past the
code's size limits, bad config files, a peer that never joins, a second Ctrl-C and a stop during compilation.

Runs are `python -m launch.train` subprocesses of the 12-update debug run of tests/test_checkpoint.py, sharing one
persistent compilation cache; most of the faults stop a run before it compiles.
"""
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import orbax.checkpoint as ocp
import pytest

from launch.config import resolve as config_lib
from launch.files import fs_errors as errors, lock as workdir_lock
from launch.run import preemption
from launch.run import trainer
from launch.configs import debug
from tests.test_checkpoint import ARGS, REPO, _env, _files, _rows, _start, _steps, _wait_for


@pytest.fixture(scope="module")
def jax_cache(tmp_path_factory):
  return str(tmp_path_factory.mktemp("jax_cache"))


def _run(jax_cache, workdir, *extra, env=None):
  proc = subprocess.run([sys.executable, "-m", "launch.train", f"--workdir={workdir}", *ARGS, *extra], cwd=REPO,
                        env=env or _env(jax_cache), capture_output=True, text=True, timeout=300)
  return proc


# TensorStore prints, from C++ to fd 2, a traceback for each callback of a failed write that completes after orbax
# closed the write's event loop. launch/files/fs_errors.py keeps them off the console of a failed *restore*; a failed *save*
# (disk full) can still print them while the run goes on, depending on timing (a known wart, docs/checkpoints.md).
_LOOP_CLOSED = re.compile(errors.LOOP_CLOSED.pattern.decode())


def _one_clean_line(proc, code, *expected, loop_closed_tracebacks=False):
  """Exit `code`, no traceback, and a last line that says what happened (each of `expected` is in it)."""
  assert proc.returncode == code, proc.stderr[-3000:]
  stderr = _LOOP_CLOSED.sub("", proc.stderr) if loop_closed_tracebacks else proc.stderr
  assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr[-3000:]
  last = proc.stderr.strip().splitlines()[-1]
  for text in expected:
    assert text in last, last
  return last


@pytest.fixture(scope="module")
def baseline(jax_cache, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("baseline") / "run")
  proc = _run(jax_cache, workdir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert not os.path.exists(os.path.join(workdir, workdir_lock.LOCK_NAME))  # released at the end
  return workdir


# 1. One writer per workdir.


def test_a_second_trainer_is_refused_and_the_first_keeps_its_results(jax_cache, baseline, tmp_path):
  wd = str(tmp_path / "run")
  first = _start(jax_cache, wd, pause=2)
  _wait_for(first, f"{wd}/test_paused_at_2")
  second = _run(jax_cache, wd)
  _one_clean_line(second, 2, f"--workdir={wd} is in use by another run", f"pid {first.pid}",
                  "Wait for that run to end, or use another --workdir")
  first.send_signal(signal.SIGTERM)  # the first goes on undisturbed: it saves update 2, and a rerun finishes it
  assert first.wait(timeout=120) == 3, first.stderr.read()[-3000:]
  assert _run(jax_cache, wd).returncode == 0
  assert _rows(wd) == _rows(baseline)


def _write_lock(workdir, pid, machine, age_s=0.0):
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, workdir_lock.LOCK_NAME)
  with open(path, "w", encoding="utf-8") as f:
    json.dump({"host": "elsewhere", "pid": pid, "start": time.time() - age_s, "run_id": "other", "machine": machine,
               "heartbeat": time.time() - age_s}, f)
  os.utime(path, (time.time() - age_s,) * 2)
  return path


def test_a_crashed_holders_lock_goes_stale(tmp_path):
  wd = str(tmp_path / "run")
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  here = workdir_lock._machine()  # pylint: disable=protected-access
  for pid, machine, age, busy in [(os.getpid(), here, 0, True),  # alive here
                                  (dead.pid, here, 0, False),  # its process is gone
                                  (1, "another machine", 5, True),  # fresh heartbeat elsewhere
                                  (1, "another machine", workdir_lock.STALE_S + 5, False)]:  # heartbeat too old
    _write_lock(wd, pid, machine, age)
    lock = workdir_lock.WorkdirLock(wd)
    if busy:
      with pytest.raises(workdir_lock.WorkdirBusy, match=f"host elsewhere, pid {pid}"):
        lock.acquire()
    else:
      lock.acquire()
      assert json.load(open(lock.path, encoding="utf-8"))["run_id"] == lock.run_id
      lock.release()
      assert not os.path.exists(lock.path)
  # A half-written lock (a run starting this instant) is busy; an old one is garbage.
  path = _write_lock(wd, 1, "x")
  open(path, "w", encoding="utf-8").close()
  with pytest.raises(workdir_lock.WorkdirBusy):
    workdir_lock.WorkdirLock(wd).acquire()
  os.utime(path, (time.time() - workdir_lock.STALE_S - 5,) * 2)
  lock = workdir_lock.WorkdirLock(wd)
  lock.acquire()
  lock.release()


def test_the_heartbeat_keeps_the_lock_fresh_and_notices_a_takeover(tmp_path, monkeypatch):
  monkeypatch.setattr(workdir_lock, "HEARTBEAT_S", 0.05)
  lock = workdir_lock.WorkdirLock(str(tmp_path))
  lock.acquire()
  os.utime(lock.path, (0, 0))
  deadline = time.time() + 10
  while os.stat(lock.path).st_mtime < time.time() - 5 and time.time() < deadline:
    time.sleep(0.02)
  assert os.stat(lock.path).st_mtime > time.time() - 5
  _write_lock(str(tmp_path), 1, "another machine")  # taken over while this run was stalled
  while not lock.lost and time.time() < deadline:
    time.sleep(0.02)
  assert lock.lost
  lock.release()
  assert json.load(open(lock.path, encoding="utf-8"))["run_id"] == "other"  # not removed: it is not ours


def test_all_processes_of_a_run_stop_together_on_a_held_lock(jax_cache, tmp_path):
  from launch import local  # pylint: disable=import-outside-toplevel
  wd = str(tmp_path / "run")
  _write_lock(wd, os.getpid(), workdir_lock._machine())  # pylint: disable=protected-access
  address = f"127.0.0.1:{local.free_port()}"
  env = local.process_env(devices_per_process=1)
  args = [sys.executable, "-m", "launch.train", f"--workdir={wd}", "--config=launch/configs/debug.py",
          "--config.mesh.data=-1", f"--coordinator_address={address}", "--num_processes=2"]
  procs = [subprocess.Popen(args + [f"--process_id={i}"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True) for i in (0, 1)]
  outs = [p.communicate(timeout=120)[1] for p in procs]
  for p, err in zip(procs, outs):
    _one_clean_line(subprocess.CompletedProcess(p.args, p.returncode, "", err), 2, "is in use by another run",
                    f"pid {os.getpid()}")


# 2. A workdir that cannot be written; a disk that fills during a save.


def test_a_workdir_under_a_file_is_one_line(jax_cache, tmp_path):
  (tmp_path / "file").write_text("")
  proc = _run(jax_cache, tmp_path / "file" / "run")
  _one_clean_line(proc, 2, "cannot write to the workdir: Not a directory", str(tmp_path / "file" / "run"))


def _mount_tmpfs(path, options):
  os.makedirs(path, exist_ok=True)
  if shutil.which("mount") is None or os.geteuid() != 0:
    pytest.skip("mounting a tmpfs needs root")
  proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
  if proc.returncode:
    pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")


def test_a_read_only_file_system_and_a_full_disk_during_a_save(jax_cache, baseline, tmp_path):
  """Real file systems: a read-only tmpfs, and a 400 KiB one that fills during the 4th save (each ~84 KiB)."""
  ro, small = tmp_path / "ro", tmp_path / "small"
  _mount_tmpfs(ro, "ro,size=64k")
  try:
    _one_clean_line(_run(jax_cache, ro / "run"), 2, "cannot write to the workdir: Read-only file system", str(ro))
  finally:
    subprocess.run(["umount", str(ro)], check=False)
  _mount_tmpfs(small, "size=400k")
  try:
    wd = small / "run"
    proc = _run(jax_cache, wd, "--config.checkpoint_every=1", "--config.keep_checkpoints=20")
    steps = _steps(wd)
    last = _one_clean_line(proc, 2, "cannot write to the workdir: No space left on device", f"{wd}/checkpoints/",
                           f"{wd}/checkpoints/{steps[-1]} (update {steps[-1]}) is complete",
                           "rerun the same command to resume", loop_closed_tracebacks=True)
    assert 2 <= steps[-1] < 12 and "train:" not in last
    shutil.copytree(wd, tmp_path / "moved", ignore=shutil.ignore_patterns("*.orbax-checkpoint-tmp*"))
  finally:
    subprocess.run(["umount", str(small)], check=False)
  # Once there is space (here: elsewhere), the same command resumes and finishes the uninterrupted run.
  assert _run(jax_cache, tmp_path / "moved").returncode == 0
  assert _rows(tmp_path / "moved") == _rows(baseline)


def test_a_disk_error_during_a_save_names_the_file_and_the_safe_checkpoint(tmp_path, monkeypatch):
  """Without root: orbax's save of update 6 fails the way TensorStore reports a full disk."""
  save = ocp.CheckpointManager.save

  def failing_save(self, step, *args, **kwargs):
    if step == 6:
      raise ValueError(f'RESOURCE_EXHAUSTED: Error writing local file "{tmp_path}/checkpoints/6.orbax-checkpoint-tmp/'
                       'arrays/0": Failed to write 703 bytes to file 12: No space left on device '
                       "[os_error_code='28']")
    return save(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "save", failing_save)
  config = debug.get_config()
  config.checkpoint_every = 3
  with pytest.raises(ValueError) as e:
    trainer.train_and_evaluate(config, str(tmp_path))
  message = errors.workdir_message(e.value, str(tmp_path))
  assert message.startswith(f"cannot write to the workdir: No space left on device: {tmp_path}/checkpoints/6.")
  assert f"{tmp_path}/checkpoints/3 (update 3) is complete" in message
  assert not (tmp_path / workdir_lock.LOCK_NAME).exists()
  assert errors.filesystem_cause(OSError(errno.EROFS, os.strerror(errno.EROFS), "/x")) == ("/x", "Read-only file system")
  assert errors.filesystem_cause(FileNotFoundError(errno.ENOENT, "gone", "/elsewhere"), str(tmp_path)) is None
  assert errors.filesystem_cause(OSError(errno.ENOSPC, "full", "/tmp/cache"), str(tmp_path)) is None  # not ours
  assert errors.filesystem_cause(OSError(errno.ENOSPC, "full"), str(tmp_path)) == (None, "No space left on device")


# 3. History is never discarded silently.


def test_metrics_without_checkpoints_are_refused_unless_fresh(jax_cache, baseline, tmp_path):
  wd = str(tmp_path / "run")
  shutil.copytree(baseline, wd)
  shutil.rmtree(f"{wd}/checkpoints")
  before = _files(wd)
  _one_clean_line(_run(jax_cache, wd), 2, "has 3 metrics rows (up to update 12)", "Rerun with --fresh")
  assert _files(wd) == before
  proc = _run(jax_cache, wd, "--fresh")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert ("--fresh: moved the previous run's metrics.jsonl, tensorboard, learning_curve.png, diagnostics.png to"
          in proc.stderr)
  (previous,) = [d for d in os.listdir(wd) if d.startswith("previous-")]
  assert _rows(os.path.join(wd, previous)) == _rows(baseline) == _rows(wd)


# 4. Size limits are config rules; a failed start leaves the workdir as it found it.


def test_size_limits_are_config_rules(jax_cache, tmp_path):
  proc = _run(jax_cache, tmp_path / "run", f"--config.num_envs={2**25}", "--config.num_steps=128",
              f"--config.total_env_steps={2**32}")
  _one_clean_line(proc, 2, f"config.num_envs={2**25}: num_envs * num_steps = 4,294,967,296 samples per update is "
                  "more than 2,147,483,647")
  assert not (tmp_path / "run").exists()
  config = debug.get_config()
  config.total_env_steps = 2**31 * config.num_envs * config.num_steps
  with pytest.raises(config_lib.ConfigError, match="the most the int32 update counter holds"):
    config_lib.resolve(config, 1)
  config.total_env_steps //= 2
  config_lib.resolve(config, 1)


def test_a_failed_start_leaves_the_workdir_as_it_found_it(tmp_path, monkeypatch):
  def fail(*args, **kwargs):
    raise RuntimeError("RESOURCE_EXHAUSTED: out of memory while compiling")
  monkeypatch.setattr(trainer.programs, "build", fail)
  for wd in (tmp_path / "new", tmp_path / "old"):
    if wd.name == "old":
      wd.mkdir()
      (wd / "notes.txt").write_text("mine")
    with pytest.raises(RuntimeError, match="RESOURCE_EXHAUSTED"):
      trainer.train_and_evaluate(debug.get_config(), str(wd))
    assert (not wd.exists()) if wd.name == "new" else os.listdir(wd) == ["notes.txt"]


# 5. Messages.


def test_config_file_errors_are_one_line(jax_cache, tmp_path):
  proc = _run(jax_cache, tmp_path, "--config=launch/configs/missing.py", "--config.num_envs=64")
  _one_clean_line(proc, 2, "--config=launch/configs/missing.py: no such file", "debug.py")
  proc = _run(jax_cache, tmp_path, "--config=launch/configs/debug.py:bogus")
  _one_clean_line(proc, 2, "unknown variant 'bogus'")
  with pytest.raises(ValueError, match="unknown variant"):
    debug.get_config("bogus")


def test_a_peer_that_never_joins_is_named(jax_cache, tmp_path):
  from launch import local  # pylint: disable=import-outside-toplevel
  env = dict(local.process_env(devices_per_process=1), PPO_INIT_TIMEOUT_S="2")
  start = time.monotonic()
  proc = subprocess.run([sys.executable, "-m", "launch.train", f"--workdir={tmp_path}/run", *ARGS,
                         f"--coordinator_address=127.0.0.1:{local.free_port()}", "--num_processes=2",
                         "--process_id=0"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  _one_clean_line(proc, 2, "process 0 of 2: not every process registered", "within PPO_INIT_TIMEOUT_S=2 s",
                  "a peer never joined")
  assert time.monotonic() - start < 60 and "another task died" not in proc.stderr


def _wait(condition, timeout=10.0):
  deadline = time.monotonic() + timeout
  while not condition() and time.monotonic() < deadline:
    time.sleep(0.01)  # the main thread runs Python signal handlers between bytecodes
  return condition()


def test_a_second_signal_or_one_during_start_up_ends_the_process_at_once(baseline, tmp_path, monkeypatch):
  """The watcher thread of launch/run/preemption.py (as launch.train runs it), with the exit itself recorded."""
  wd = str(tmp_path / "run")
  shutil.copytree(baseline, wd)
  exits = []
  monkeypatch.setattr(preemption, "EXIT_AT_ONCE", True)
  monkeypatch.setattr(preemption, "_exit_now", lambda code, line: exits.append((code, line)))
  stop = preemption.StopRequest(wd)
  try:
    os.kill(os.getpid(), signal.SIGINT)
    assert _wait(stop.requested.is_set) and not _wait(lambda: exits, 0.3)  # in the loop: finish the update, save
    os.kill(os.getpid(), signal.SIGINT)
    assert _wait(lambda: exits)
    (code, line), = exits
    assert code == 130 and line.startswith("stopped at once by a second SIGINT, without saving the current update")
    assert f"the newest checkpoint, {wd}/checkpoints/12 (update 12), is unchanged: rerun the same command" in line
  finally:
    stop.close()
  exits.clear()
  stop = preemption.StopRequest(str(tmp_path / "new"))
  try:
    stop.starting(True)
    os.kill(os.getpid(), signal.SIGTERM)
    assert _wait(lambda: exits)
    assert exits == [(3, "stopped by SIGTERM during start-up, before the first update: nothing to save; no "
                      "checkpoint yet: rerunning the same command starts the run")]
  finally:
    stop.close()
  monkeypatch.setattr(preemption, "EXIT_AT_ONCE", False)  # as a library: the loop checks before its first update
  stop = preemption.StopRequest(wd)
  try:
    os.kill(os.getpid(), signal.SIGTERM)
    assert _wait(stop.stopped_before_start)
  finally:
    stop.close()


# 6. A stop during compilation.


def test_sigterm_during_compilation_exits_at_once_with_the_state_unchanged(baseline, tmp_path_factory, tmp_path):
  cold = str(tmp_path_factory.mktemp("cold_cache"))  # a real compile, seconds long, to land in
  for wd in (str(tmp_path / "new"), str(tmp_path / "resumed")):
    if wd.endswith("resumed"):
      shutil.copytree(baseline, wd)
      shutil.rmtree(f"{wd}/checkpoints/12")
    before = _files(wd) if os.path.exists(wd) else None
    proc = subprocess.Popen([sys.executable, "-m", "launch.train", f"--workdir={wd}", *ARGS], cwd=REPO,
                            env=_env(cold), stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not os.path.exists(os.path.join(wd, workdir_lock.LOCK_NAME)):  # taken just before restore and compile
      assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-3000:]
      time.sleep(0.05)
    time.sleep(1.5)
    proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    err = proc.communicate(timeout=120)[1]
    took = time.monotonic() - sent
    last = _one_clean_line(subprocess.CompletedProcess(proc.args, proc.returncode, "", err), 3,
                           "during start-up, before the first update: nothing to save")
    assert "compiled in" not in err and took < 5, (took, err[-2000:])
    if before is None:
      assert not os.path.exists(wd) and "rerunning the same command starts the run" in last
    else:
      assert _files(wd) == before and f"{wd}/checkpoints/9 (update 9), is unchanged" in last
