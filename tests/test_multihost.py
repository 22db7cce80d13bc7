"""Multi-host behaviour with several local processes joined by jax.distributed (gloo CPU collectives): the same result
as one process, SLURM auto-detection (in a resume that skips a step one process cannot read), a killed process stopping
the survivor, and SIGTERM to one process stopping all of them at one update with an exact resume. Every multi-process
run is the same 2 x 2-device debug run, so after the first one its programs come from the compilation cache the module
shares.
"""
import glob
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from jax.experimental import multihost_utils

from launch import checkpoint, local
from launch.config import resolve as config_lib
from launch.run import preemption, programs, trainer
from launch.configs import debug
from pipeline import dataflow
from launch.report.metrics_file import read_jsonl
from sharding import distributed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 10 updates; rows every 2, saves every 3 (3, 6, 9 and the end 10; the newest 2 kept).
DEBUG_ARGS = ["--config=launch/configs/debug.py", "--config.mesh.data=-1", "--config.log_every=2",
              "--config.checkpoint_every=3"]
TIMING = ("wall_time", "sps", "compile_time", "first_update_time")  # differ between runs by nature


@pytest.fixture(scope="module")
def jax_cache(tmp_path_factory):
  return str(tmp_path_factory.mktemp("jax_cache"))


def _cache_env(jax_cache):
  return dict(JAX_COMPILATION_CACHE_DIR=jax_cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1", PYTHONFAULTHANDLER="1")


@pytest.fixture(scope="module")
def one_process_four_devices(tmp_path_factory):
  config = debug.get_config()
  config.mesh.data = 4
  config.log_every = 2
  return trainer.train_and_evaluate(config, str(tmp_path_factory.mktemp("p1d4")))


@pytest.fixture(scope="module")
def two_processes(jax_cache, tmp_path_factory):
  """The uninterrupted 2 processes x 2 devices run, started by launch/local.py."""
  workdir = str(tmp_path_factory.mktemp("mh") / "run")
  with pytest.MonkeyPatch.context() as mp:
    for key, value in _cache_env(jax_cache).items():
      mp.setenv(key, value)
    code = local.launch([f"--workdir={workdir}", *DEBUG_ARGS], num_processes=2, devices_per_process=2, grace_s=30)
  assert code == 0
  return workdir


def _rows(workdir):
  return [{k: v for k, v in r.items() if k not in TIMING} for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"))]


def _steps(workdir):
  return sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())


def _assert_matches(row, reference):
  assert row["update"] == reference["update"] == 10
  np.testing.assert_allclose(row["param_norm"], reference["param_norm"], rtol=1e-4)
  np.testing.assert_allclose(row["value_loss"], reference["value_loss"], rtol=1e-4)
  np.testing.assert_allclose(row["policy_loss"], reference["policy_loss"], rtol=1e-4, atol=1e-6)


def test_two_processes_match_one_process(one_process_four_devices, two_processes):
  rows = read_jsonl(os.path.join(two_processes, "metrics.jsonl"))
  assert [r["update"] for r in rows] == [2, 4, 6, 8, 10]  # once each: only process 0 writes metrics
  _assert_matches(rows[-1], one_process_four_devices)
  assert _steps(two_processes) == [9, 10]


def _slurm_env(i, job_id, jax_cache):
  env = local.process_env(devices_per_process=2)
  env.update(_cache_env(jax_cache))
  env.update(SLURM_JOB_ID=str(job_id), SLURM_STEP_NODELIST="localhost", SLURM_NTASKS="2", SLURM_PROCID=str(i),
             SLURM_LOCALID=str(i))
  return env


def _start_two(workdir, jax_cache, logs, pause=None, extra=()):
  """Both processes of one 2 x 2-device run, started directly so that each can be signalled alone."""
  address = f"127.0.0.1:{local.free_port()}"
  env = local.process_env(devices_per_process=2)
  env.update(_cache_env(jax_cache))
  env.pop("PPO_TEST_PAUSE_AT_UPDATE", None)
  if pause is not None:
    env["PPO_TEST_PAUSE_AT_UPDATE"] = str(pause)
  args = [sys.executable, "-m", "launch.train", f"--workdir={workdir}", *DEBUG_ARGS,
          f"--coordinator_address={address}", "--num_processes=2",
          "--verbosity=0", *extra]  # INFO logs: every process says where it resumed from (the console is process 0's)
  return [subprocess.Popen(args + [f"--process_id={i}"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                           stderr=open(logs[i], "w", encoding="utf-8")) for i in (0, 1)]


def _finish(procs, logs, timeout=150):
  """Waits for every process (killing all of them after `timeout` s); returns their exit codes and stderr."""
  deadline = time.monotonic() + timeout
  try:
    for p in procs:
      p.wait(timeout=max(deadline - time.monotonic(), 1))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  errs = []
  for path in logs:
    with open(path, encoding="utf-8") as f:
      errs.append(f.read())
  return [p.returncode for p in procs], errs


def _wait_until_paused(procs, logs, workdir, pause):
  """Until both processes are paused after update `pause`, in the train loop (PPO_TEST_PAUSE_AT_UPDATE)."""
  markers = [os.path.join(workdir, f"test_paused_at_{pause}_p{i}") for i in (0, 1)]
  deadline = time.monotonic() + 240
  while not all(os.path.exists(m) for m in markers):
    if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
      codes, errs = _finish(procs, logs, timeout=1)
      pytest.fail(f"run exited ({codes}) or timed out before update {pause}:\n{errs[0][-3000:]}\n{errs[1][-3000:]}")
    time.sleep(0.05)


def test_killed_process_stops_the_survivor(jax_cache, tmp_path):
  """SIGKILL to process 1 while both are in the train loop (paused after update 2, the test's hook): process 0 ends
  with an error within 60 s instead of waiting for its peer. The run is the module's 2 x 2-device debug run, so its
  programs come from the shared compilation cache."""
  workdir, pause = str(tmp_path / "kill"), 2
  logs = [str(tmp_path / f"p{i}.log") for i in (0, 1)]
  procs = _start_two(workdir, jax_cache, logs, pause=pause)
  _wait_until_paused(procs, logs, workdir, pause)
  procs[1].send_signal(signal.SIGKILL)
  killed_at = time.monotonic()
  codes, errs = _finish(procs, logs, timeout=90)
  took = time.monotonic() - killed_at
  assert codes[0] not in (0, 3), errs[0][-3000:]  # neither finished nor stopped on request
  assert took < 60, took
  assert "another task died" in errs[0], errs[0][-3000:]


def test_a_mesh_of_part_of_each_process_is_one_line_in_every_process(jax_cache, tmp_path):
  """2 processes x 2 devices with mesh.data=2: the mesh takes whole processes, so both exit 2 before compiling, with
  one line naming the key and how to use fewer devices."""
  logs = [str(tmp_path / f"p{i}.log") for i in (0, 1)]
  codes, errs = _finish(_start_two(str(tmp_path / "run"), jax_cache, logs, extra=["--config.mesh.data=2"]), logs,
                        timeout=90)
  assert codes == [2, 2], errs
  for err in errs:
    assert "Traceback" not in err, err[-3000:]
    assert ("config.mesh.data=2: must be -1 or all 4 devices with 2 processes: the mesh takes whole processes"
            in err.strip().splitlines()[-1]), err[-3000:]


def test_sigterm_to_one_process_stops_both_at_one_update_and_resumes_exactly(two_processes, jax_cache, tmp_path):
  """Acceptance 2: SIGTERM to process 1 only; both stop after update 7 (no save due there), save it together and exit
  3; the same command again resumes from 7 and ends with the uninterrupted run's metrics rows, every value ==."""
  workdir, pause = str(tmp_path / "run"), 7
  logs = [str(tmp_path / f"p{i}.log") for i in (0, 1)]
  procs = _start_two(workdir, jax_cache, logs, pause=pause)
  _wait_until_paused(procs, logs, workdir, pause)
  procs[1].send_signal(signal.SIGTERM)
  codes, errs = _finish(procs, logs)
  assert codes == [3, 3], f"{errs[0][-3000:]}\n{errs[1][-3000:]}"
  for err in errs:  # the same update on both, and the same (one, collective) checkpoint
    assert f"stopped on request after update {pause}; saved {workdir}/checkpoints/{pause}." in err, err[-3000:]
  assert _steps(workdir) == [6, pause] and not glob.glob(f"{workdir}/checkpoints/*tmp*")
  assert [r["update"] for r in _rows(workdir)] == [2, 4, 6]

  codes, errs = _finish(_start_two(workdir, jax_cache, logs, pause=pause), logs)  # the same command again
  assert codes == [0, 0], f"{errs[0][-3000:]}\n{errs[1][-3000:]}"
  for err in errs:
    assert f"resuming from {workdir}/checkpoints/{pause}" in err, err[-3000:]
  assert _rows(workdir) == _rows(two_processes)  # no row missing or repeated; every loss and param_norm ==
  assert _steps(workdir) == [9, 10]
  # Only process 0 writes metrics (above: each row once), TensorBoard (one event file per launch, not per process) and
  # the progress bar; the plot is written at the end (by process 0 alone: trainer.py's `if lead`).
  assert len(glob.glob(f"{workdir}/tensorboard/events.out.tfevents.*")) == 2
  assert "train: 100%" in errs[0] and "train:" not in errs[1]
  assert os.path.exists(f"{workdir}/learning_curve.png")


def test_slurm_processes_agree_on_the_step_they_restore(two_processes, jax_cache, tmp_path):
  """The SLURM path of launch/cluster/slurm.sbatch (no coordinator flags, everything from the scheduler's variables) resuming a
  copy of the uninterrupted run whose step 10 is unreadable by process 1 only (a chunk of its env rows cut short): both
  skip it, resume from step 9 and finish with the uninterrupted run's rows (which match one process's)."""
  workdir = str(tmp_path / "run")
  shutil.copytree(two_processes, workdir)
  chunk = f"{workdir}/checkpoints/10/arrays/runner.env_uint32/3.0"  # rows 6-7 of 8: process 1's second device
  with open(chunk, "r+b") as f:
    f.truncate(os.path.getsize(chunk) // 2)
  logs = [str(tmp_path / f"p{i}.log") for i in (0, 1)]
  job_id = os.getpid() % 4000 + 1  # jax derives the coordinator port from the job id
  procs = [subprocess.Popen([sys.executable, "-m", "launch.train", f"--workdir={workdir}", "--verbosity=0",
                             *DEBUG_ARGS], cwd=REPO, env=_slurm_env(i, job_id, jax_cache), stdout=subprocess.DEVNULL,
                            stderr=open(logs[i], "w", encoding="utf-8")) for i in (0, 1)]
  codes, errs = _finish(procs, logs, timeout=120)
  assert codes == [0, 0], f"{errs[0][-3000:]}\n{errs[1][-3000:]}"
  assert "process 0 of 2 (slurm)" in errs[0] and "process 1 of 2 (slurm)" in errs[1]
  for err in errs:
    assert f"checkpoint {workdir}/checkpoints/10 is unreadable" in err, err[-3000:]
    assert f"resuming from {workdir}/checkpoints/9" in err, err[-3000:]
  assert "unreadable by process [1]" in errs[0]
  assert [d.split("-")[0] for d in os.listdir(f"{workdir}/checkpoints_corrupt")] == ["10"]
  assert _rows(workdir) == _rows(two_processes) and _steps(workdir) == [9, 10]


class _SyncPoint:
  """JAX's preemption protocol as one host sees it (xla/tsl/.../preemption_sync_manager.cc): each call records its step
  id; a notice sets the sync point to the last recorded id + 1 (the max over hosts; one host here)."""

  def __init__(self):
    self.counter, self.sync, self.calls = 0, None, []

  def notice(self):
    self.sync = self.counter + 1

  def reached(self, step_id):
    self.calls.append(step_id)
    self.counter = step_id
    return step_id == self.sync


@pytest.fixture
def sync_point(monkeypatch):
  fake = _SyncPoint()
  monkeypatch.setattr(multihost_utils, "reached_preemption_sync_point", fake.reached)
  return fake


def test_preemption_step_ids_count_this_processes_updates(sync_point, monkeypatch, tmp_path):
  """A resumed run (here from update 40) whose notice arrives before its first update (all counters still 0) stops
  after that update; with update numbers as step ids the sync point 1 would never be reached."""
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: True)
  stop = preemption.StopRequest(str(tmp_path))
  sync_point.notice()
  assert stop.should_stop(41) and sync_point.calls == [1]
  stop.close()
  stop = preemption.StopRequest(str(tmp_path))  # and later on: the stop is after the next update
  sync_point.sync = None
  assert not any(stop.should_stop(u) for u in (41, 42, 43))
  sync_point.notice()
  assert stop.should_stop(44) and sync_point.calls[-4:] == [1, 2, 3, 4]
  stop.close()


def test_sigint_is_passed_on_as_sigterm_with_several_processes(monkeypatch, tmp_path):
  """JAX's preemption service catches only SIGTERM (in C++); a Ctrl-C must reach it as SIGTERM, once."""
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: True)
  received = []
  previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))  # stands in for JAX's
  before = signal.getsignal(signal.SIGINT)
  try:
    stop = preemption.StopRequest(str(tmp_path))
    os.kill(os.getpid(), signal.SIGINT)
    deadline = time.monotonic() + 10
    while not received and time.monotonic() < deadline:  # Python runs handlers between bytecodes of the main thread
      time.sleep(0.01)
    assert received == [signal.SIGTERM]
    assert signal.getsignal(signal.SIGINT) is before  # a second Ctrl-C interrupts at once
    stop.close()
  finally:
    signal.signal(signal.SIGTERM, previous)
    signal.signal(signal.SIGINT, before)


def test_orbax_never_asks_the_preemption_sync_point(sync_point, tmp_path):
  """Orbax asks it at each save and again from its finalize thread with the saved step; that would set this host's
  protocol counter back behind the loop. Only launch/run/preemption.py may ask."""
  config = debug.get_config()
  state = programs.build(config, compile_update=False).init(jax.random.PRNGKey(0))
  ckpts = checkpoint.RunCheckpoints(str(tmp_path), config)
  assert ckpts.maybe_save(dataflow.Snapshot(state=state), 3, [], [], 0.0, force=True)
  ckpts.close()
  assert os.path.isdir(ckpts.step_path(3)) and sync_point.calls == []


def test_launch_scripts_parse():
  for script in ("launch/cluster/slurm.sbatch", "launch/cluster/tpu_pod.sh"):
    subprocess.run(["bash", "-n", script], cwd=REPO, check=True)


def test_partial_coordinator_flags_are_rejected():
  with pytest.raises(ValueError, match="must be given together"):
    distributed.initialize("127.0.0.1:1234", None, 0)
  assert distributed.initialize(None, None, None) is False  # a plain single process needs nothing
