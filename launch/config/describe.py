"""What the command line shows of a config: overrides of keys the schema lacks, and the resolved config as data
(`--dry_run`, `--describe_config`)."""
from __future__ import annotations

from typing import Any

import ml_collections

from launch.config.resolve import resolve
from launch.config.schema import SCHEMA


def unknown_override_keys(args: list[str]) -> list[str]:
  """The `--config.KEY=VALUE` command-line overrides whose KEY is not in the schema."""
  prefixes = {k.rsplit(".", i)[0] for k in SCHEMA.names() for i in range(k.count(".") + 1)}
  unknown = []
  for arg in args:
    if arg.startswith("--config."):
      key = arg[len("--config."):].split("=", 1)[0]
      if key not in prefixes:
        unknown.append(key)
  return unknown


def describe(config: ml_collections.ConfigDict, num_devices: int, num_processes: int = 1) -> dict[str, Any]:
  """The fully resolved config as plain JSON-able data: every key plus the derived values."""
  resolved = resolve(config, num_devices, planning=True, num_processes=num_processes)
  out = config.to_dict()
  out["network"]["hidden_sizes"] = list(out["network"]["hidden_sizes"])
  out["derived"] = {
      "batch_size": resolved.batch_size,
      "minibatch_size": resolved.minibatch_size,
      "sgd_chunk_size": resolved.ppo.sgd_chunk_size,
      "num_minibatches": resolved.ppo.num_minibatches,
      "learning_rate": resolved.learning_rate,
      "ewma_decay": resolved.ppo.ewma_decay,
      "num_updates": resolved.num_updates,
      "env_steps": resolved.env_steps,
      "total_gradient_steps": resolved.total_gradient_steps,
      "max_policy_lag": resolved.max_policy_lag,
      "num_devices": num_devices,
      "num_processes": num_processes,
  }
  if resolved.num_updates == 0:  # waived for planning; a real run rejects it
    out["warnings"] = [f"config.total_env_steps={config.total_env_steps} is less than one batch "
                       f"({resolved.batch_size}): a run with this config is rejected; raise total_env_steps"]
  return out
