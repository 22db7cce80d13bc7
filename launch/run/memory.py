"""Will a run's compiled programs fit in device memory? XLA's memory analysis per device, checked before any state
is allocated, so a run too large for the device stops with a message naming the knobs instead of failing mid-way.

  report = memory.analyse(progs)        # per program: arguments, outputs (aliased), temporaries, generated code
  memory.check_fits(progs, config)      # raises config_lib.ConfigError (exit 2) when it does not fit

The device's memory is `device.memory_stats()["bytes_limit"]` where the backend reports it (GPU, TPU), else the
host's available memory (CPU: MemAvailable in /proc/meminfo), which all CPU devices of the process share;
PPO_DEVICE_MEMORY_BYTES overrides it (tests fake a small device with it).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import ml_collections

from launch.config import resolve as config_lib

ENV_VAR = "PPO_DEVICE_MEMORY_BYTES"
GIB = 2**30


@dataclasses.dataclass(frozen=True)
class ProgramMemory:
  """One compiled program's buffers on one device, in bytes (compiled.memory_analysis())."""
  argument: int
  output: int
  alias: int  # outputs written into donated arguments: counted once
  temp: int
  code: int

  @property
  def needed(self) -> int:
    return self.argument + self.output - self.alias + self.temp + self.code


@dataclasses.dataclass(frozen=True)
class MemoryReport:
  programs: dict[str, ProgramMemory]
  per_device: int  # bytes one device needs while the run trains (see `analyse`)
  devices_per_pool: int  # devices of this process that draw on one pool (CPU: all of them share the host's)
  limit: int | None  # bytes in that pool (None: unknown)
  limit_source: str

  @property
  def needed(self) -> int:
    return self.per_device * self.devices_per_pool

  @property
  def fits(self) -> bool:
    return self.limit is None or self.needed <= self.limit

  def as_dict(self) -> dict[str, Any]:
    return {"programs": {k: dict(dataclasses.asdict(v), needed=v.needed) for k, v in self.programs.items()},
            "per_device_bytes": self.per_device, "devices_per_pool": self.devices_per_pool,
            "needed_bytes": self.needed, "limit_bytes": self.limit, "limit_source": self.limit_source,
            "fits": self.fits}

  def short(self) -> str:
    """For the start line: "memory 1.23 GiB of 20.00 GiB"."""
    return f"memory {gib(self.needed)}" + (f" of {gib(self.limit)}" if self.limit is not None else "")

  def summary(self) -> str:
    parts = ", ".join(f"{name} {gib(p.needed)} (arguments {gib(p.argument)}, outputs {gib(p.output)} of which "
                      f"{gib(p.alias)} donated, temporaries {gib(p.temp)}, code {gib(p.code)})"
                      for name, p in self.programs.items())
    pool = (f" x {self.devices_per_pool} devices sharing host memory = {gib(self.needed)}"
            if self.devices_per_pool > 1 else "")
    limit = f"{gib(self.limit)} ({self.limit_source})" if self.limit is not None else "unknown"
    return f"compiled programs per device: {parts}; needed {gib(self.per_device)} per device{pool}; limit {limit}"


def gib(n: int) -> str:
  return f"{n / GIB:.2f} GiB" if n >= GIB // 10 else f"{n / 2**20:.1f} MiB"


def program_memory(compiled) -> ProgramMemory | None:
  stats = compiled.memory_analysis()
  if stats is None:
    return None
  return ProgramMemory(argument=int(stats.argument_size_in_bytes), output=int(stats.output_size_in_bytes),
                       alias=int(stats.alias_size_in_bytes), temp=int(stats.temp_size_in_bytes),
                       code=int(stats.generated_code_size_in_bytes))


def device_limit(device: jax.Device) -> tuple[int | None, str]:
  """Bytes of memory `device` can use and where that figure comes from."""
  if os.environ.get(ENV_VAR):
    return int(os.environ[ENV_VAR]), ENV_VAR
  try:
    stats = device.memory_stats()
  except Exception:  # pylint: disable=broad-except  (backends without memory stats raise or return None)
    stats = None
  if stats and stats.get("bytes_limit"):
    return int(stats["bytes_limit"]), f"{device.platform} bytes_limit"
  if device.platform == "cpu":
    return _host_available(), "host memory available"
  return None, "not reported"


def _host_available() -> int | None:
  try:
    with open("/proc/meminfo", encoding="ascii") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  try:
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
  except (ValueError, OSError):
    return None


