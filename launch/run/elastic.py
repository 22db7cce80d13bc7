"""Elastic parallelism: a run continued at another num_envs (by hand, or by `scaling.schedule` at env-step
boundaries), and where the current num_envs took over (`Segment`).

A run is a sequence of segments, each at one num_envs. The newest checkpoint's host record holds the segment it was
saved in; `plan(config, workdir)` reads it before any program is built and returns the config this process runs
(num_envs from the schedule, else the config's) and the segment it continues or starts. Under a scaling rule the
minibatching and learning rate of the new segment follow the rule from the base (launch/config/resolve.py `_scale`).
The learning-rate anneal is over env steps: at a segment's start the multiplier is 1 - E0 / E_total (E0 env steps
done, E_total those the run will have done at its end at this num_envs: total_env_steps rounded down to whole
updates), then falls linearly per optimizer step to 0 at the run's last update (learner/optimizer.py, counted in
updates and steps within one, so it does not overflow). Without a rule
a change of num_envs is refused, saying which flag asks for it.
"""
from __future__ import annotations

import math
import os
from typing import Any

import ml_collections

from launch.checkpoint import reader
from launch.config import resolve as config_lib
from launch.config.schedule import Segment, autoscale_sizes, config_at, num_envs_at, parse_schedule
from launch.files import workdir as workdir_lib


def end_update(config: ml_collections.ConfigDict, segment: Segment, resolved: config_lib.Resolved) -> int:
  """The update after which this segment hands over to the schedule's next num_envs (or the run's last update)."""
  for steps, n in parse_schedule(config.scaling.schedule):
    if steps > segment.env_steps and n != segment.num_envs:
      return min(resolved.num_updates, segment.update + math.ceil((steps - segment.env_steps) / resolved.batch_size))
  return resolved.num_updates


def newest_host(workdir: str) -> dict[str, Any] | None:
  """The host record of the newest checkpoint step whose record passes its checks (launch/checkpoint/reader.py);
  None without one. Read-only: the restore that follows reports and moves aside what this skipped."""
  try:
    return reader.newest(os.path.join(workdir_lib.absolute(workdir), "checkpoints"), f"--workdir={workdir}",
                         arrays=False, quiet=True).host
  except (reader.NoCheckpoint, reader.NoReadableStep):
    return None


def saved_segment(host: dict[str, Any]) -> Segment:
  """The segment a step was saved in (a step written before segments were recorded: the run's first)."""
  if "segment" in host:
    return Segment.from_json(host["segment"])
  return Segment(num_envs=host["config"]["num_envs"])


def _env_steps(saved: dict[str, Any], segment: Segment, update: int) -> int:
  """Env steps after `update` of a segment run with the `saved` config."""
  return segment.env_steps + (update - segment.update) * saved["num_envs"] * saved["num_steps"]


def plan(config: ml_collections.ConfigDict, workdir: str) -> tuple[ml_collections.ConfigDict, Segment]:
  """The config this process runs and the segment it continues (from the newest checkpoint) or starts.

  Raises ConfigError when the checkpoint's num_envs differs from the one wanted and no scaling rule is set.
  """
  host = newest_host(workdir)
  if host is None or "config" not in host or "update" not in host:
    envs = num_envs_at(config, 0)
    return config_at(config, envs), Segment(num_envs=envs)
  segment = saved_segment(host)
  env_steps = _env_steps(host["config"], segment, host["update"])
  envs = num_envs_at(config, env_steps) if config.scaling.schedule else config.num_envs
  if config.autoscale.enabled and host.get("autoscale"):  # the size the run's controller chose (autoscale.py)
    envs = int(host["autoscale"]["num_envs"])
  if envs == segment.num_envs:
    return config_at(config, envs), segment
  if config.scaling.rule == "none":
    raise config_lib.ConfigError(f"cannot resume from {workdir}: config.num_envs={envs} does not match "
                                 f"{segment.num_envs} in the checkpoint; {config_lib.growth_hint(host['config'])}; "
                                 "or use a new --workdir")
  return config_at(config, envs), Segment(update=host["update"], env_steps=env_steps, num_envs=envs)



def check_schedule(config: ml_collections.ConfigDict, num_devices: int, num_processes: int = 1) -> None:
  """Before a scheduled or autoscaled run starts: it needs a scaling rule, and every num_envs it lists or may grow to
  must be a valid run."""
  schedule = parse_schedule(config.scaling.schedule) if config.scaling.schedule else []
  if schedule and config.scaling.rule == "none":
    raise config_lib.ConfigError("invalid config:\n  config.scaling.schedule needs a scaling rule to change num_envs "
                                 "(minibatching and learning rate follow it): add " +
                                 " ".join(config_lib.recipe_flags(config)) + " (the minibatch size and learning rate "
                                 f"at config.num_envs={config.num_envs}, held by the recipe at every num_envs)")
  for key, sizes in (("scaling.schedule", [n for _, n in schedule]), ("autoscale.max_num_envs",
                                                                         autoscale_sizes(config))):
    for envs in sizes:
      try:
        config_lib.resolve(config_at(config, envs), num_devices, planning=True, num_processes=num_processes)
      except config_lib.ConfigError as e:
        raise config_lib.ConfigError(f"config.{key}: at num_envs={envs}: {e}") from None
