"""Multi-host behaviour with several local processes joined by jax.distributed (gloo CPU collectives)."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from launch import local, trainer
from launch.configs import debug
from launch.sinks import read_jsonl
from sharding import distributed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEBUG_ARGS = ["--config=launch/configs/debug.py", "--config.mesh.data=-1", "--config.log_every=10"]


@pytest.fixture(scope="module")
def one_process_four_devices(tmp_path_factory):
  config = debug.get_config()
  config.mesh.data = 4
  config.log_every = 10
  return trainer.train_and_evaluate(config, str(tmp_path_factory.mktemp("p1d4")))


def _assert_matches(row, reference):
  assert row["update"] == reference["update"] == 10
  np.testing.assert_allclose(row["param_norm"], reference["param_norm"], rtol=1e-4)
  np.testing.assert_allclose(row["value_loss"], reference["value_loss"], rtol=1e-4)
  np.testing.assert_allclose(row["policy_loss"], reference["policy_loss"], rtol=1e-4, atol=1e-6)


def test_two_processes_match_one_process(one_process_four_devices, tmp_path):
  workdir = str(tmp_path / "mh")
  code = local.launch([f"--workdir={workdir}", *DEBUG_ARGS], num_processes=2, devices_per_process=2, grace_s=30)
  assert code == 0
  rows = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  assert len(rows) == 1  # only process 0 writes metrics
  _assert_matches(rows[0], one_process_four_devices)


def _slurm_env(i, job_id):
  env = local.process_env(devices_per_process=2)
  env.update(SLURM_JOB_ID=str(job_id), SLURM_STEP_NODELIST="localhost", SLURM_NTASKS="2", SLURM_PROCID=str(i),
             SLURM_LOCALID=str(i))
  return env


def test_slurm_environment_is_auto_detected(one_process_four_devices, tmp_path):
  """The SLURM path of launch/slurm.sbatch: no coordinator flags, everything from the scheduler's variables."""
  workdir = str(tmp_path / "slurm")
  job_id = os.getpid() % 4000 + 1  # jax derives the coordinator port from the job id
  procs = [subprocess.Popen([sys.executable, "-m", "launch.train", f"--workdir={workdir}", *DEBUG_ARGS],
                            cwd=REPO, env=_slurm_env(i, job_id), stderr=subprocess.PIPE, text=True) for i in (0, 1)]
  logs = [p.communicate(timeout=300)[1] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], logs[0][-2000:]
  assert "process 0 of 2 (slurm)" in logs[0] and "process 1 of 2 (slurm)" in logs[1]
  _assert_matches(read_jsonl(os.path.join(workdir, "metrics.jsonl"))[-1], one_process_four_devices)


def test_killed_process_stops_the_survivor(tmp_path):
  workdir = str(tmp_path / "kill")
  address = f"127.0.0.1:{local.free_port()}"
  env = local.process_env(devices_per_process=1)
  args = [sys.executable, "-m", "launch.train", f"--workdir={workdir}", "--config=launch/configs/debug.py",
          "--config.mesh.data=-1", "--config.log_every=1", "--config.total_env_steps=100000000",
          f"--coordinator_address={address}", "--num_processes=2"]
  procs = [subprocess.Popen(args + [f"--process_id={i}"], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
           for i in (0, 1)]
  try:
    metrics = os.path.join(workdir, "metrics.jsonl")
    deadline = time.monotonic() + 240
    while not (os.path.exists(metrics) and os.path.getsize(metrics) > 0):  # both processes are in the train loop
      assert time.monotonic() < deadline and procs[0].poll() is None, "run did not start"
      time.sleep(0.2)
    procs[1].send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    _, err = procs[0].communicate(timeout=90)
    took = time.monotonic() - killed_at
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  assert procs[0].returncode != 0
  assert took < 60, took
  assert "another task died" in err, err[-3000:]


def test_launch_scripts_parse():
  for script in ("launch/slurm.sbatch", "launch/tpu_pod.sh"):
    subprocess.run(["bash", "-n", script], cwd=REPO, check=True)


def test_partial_coordinator_flags_are_rejected():
  with pytest.raises(ValueError, match="must be given together"):
    distributed.initialize("127.0.0.1:1234", None, 0)
  assert distributed.initialize(None, None, None) is False  # a plain single process needs nothing
