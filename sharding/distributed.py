"""JAX's multi-controller runtime: initialise `jax.distributed` from flags or by auto-detection.

One process needs nothing. Several processes (hosts) either pass --coordinator_address/--num_processes/--process_id,
or run under a scheduler jax.distributed detects by itself (SLURM, Cloud TPU pods, Open MPI). On CPU the cross-process
collectives use gloo. Every process then sees the global device list; each creates and steps only the envs that live
on its own devices (the jitted update is SPMD over the global mesh).
"""
from __future__ import annotations

import os
import threading

import jax
from absl import logging

# How long peers may go silent before the runtime declares them dead and stops the survivors (seconds). JAX's default
# is 100 s; a dead host should end the job quickly so the scheduler can requeue it.
HEARTBEAT_TIMEOUT_S = int(os.environ.get("PPO_HEARTBEAT_TIMEOUT_S", "20"))
INIT_TIMEOUT_S = int(os.environ.get("PPO_INIT_TIMEOUT_S", "120"))

EXIT_NEVER_JOINED = 2  # launch.train's exit code for a start that cannot go on (docs/checkpoints.md, exit codes)

_SLURM_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")


def detected_cluster() -> str | None:
  """The scheduler whose environment would make this a multi-process run, if any."""
  if all(v in os.environ for v in _SLURM_VARS) and int(os.environ["SLURM_NTASKS"]) > 1:
    return "slurm"
  if os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") >= 1 or os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"):
    return "tpu"
  if int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
    return "ompi"
  return None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
  """Starts the multi-controller runtime when this is one process of several. Returns True if it did.

  Must run before any other JAX call. Explicit arguments win; otherwise the cluster is auto-detected.
  """
  explicit = coordinator_address is not None or num_processes is not None or process_id is not None
  if explicit and None in (coordinator_address, num_processes, process_id):
    raise ValueError("--coordinator_address, --num_processes and --process_id must be given together")
  if explicit and num_processes == 1:
    return False
  cluster = None if explicit else detected_cluster()
  if not explicit and cluster is None:
    return False
  if _platform_is_cpu():
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  kwargs = dict(initialization_timeout=INIT_TIMEOUT_S, heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S)
  joined = threading.Event()
  threading.Thread(target=_never_joined, args=(joined, coordinator_address, num_processes, process_id),
                   name="join-watchdog", daemon=True).start()
  try:
    if explicit:
      jax.distributed.initialize(coordinator_address, num_processes, process_id, **kwargs)
    else:
      # On CPU there is no per-process accelerator to pin; let every process use all its (virtual) CPU devices.
      local_ids = list(range(_cpu_device_count())) if _platform_is_cpu() else None
      jax.distributed.initialize(local_device_ids=local_ids, **kwargs)
  finally:
    joined.set()
  logging.info("jax.distributed: process %d of %d (%s), %d local / %d global devices", jax.process_index(),
               jax.process_count(), cluster or "flags", jax.local_device_count(), jax.device_count())
  return True


def _never_joined(joined: threading.Event, address: str | None, num_processes: int | None,
                  process_id: int | None) -> None:
  """Ends the process with one line if the processes have not all registered in time. (The runtime would abort with
  a C++ stack trace blaming "another task died", a little later.)"""
  if joined.wait(INIT_TIMEOUT_S):
    return
  who = f"process {process_id} of {num_processes}" if process_id is not None else "this process"
  line = (f"error: {who}: not every process registered with the coordinator at {address or 'the detected address'} "
          f"within PPO_INIT_TIMEOUT_S={INIT_TIMEOUT_S} s: a peer never joined (not started, or started with another "
          f"--coordinator_address or --num_processes). Start all processes with the same flags, or raise "
          f"PPO_INIT_TIMEOUT_S if they start slowly.\n")
  os.write(2, line.encode())
  os._exit(EXIT_NEVER_JOINED)  # pylint: disable=protected-access  (the main thread is blocked in the runtime)


# How long a process waits at a barrier for the slowest peer (seconds): compilation can take minutes at scale and
# hosts finish it at different times.
BARRIER_TIMEOUT_S = int(os.environ.get("PPO_BARRIER_TIMEOUT_S", "1800"))


def barrier(name: str) -> None:
  """Waits until every process reaches `name` (a no-op with one process), through the coordination service's key-value
  store, not a device collective. On CPU the first gloo collective sets up its connections with a fixed 30 s
  timeout, so processes that finish compiling further apart than that fail there; meeting here first keeps them
  together."""
  if jax.process_count() == 1:
    return
  from jax._src import distributed as jax_distributed  # pylint: disable=import-outside-toplevel
  client = jax_distributed.global_state.client
  if client is not None:
    client.wait_at_barrier(f"ppo_{name}", BARRIER_TIMEOUT_S * 1000)


def all_processes_agree(flag: bool) -> bool:
  """Whether `flag` holds on every process (one device collective; with one process, `flag` itself). Each process
  must call it at the same point of its program."""
  if jax.process_count() == 1:
    return bool(flag)
  import numpy as np  # pylint: disable=import-outside-toplevel
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return bool(np.all(multihost_utils.process_allgather(np.asarray(bool(flag)))))


def _platform_is_cpu() -> bool:
  platforms = os.environ.get("JAX_PLATFORMS", "") or os.environ.get("JAX_PLATFORM_NAME", "")
  if platforms:
    return platforms.split(",")[0].strip() == "cpu"
  # Without an explicit platform, look for accelerator plugins without initialising a backend.
  import importlib.util  # pylint: disable=import-outside-toplevel
  return not any(importlib.util.find_spec(m) for m in ("jax_cuda12_plugin", "jax_cuda13_plugin", "libtpu",
                                                       "jax_rocm60_plugin"))


def _cpu_device_count() -> int:
  flags = os.environ.get("XLA_FLAGS", "")
  for tok in flags.split():
    if tok.startswith("--xla_force_host_platform_device_count="):
      return int(tok.split("=", 1)[1])
  return 1