def analyse(progs) -> MemoryReport:
  """Memory per device of `progs` (launch/programs.Programs) as compiled.

  Fused: the update, SFL's re-scoring (before some updates: programs.SFLUpdate) and the evaluation (between updates)
  run one at a time, in the host's order, each on the state or part of it. So: the state once (the largest argument),
  every program's generated code (all are loaded), and the largest transient of any one program (its outputs not
  written into donated arguments, plus its temporaries). Staged (sync / overlap): the sum over the stages, an upper
  bound (in overlap they run at once and hold their batches), plus the evaluation's temporaries and code.
  """
  programs = {name: m for name, c in progs.compiled.items() if (m := program_memory(c)) is not None}
  if "update" in programs:
    alone = programs.values()
    per_device = (max(p.argument for p in alone) + sum(p.code for p in alone)
                  + max(p.output - p.alias + p.temp for p in alone))
  else:
    evaluate = programs.get("evaluate")
    per_device = sum(p.needed for name, p in programs.items() if name != "evaluate")
    if evaluate is not None:
      per_device += evaluate.temp + evaluate.code
  devices = {d for layout in (progs.layout, progs.actor_layout) for d in layout.mesh.devices.flat
             if d.process_index == jax.process_index()}
  device = min(devices, key=lambda d: d.id) if devices else jax.local_devices()[0]
  limit, source = device_limit(device)
  shared = len(devices) if device.platform == "cpu" else 1
  return MemoryReport(programs=programs, per_device=per_device, devices_per_pool=max(shared, 1), limit=limit,
                      limit_source=source)


def plan(config: ml_collections.ConfigDict) -> MemoryReport:
  """The report for `config` without running it: programs compiled from abstract shapes, no state allocated."""
  return analyse(planned_programs(config))


def planned_programs(config: ml_collections.ConfigDict):
  """`config`'s programs (launch/run/programs.Programs) compiled from abstract shapes, for this process's devices."""
  from launch.run import programs  # pylint: disable=import-outside-toplevel  (programs imports the world)
  resolved = config_lib.resolve(config, num_devices=jax.device_count(), planning=True,
                                num_processes=jax.process_count())
  return programs.build(config, resolved=resolved)


def per_transition(config: ml_collections.ConfigDict, num_devices: int | None = None) -> dict[str, Any]:
  """Bytes one transition (one env step of one env) takes in the update, from the config's shapes alone: what the
  compiled update holds per transition at its peak. The rollout packs each step as one float32 row
  (pipeline/batch_rows.py, pipeline/rollout.Trajectory: observation leaves, 32-bit integers as two columns, float
  ones two per column with obs_store=bfloat16; the action, discrete ones in one; log-prob, value, reward, done; the
  behaviour head with diagnostics on) and GAE writes the advantages and targets over reward and done in place, so
  the batch is held once. Beside it: during SGD the current minibatch's indices and their computation (about four
  int32 per minibatch sample, i.e. 16 / num_minibatches bytes per transition), or with diagnostics on afterwards the per-state KL and the value and
  target columns (three floats).
  `rollout_total` = that × num_envs × num_steps, and per device over `num_devices` (default: the mesh's data axis).
  Per env (the runner, one step's activations) and fixed costs (params, the reset pool, gradient chunks) are left
  out: at 1,048,576 envs they are a few percent (benchmarks/kinetix_memory.py measures the difference)."""
  import envs  # pylint: disable=import-outside-toplevel
  from learner import distributions  # pylint: disable=import-outside-toplevel
  from pipeline import batch_rows, rollout  # pylint: disable=import-outside-toplevel
  env = envs.make(config.env_name)
  dist = distributions.for_action_space(env.action_space)
  diagnostics = config.diagnostics.enabled

  def step():
    obs = jax.tree.map(lambda s: jax.numpy.zeros((1,) + s.shape, s.dtype), env.observation_spec)
    action = dist.sample(jax.random.PRNGKey(0), jax.numpy.zeros((1, dist.param_size)))
    scalar = jax.numpy.zeros((1,))
    return rollout.step_record(obs, action, scalar, scalar, scalar, scalar,
                               jax.numpy.zeros((1, dist.param_size)) if diagnostics else None, dist,
                               config.obs_store)

  row = 4 * batch_rows.width(jax.eval_shape(step))
  devices = num_devices or (jax.device_count() if config.mesh.data == -1 else config.mesh.data)
  minibatch_share = 16 / config_lib.resolve(config, num_devices=devices, planning=True).ppo.num_minibatches
  beside = max(12, minibatch_share) if diagnostics else minibatch_share
  per = row + beside
  total = per * config.num_envs * config.num_steps
  return {"packed_row_bytes": row, "beside_bytes": round(beside, 2), "per_transition_bytes": round(per, 2),
          "rollout_total_gib": total / GIB, "rollout_per_device_gib": total / GIB / devices, "devices": devices}


def check_fits(progs, config: ml_collections.ConfigDict) -> MemoryReport:
  """The report, or config_lib.ConfigError (exit 2) naming the memory needed and what to change when it won't fit."""
  report = analyse(progs)
  if report.fits:
    return report
  raise config_lib.ConfigError(
      f"this run does not fit in device memory: {report.summary()}.\n  It needs {gib(report.needed)} but "
      f"{gib(report.limit)} is available ({report.limit_source}). To fit, lower config.num_envs (now "
      f"{config.num_envs}) or config.num_steps (now {config.num_steps}): the rollout, advantages and packed batch "
      f"grow with num_envs x num_steps; lower config.sgd_chunk_size (now {config.sgd_chunk_size}): it sizes the "
      f"gradient's activations; or spread the envs over more devices (config.mesh.data, more processes).")
