"""`scaling.schedule` and segments: a run as a sequence of segments, each at one num_envs.

`Segment` says where the current num_envs took over (saved in every checkpoint's host record); the schedule
('ENV_STEPS:NUM_ENVS,...') says which num_envs runs from which env step. Reading a run's segment from its checkpoints
is launch/run/elastic.py's.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections


@dataclasses.dataclass(frozen=True)
class Segment:
  """Where the run's current num_envs began: the counts before its first update."""
  update: int = 0  # updates done before
  env_steps: int = 0  # env steps done before
  num_envs: int = 0

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, data: dict[str, Any]) -> Segment:
    return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})  # records may hold more (grad_steps)


def parse_schedule(text: str) -> list[tuple[int, int]]:
  """'0:2048,2e9:65536' → [(0, 2048), (2000000000, 65536)] (env steps → num_envs, increasing env steps)."""
  out = []
  for part in (p.strip() for p in text.split(",") if p.strip()):
    steps, envs = part.split(":")
    steps_f, envs_f = float(steps), float(envs)
    if steps_f != int(steps_f) or envs_f != int(envs_f) or steps_f < 0 or envs_f < 1:
      raise ValueError(part)
    out.append((int(steps_f), int(envs_f)))
  if [s for s, _ in out] != sorted({s for s, _ in out}):
    raise ValueError("env steps must increase")
  return out


def schedule_ok(text: Any) -> bool:
  if not isinstance(text, str):
    return False
  try:
    parse_schedule(text)
  except ValueError:
    return False
  return True


def num_envs_at(config: ml_collections.ConfigDict, env_steps: int) -> int:
  """num_envs from env step `env_steps` on: the schedule's last entry at or before it, else config.num_envs."""
  envs = config.num_envs
  for steps, n in parse_schedule(config.scaling.schedule):
    if steps <= env_steps:
      envs = n
  return envs


def autoscale_sizes(config: ml_collections.ConfigDict) -> list[int]:
  """The num_envs autoscale may grow a run to, in order (none when it is off)."""
  sizes, n = [], config.num_envs
  if config.autoscale.enabled:
    while n < config.autoscale.max_num_envs:
      n = min(n * config.autoscale.factor, config.autoscale.max_num_envs)
      sizes.append(n)
  return sizes


def config_at(config: ml_collections.ConfigDict, num_envs: int) -> ml_collections.ConfigDict:
  """The config this segment runs: `config` itself, or a copy at another num_envs (the caller's is not changed)."""
  if num_envs == config.num_envs:
    return config
  out = ml_collections.ConfigDict(config.to_dict())
  out.num_envs = num_envs
  return out
