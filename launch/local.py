"""Local multi-process launcher: K processes of `launch.train` on 127.0.0.1, for testing and debugging multi-host.

  python -m launch.local --num_processes=2 --devices_per_process=2 -- --workdir=/tmp/mh --config.num_envs=64

Each process gets `devices_per_process` virtual CPU devices and joins one jax.distributed run through a coordinator on
a free local port. SIGTERM/SIGINT to the launcher is forwarded to every process. The launcher exits with the first
non-zero exit code of its processes (0 if all succeed); when one process fails the others are given
`--grace_s` seconds to exit on their own (the runtime stops them) before they are killed.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_integer("num_processes", 2, "Processes to start.")
flags.DEFINE_integer("devices_per_process", 1, "Virtual CPU devices per process.")
flags.DEFINE_float("grace_s", 60.0, "Seconds the others get to exit after one process fails, before being killed.")


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def process_env(devices_per_process: int) -> dict[str, str]:
  env = dict(os.environ)
  xla = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
  env["XLA_FLAGS"] = " ".join(xla + [f"--xla_force_host_platform_device_count={devices_per_process}"])
  env["JAX_PLATFORMS"] = "cpu"
  return env


def launch(train_args: list[str], num_processes: int, devices_per_process: int, grace_s: float) -> int:
  address = f"127.0.0.1:{free_port()}"
  env = process_env(devices_per_process)
  procs = [
      subprocess.Popen([sys.executable, "-m", "launch.train", *train_args, f"--coordinator_address={address}",
                        f"--num_processes={num_processes}", f"--process_id={i}"], env=env)
      for i in range(num_processes)
  ]

  def forward(signum, _frame):
    for p in procs:
      if p.poll() is None:
        p.send_signal(signum)

  signal.signal(signal.SIGTERM, forward)
  signal.signal(signal.SIGINT, forward)
  failed_at = None
  while any(p.poll() is None for p in procs):
    if failed_at is None and any(p.returncode not in (None, 0) for p in procs):
      failed_at = time.monotonic()
    if failed_at is not None and time.monotonic() - failed_at > grace_s:
      for p in procs:
        if p.poll() is None:
          p.kill()
    time.sleep(0.2)
  codes = [p.returncode for p in procs]
  return next((c for c in codes if c != 0), 0)


def main(argv):
  sys.exit(launch(argv[1:], FLAGS.num_processes, FLAGS.devices_per_process, FLAGS.grace_s))


if __name__ == "__main__":
  app.run(main)
