"""Config validation and derived values, in one place.

`resolve(config, num_devices)` checks every key before anything compiles and returns the derived settings
(batch and minibatch sizes, number of updates). A bad value raises one ConfigError that names each offending key and
the rule it breaks; the launcher prints it without a traceback.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

from envs import registry
from launch.configs import default as default_config
from learner import networks
from pipeline.iteration import PPOSettings


class ConfigError(ValueError):
  """A user mistake in the config; the message names the key and the rule."""


@dataclasses.dataclass(frozen=True)
class Resolved:
  """Everything derived from a config: the algorithm's settings and the run's length."""
  ppo: PPOSettings
  batch_size: int  # env steps per update
  minibatch_size: int
  num_updates: int
  total_gradient_steps: int  # updates × epochs × minibatches, for the learning-rate anneal

  @property
  def env_steps(self) -> int:
    return self.num_updates * self.batch_size


def _flat_keys(cfg: ml_collections.ConfigDict, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in cfg.items():
    if isinstance(v, ml_collections.ConfigDict):
      out.update(_flat_keys(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def check(config: ml_collections.ConfigDict, num_devices: int) -> list[str]:
  """Returns one message per broken rule (empty if the config is valid)."""
  errors: list[str] = []
  flat = _flat_keys(config)
  schema = _flat_keys(default_config.get_config())
  for key in sorted(set(flat) - set(schema)):
    errors.append(f"config.{key}: unknown key (known keys are those of launch/configs/default.py)")
  for key in sorted(set(schema) - set(flat)):
    errors.append(f"config.{key}: missing (start configs from launch/configs/default.get_config())")
  if errors:
    return errors

  def err(key, rule):
    errors.append(f"config.{key}={flat[key]!r}: {rule}")

  for key in ("num_envs", "num_steps", "total_env_steps", "update_epochs", "num_minibatches", "log_every",
              "eval_every", "eval_episodes"):
    if not _is_int(flat[key]) or flat[key] <= 0:
      err(key, "must be a positive integer")
  for key in ("learning_rate", "clip_eps", "max_grad_norm"):
    if not _is_number(flat[key]) or flat[key] <= 0:
      err(key, "must be a positive number")
  for key in ("ent_coef", "vf_coef"):
    if not _is_number(flat[key]) or flat[key] < 0:
      err(key, "must be a non-negative number")
  for key in ("gamma", "gae_lambda"):
    if not _is_number(flat[key]) or not 0 <= flat[key] <= 1:
      err(key, "must be in [0, 1]")
  if not _is_int(flat["seed"]):
    err("seed", "must be an integer")
  if not isinstance(flat["anneal_lr"], bool):
    err("anneal_lr", "must be True or False")
  if not isinstance(flat["obs_norm"], bool):
    err("obs_norm", "must be True or False")
  if not _is_int(flat["reset_pool.size"]) or flat["reset_pool.size"] < 0:
    err("reset_pool.size", "must be a non-negative integer (0 turns the pool off)")
  if not _is_int(flat["reset_pool.refresh"]) or flat["reset_pool.refresh"] <= 0:
    err("reset_pool.refresh", "must be a positive integer")
  elif _is_int(flat["reset_pool.size"]) and flat["reset_pool.size"] > 0 and (
      flat["reset_pool.size"] % flat["reset_pool.refresh"]):
    err("reset_pool.refresh", f"must divide reset_pool.size={flat['reset_pool.size']}")
  if not isinstance(flat["network.shared_trunk"], bool):
    err("network.shared_trunk", "must be True or False")
  sizes = flat["network.hidden_sizes"]
  if not isinstance(sizes, (tuple, list)) or not sizes or not all(_is_int(s) and s > 0 for s in sizes):
    err("network.hidden_sizes", "must be a non-empty sequence of positive integers, e.g. (64, 64)")
  if flat["network.activation"] not in networks.ACTIVATIONS:
    err("network.activation", f"must be one of {sorted(networks.ACTIVATIONS)}")
  data = flat["mesh.data"]
  if not _is_int(data) or not (data == -1 or 1 <= data <= num_devices):
    err("mesh.data", f"must be -1 (all devices) or between 1 and the {num_devices} visible devices")
  try:
    registry.make(flat["env_name"])
  except (registry.UnknownEnvError, ImportError) as e:
    err("env_name", str(e))
  if errors:  # the divisibility rules below assume the basic types are right
    return errors

  shards = num_devices if data == -1 else data
  batch_size = flat["num_envs"] * flat["num_steps"]
  if flat["num_envs"] % shards:
    err("num_envs", f"must be divisible by the {shards} devices of the mesh's data axis (mesh.data)")
  if batch_size % flat["num_minibatches"]:
    errors.append(f"config.num_minibatches={flat['num_minibatches']}: must divide the batch "
                  f"num_envs * num_steps = {batch_size}")
  elif (batch_size // flat["num_minibatches"]) % shards:
    errors.append(f"config.num_minibatches={flat['num_minibatches']}: the minibatch size "
                  f"{batch_size // flat['num_minibatches']} must be divisible by the {shards} devices of the data axis")
  if flat["total_env_steps"] < batch_size:
    err("total_env_steps", f"must be at least one batch (num_envs * num_steps = {batch_size})")
  return errors


def resolve(config: ml_collections.ConfigDict, num_devices: int) -> Resolved:
  """Validates `config` for `num_devices` visible devices and derives the run's sizes. Raises ConfigError."""
  errors = check(config, num_devices)
  if errors:
    raise ConfigError("invalid config:\n  " + "\n  ".join(errors))
  batch_size = config.num_envs * config.num_steps
  num_updates = config.total_env_steps // batch_size
  ppo = PPOSettings(num_envs=config.num_envs, num_steps=config.num_steps, update_epochs=config.update_epochs,
                    num_minibatches=config.num_minibatches, gamma=float(config.gamma),
                    gae_lambda=float(config.gae_lambda), clip_eps=float(config.clip_eps),
                    vf_coef=float(config.vf_coef), ent_coef=float(config.ent_coef), obs_norm=config.obs_norm,
                    reset_pool_size=config.reset_pool.size, reset_pool_refresh=config.reset_pool.refresh)
  return Resolved(ppo=ppo, batch_size=batch_size, minibatch_size=batch_size // config.num_minibatches,
                  num_updates=num_updates,
                  total_gradient_steps=num_updates * config.update_epochs * config.num_minibatches)


def unknown_override_keys(args: list[str]) -> list[str]:
  """The `--config.KEY=VALUE` command-line overrides whose KEY is not in the schema."""
  schema = _flat_keys(default_config.get_config())
  prefixes = {k.rsplit(".", i)[0] for k in schema for i in range(k.count(".") + 1)}
  unknown = []
  for arg in args:
    if arg.startswith("--config."):
      key = arg[len("--config."):].split("=", 1)[0]
      if key not in prefixes:
        unknown.append(key)
  return unknown


def describe(config: ml_collections.ConfigDict, num_devices: int) -> dict[str, Any]:
  """The fully resolved config as plain JSON-able data: every key plus the derived values."""
  resolved = resolve(config, num_devices)
  out = config.to_dict()
  out["network"]["hidden_sizes"] = list(out["network"]["hidden_sizes"])
  out["derived"] = {
      "batch_size": resolved.batch_size,
      "minibatch_size": resolved.minibatch_size,
      "num_minibatches": resolved.ppo.num_minibatches,
      "num_updates": resolved.num_updates,
      "env_steps": resolved.env_steps,
      "total_gradient_steps": resolved.total_gradient_steps,
      "num_devices": num_devices,
  }
  return out
