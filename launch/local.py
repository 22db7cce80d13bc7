"""Local multi-process launcher: K processes of `launch.train` on 127.0.0.1, for testing and debugging multi-host.

  python -m launch.local --num_processes=2 --devices_per_process=2 -- --workdir=/tmp/mh --config.num_envs=64

Each process gets `devices_per_process` virtual CPU devices and joins one jax.distributed run through a coordinator on
a free local port. SIGTERM/SIGINT to the launcher is forwarded to every process. The launcher exits with the first
non-zero exit code of its processes (0 if all succeed; a process killed by signal N counts as 128 + N, as in a
shell); when one process fails the others are given `--grace_s` seconds to exit on their own (the runtime stops them)
before they are killed, and the launcher's last line names the process that failed first, its exit code's meaning and
what to do. Bad flags of the launcher: one line, exit code 2.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

from absl import app, flags

from launch.report import cli

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
  failed_at, first = None, None
  while any(p.poll() is None for p in procs):
    if failed_at is None:
      first = next((i for i, p in enumerate(procs) if p.returncode not in (None, 0)), None)
      failed_at = None if first is None else time.monotonic()
    if failed_at is not None and time.monotonic() - failed_at > grace_s:
      for p in procs:
        if p.poll() is None:
          p.kill()
    time.sleep(0.2)
  codes = [shell_code(p.returncode) for p in procs]
  if first is None:
    first = next((i for i, c in enumerate(codes) if c != 0), None)
  if first is None:
    return 0
  if any(c != EXIT_PREEMPTED for c in codes):  # a stop on request: each process has said so itself
    print(f"error: {summary(codes, first)}", file=sys.stderr)
  return codes[first]


EXIT_PREEMPTED = 3
_MEANINGS = {
    1: "it crashed; its traceback is above (a bug: please report it with that output)",
    2: "invalid config, flags or workdir; fix what its message above says and rerun",
    3: "it stopped on request after saving a checkpoint; rerun the same command to resume",
    4: "its loss or params became non-finite; its message above names the last good checkpoint",
    130: "a second SIGINT stopped it without saving the current update; rerun the same command to resume",
    134: "JAX's runtime stopped it because another process died; rerun the same command to resume",
    143: "a second SIGTERM stopped it without saving the current update; rerun the same command to resume",
}


def shell_code(returncode: int) -> int:
  """A process's exit code as a shell reports it (killed by signal N: 128 + N)."""
  return 128 - returncode if returncode < 0 else returncode


def summary(codes: list[int], first: int) -> str:
  """One line: which process failed first, what its code means and what to do, and the others' codes."""
  code = codes[first]
  meaning = _MEANINGS.get(code)
  if meaning is None and code > 128:
    name = signal.Signals(code - 128).name if code - 128 in signal.valid_signals() else f"signal {code - 128}"
    meaning = (f"it was killed by {name}" + (" (often: the machine ran out of memory)" if name == "SIGKILL" else "") +
               "; rerun the same command to resume from the newest checkpoint")
  others = ", ".join(f"process {i}: {c}" for i, c in enumerate(codes) if i != first)
  return (f"process {first} of {len(codes)} failed first with exit code {code}: "
          f"{meaning or 'see its output above'} (the others: {others})")


def main(argv):
  sys.exit(launch(argv[1:], FLAGS.num_processes, FLAGS.devices_per_process, FLAGS.grace_s))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.flags_parser)
