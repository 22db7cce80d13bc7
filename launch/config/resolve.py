"""Config validation and derived values, in one place.

`resolve(config, num_devices)` checks every key (its own rule from launch/config/schema.py, then the rules that
relate keys, devices and processes) before anything compiles and returns the derived settings
(batch and minibatch sizes, number of updates, the learning rate after the scaling rule). A bad value raises one
ConfigError that names each offending key and the rule it breaks; the launcher prints it without a traceback.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import ml_collections

from envs import registry
from launch.config import rules as config_rules
from launch.config.schema import SCHEMA
from learner import ewma, outer_step
from pipeline import permutation, sfl
from pipeline.iteration import PPOSettings


MAX_INDEX = permutation.MAX_SIZE  # int32: the permutation's and gathers' sample indices, the update counter


class ConfigError(ValueError):
  """A user mistake in the config; the message names the key and the rule."""


@dataclasses.dataclass(frozen=True)
class Scaled:
  """Minibatching and step size at the run's num_envs, after `scaling.rule`."""
  num_minibatches: int
  minibatch_size: int
  learning_rate: float


@dataclasses.dataclass(frozen=True)
class Resolved:
  """Everything derived from a config: the algorithm's settings and the run's length."""
  ppo: PPOSettings
  batch_size: int  # env steps per update
  minibatch_size: int
  learning_rate: float  # after scaling.rule (the config's own value at scaling.base_num_envs)
  num_updates: int
  total_gradient_steps: int  # this segment's updates × epochs × minibatches (shown by --dry_run; may pass 2^31)
  max_policy_lag: int  # params versions the actors may trail the learner by (0 unless pipeline.mode=overlap)
  # Where this num_envs took over (launch/run/elastic.py Segment; 0 / 1.0 for a run at one num_envs): the anneal
  # runs from learning_rate * lr_fraction at the first optimizer step of update first_update to 0 at the end of
  # update num_updates (learner/optimizer.py; total_gradient_steps counts this segment's steps only).
  first_update: int = 0
  first_env_steps: int = 0
  lr_fraction: float = 1.0

  def env_steps_at(self, update: int) -> int:
    return self.first_env_steps + (update - self.first_update) * self.batch_size

  @property
  def env_steps(self) -> int:
    return self.env_steps_at(self.num_updates)


def flat_keys(cfg: ml_collections.ConfigDict, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in cfg.items():
    if isinstance(v, ml_collections.ConfigDict):
      out.update(flat_keys(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def check(config: ml_collections.ConfigDict, num_devices: int, planning: bool = False,
          num_processes: int = 1) -> list[str]:
  """Returns one message per broken rule (empty if the config is valid).

  Each key's own rule comes from launch/config/schema.py; the rules relating several keys, the devices
  (`num_devices` visible) or the processes (`num_processes`) are here. `planning` (--dry_run) waives the rule that
  the run is at least one batch long, so sizes can be looked up for a num_envs without also raising total_env_steps
  (`describe` reports it as a warning instead).
  """
  errors: list[str] = []
  flat = flat_keys(config)
  schema = SCHEMA.names()
  for key in sorted(set(flat) - set(schema)):
    errors.append(f"config.{key}: unknown key (known keys are those of launch/configs/default.py)")
  for key in sorted(set(schema) - set(flat)):
    errors.append(f"config.{key}: missing (start configs from launch/configs/default.get_config())")
  if errors:
    return errors

  def err(key, rule):
    errors.append(f"config.{key}={flat[key]!r}: {rule}")

  invalid = set()
  for key in SCHEMA:  # each key's own rule (launch/config/schema.py)
    message = key.rule(flat[key.name])
    if message:
      err(key.name, message)
      invalid.add(key.name)

  def valid(*keys):  # the rules below relate several keys (or the devices); each needs its keys' own rules to hold
    return not invalid.intersection(keys)

  # Exactly one of num_minibatches / minibatch_size is set (> 0); the other is derived.
  if valid("num_minibatches", "minibatch_size"):
    if flat["num_minibatches"] == 0 and flat["minibatch_size"] == 0:
      err("num_minibatches", SCHEMA["num_minibatches"].rule.message)
    elif flat["num_minibatches"] > 0 and flat["minibatch_size"] > 0:
      err("minibatch_size", "exactly one of num_minibatches / minibatch_size may be set (the other is derived); "
          "set the other to 0")
  if valid("reset_pool.size", "reset_pool.refresh") and flat["reset_pool.size"] % flat["reset_pool.refresh"]:
    err("reset_pool.refresh", f"must divide reset_pool.size={flat['reset_pool.size']}")
  if valid("mesh.data") and flat["mesh.data"] > num_devices:
    err("mesh.data", f"must be -1 (all devices) or between 1 and the {num_devices} visible devices")
  elif valid("mesh.data") and num_processes > 1 and flat["mesh.data"] not in (-1, num_devices):
    err("mesh.data", f"must be -1 or all {num_devices} devices with {num_processes} processes: the mesh takes whole "
        "processes (to use fewer devices, start fewer processes or give each fewer: CUDA_VISIBLE_DEVICES, "
        "TPU_VISIBLE_CHIPS)")
  if valid("sticky_actions", "eval.solve_levels") and flat["sticky_actions"] and flat["eval.solve_levels"]:
    err("sticky_actions", "solve rates (eval.solve_levels) play kinetix-env's levels as they ship, without sticky "
        "actions: set one of the two")
  mode, actor_devices = flat["pipeline.mode"], flat["pipeline.actor_devices"]
  if valid("pipeline.max_policy_lag") and mode == "overlap" and flat["pipeline.max_policy_lag"] < 1:
    err("pipeline.max_policy_lag", SCHEMA["pipeline.max_policy_lag"].rule.message)
  if valid("pipeline.actor_devices") and actor_devices and mode == "fused":
    err("pipeline.actor_devices", "separate actor devices need pipeline.mode sync or overlap")
  if valid("pipeline.mode") and num_processes > 1 and mode != "fused":
    err("pipeline.mode", f"the staged pipeline (sync / overlap) runs in one process only, this run has "
        f"{num_processes}; use pipeline.mode='fused' with several processes")
  outer = flat["outer_step.mode"] != "none"
  if valid("outer_step.mode") and outer and (not flat["diagnostics.enabled"] or mode != "fused"):
    err("outer_step.mode", "needs diagnostics.enabled=True (it reads the measured KL) and pipeline.mode='fused'")
  if flat["autoscale.enabled"] and valid("autoscale.enabled", "autoscale.max_num_envs", "num_envs"):
    if flat["scaling.rule"] == "none":
      err("autoscale.enabled", "needs a scaling rule to change num_envs (minibatching and learning rate follow it): "
          "add " + " ".join(recipe_flags(config)))
    if flat["scaling.schedule"]:
      err("autoscale.enabled", "and scaling.schedule both choose num_envs: set one of them")
    if flat["autoscale.max_num_envs"] < flat["num_envs"]:  # equal: a run autoscale has grown to its largest
      err("autoscale.max_num_envs", f"must be at least num_envs={flat['num_envs']} (autoscale grows the run up to it)")
  if flat["level_sampler.kind"] == "sfl":
    config_rules.check_sfl(flat, valid, err, mode, _shards(flat, num_devices)[2] if valid("mesh.data") else 1)
  if valid("wandb.project") and flat["wandb.project"] and not config_rules.wandb_installed():
    err("wandb.project", config_rules.wandb_missing_message())
  if valid("env_name"):
    try:
      config_rules.check_observations(flat, registry.make(flat["env_name"]), err)
    except (registry.UnknownEnvError, ImportError) as e:
      err("env_name", str(e))
  if errors:  # the divisibility rules below assume the basic types are right
    return errors

  shards, actor_shards, learner_shards = _shards(flat, num_devices)
  if actor_devices and learner_shards < 1:
    err("pipeline.actor_devices", f"must leave at least one of the mesh's {shards} devices for the learner")
    return errors
  batch_size = flat["num_envs"] * flat["num_steps"]
  if batch_size > MAX_INDEX:
    err("num_envs", f"num_envs * num_steps = {batch_size:,} samples per update is more than {MAX_INDEX:,} (2^31 - 1), "
        "the most the minibatch permutation and gathers index (int32, pipeline/permutation.py); lower num_envs or "
        "num_steps")
    return errors
  if flat["num_envs"] % actor_shards:
    where = (f"the {actor_shards} actor devices (pipeline.actor_devices)" if actor_devices else
             f"the {shards} devices of the mesh's data axis (mesh.data)")
    err("num_envs", f"must be divisible by {where}")
  if actor_devices and flat["num_envs"] % learner_shards:
    err("num_envs", f"must be divisible by the {learner_shards} learner devices (mesh devices - actor_devices)")
  scaled = _scale(flat, learner_shards, errors)
  if scaled is not None:
    chunk = chunk_size(flat["sgd_chunk_size"], scaled.minibatch_size, flat["diagnostics.enabled"], learner_shards)
    if scaled.minibatch_size % chunk:
      err("sgd_chunk_size", f"must divide the minibatch size {scaled.minibatch_size} (or be at least as large)")
    elif chunk % learner_shards:
      err("sgd_chunk_size", f"must be divisible by the {learner_shards} devices of the data axis")
    steps = flat["update_epochs"] * scaled.num_minibatches
    if steps > MAX_INDEX:  # the anneal counts optimizer steps within an update in int32 (learner/optimizer.py)
      err("update_epochs", f"{steps:,} optimizer steps per update (update_epochs x {scaled.num_minibatches:,} "
          f"minibatches) are more than {MAX_INDEX:,} (2^31 - 1), the most the int32 anneal count holds; lower "
          "update_epochs or the number of minibatches")
  if flat["total_env_steps"] < batch_size and not planning:
    err("total_env_steps", f"must be at least one batch (num_envs * num_steps = {batch_size})")
  if flat["total_env_steps"] // batch_size > MAX_INDEX:  # TrainState.update (also the checkpoint step) is int32
    err("total_env_steps", f"{flat['total_env_steps'] // batch_size:,} updates are more than {MAX_INDEX:,} (2^31 - 1), "
        "the most the int32 update counter holds; lower total_env_steps or raise num_envs * num_steps")
  return errors


def chunk_size(sgd_chunk_size: int, minibatch_size: int, diagnostics: bool = False, shards: int = 1) -> int:
  """The gradient chunk actually used: a chunk never exceeds its minibatch.

  With diagnostics on, a minibatch that would be a single chunk is split in two (when the halves still split over
  the `shards` devices): the chunk and minibatch gradients at the same params give the gradient noise scale.
  """
  chunk = min(sgd_chunk_size, minibatch_size)
  if diagnostics and chunk == minibatch_size and minibatch_size % (2 * shards) == 0:
    chunk //= 2
  return chunk


def _scale(flat: dict[str, Any], shards: int, errors: list[str]) -> Scaled | None:
  """Applies `scaling.rule`: minibatch count / size and learning rate at num_envs. Appends errors; None if any.

  The configured num_minibatches or minibatch_size (whichever is set) and learning_rate hold at the base batch
  base_num_envs * num_steps. `recipe` keeps the minibatch size and learning rate and grows the number of
  minibatches with num_envs; `fixed_minibatches` keeps the number so the minibatch grows; `sqrt_lr` does the same
  and scales the learning rate by sqrt(num_envs / base_num_envs); `none` applies the config to num_envs as is.
  """
  rule, steps = flat["scaling.rule"], flat["num_steps"]
  batch = flat["num_envs"] * steps
  tag = "" if rule == "none" else f" (scaling.rule={rule!r})"
  if rule == "none":
    ref, ref_name = batch, "the batch num_envs * num_steps"
  else:
    ref, ref_name = flat["scaling.base_num_envs"] * steps, "the base batch scaling.base_num_envs * num_steps"
  given = "num_minibatches" if flat["num_minibatches"] > 0 else "minibatch_size"
  if ref % flat[given]:
    errors.append(f"config.{given}={flat[given]}: must divide {ref_name} = {ref}{tag}")
    return None
  base_count = flat["num_minibatches"] or ref // flat["minibatch_size"]
  base_size = flat["minibatch_size"] or ref // flat["num_minibatches"]
  count, learning_rate = base_count, float(flat["learning_rate"])
  if rule == "recipe":
    if batch % base_size:
      errors.append(f"config.num_envs={flat['num_envs']}: the base minibatch size {base_size} must divide the batch "
                    f"num_envs * num_steps = {batch}{tag}")
      return None
    count = batch // base_size
  elif rule in ("fixed_minibatches", "sqrt_lr") and batch % base_count:
    errors.append(f"config.num_envs={flat['num_envs']}: the {base_count} minibatches must divide the batch "
                  f"num_envs * num_steps = {batch}{tag}")
    return None
  if rule == "sqrt_lr":
    learning_rate *= math.sqrt(flat["num_envs"] / flat["scaling.base_num_envs"])
  size = batch // count
  if size % shards:
    errors.append(f"config.{given}={flat[given]}: the minibatch size {size} must be divisible by the {shards} "
                  f"devices of the data axis{tag}")
    return None
  return Scaled(num_minibatches=count, minibatch_size=size, learning_rate=learning_rate)


def recipe_flags(run: ml_collections.ConfigDict | dict[str, Any]) -> list[str]:
  """The flags that continue `run` (its config, e.g. as saved in a checkpoint) at any other num_envs under
  scaling.rule=recipe with its own minibatch size and learning rate. The recipe holds those at the base, so the base
  is the run itself: its num_envs, the minibatch count (or size: the key the run set) it had there, and its learning
  rate where its rule had scaled it. A key the saved config lacks ran as its default."""
  given = run.to_dict() if isinstance(run, ml_collections.ConfigDict) else run
  flat = {**flat_keys(SCHEMA.config()), **flat_keys(ml_collections.ConfigDict(given))}
  scaled = _scale(flat, 1, [])  # the run's own sizes (devices do not change them; it passed their checks)
  flags = ["--config.scaling.rule=recipe", f"--config.scaling.base_num_envs={flat['num_envs']}"]
  if scaled is None:
    return flags
  flags.append(f"--config.num_minibatches={scaled.num_minibatches}" if flat["num_minibatches"] > 0
               else f"--config.minibatch_size={scaled.minibatch_size}")
  if scaled.learning_rate != float(flat["learning_rate"]):
    flags.append(f"--config.learning_rate={scaled.learning_rate!r}")
  return flags


def growth_hint(run: ml_collections.ConfigDict | dict[str, Any]) -> str:
  """What a refused change of num_envs says: the flags that continue `run` as itself (recipe_flags)."""
  return ("a run continues at another num_envs only under a scaling rule: add " + " ".join(recipe_flags(run)) +
          " (the run's own minibatch size and learning rate, held by the recipe at any num_envs)")


def _shards(flat: dict[str, Any], num_devices: int) -> tuple[int, int, int]:
  """Devices on the data axis, and of those the actors' and the learner's (all of them when they share)."""
  shards = num_devices if flat["mesh.data"] == -1 else flat["mesh.data"]
  actor_devices = flat["pipeline.actor_devices"]
  return (shards, actor_devices, shards - actor_devices) if actor_devices else (shards, shards, shards)


def resolve(config: ml_collections.ConfigDict, num_devices: int, planning: bool = False,
            num_processes: int = 1, segment: Any = None) -> Resolved:
  """Validates `config` for `num_devices` visible devices (of `num_processes` processes, jax.process_count()) and
  derives the run's sizes; `segment` (launch/elastic.Segment): where num_envs took its value. Raises ConfigError."""
  errors = check(config, num_devices, planning, num_processes)
  if errors:
    raise ConfigError("invalid config:\n  " + "\n  ".join(errors))
  flat = flat_keys(config)
  scaled = _scale(flat, _shards(flat, num_devices)[2], [])
  batch_size = config.num_envs * config.num_steps
  first = (segment.update, segment.env_steps) if segment else (0, 0)
  num_updates = first[0] + max(0, config.total_env_steps - first[1]) // batch_size
  if num_updates > MAX_INDEX:  # check() bounds total / batch; updates done at a smaller num_envs add more
    raise ConfigError(f"invalid config:\n  config.total_env_steps={config.total_env_steps}: {num_updates:,} updates "
                      f"({first[0]:,} done before this num_envs) are more than {MAX_INDEX:,} (2^31 - 1), the most the "
                      "int32 update counter holds; lower total_env_steps")
  # The anneal is over env steps (launch/run/elastic.py): 1 - E0 / E_total at this segment's start, 0 at the run's end.
  env_total = first[1] + (num_updates - first[0]) * batch_size
  lr_fraction = 1.0 - first[1] / env_total if config.anneal_lr and first[1] else 1.0
  com = float(config.ewma.center_of_mass)
  ppo = PPOSettings(num_envs=config.num_envs, num_steps=config.num_steps, update_epochs=config.update_epochs,
                    num_minibatches=scaled.num_minibatches, gamma=float(config.gamma),
                    gae_lambda=float(config.gae_lambda), clip_eps=float(config.clip_eps),
                    vf_coef=float(config.vf_coef), ent_coef=float(config.ent_coef), obs_norm=config.obs_norm,
                    reset_pool_size=config.reset_pool.size, reset_pool_refresh=config.reset_pool.refresh,
                    sgd_chunk_size=chunk_size(config.sgd_chunk_size, scaled.minibatch_size, config.diagnostics.enabled,
                                              _shards(flat, num_devices)[2]),
                    diagnostics=config.diagnostics.enabled, kl_quantile=float(config.diagnostics.kl_quantile),
                    local_shuffle=config.sgd.shuffle == "local",
                    ewma_decay=ewma.decay_from_center_of_mass(com) if config.ewma.enabled else None,
                    outer_step=None if config.outer_step.mode == "none" else outer_step.OuterSettings(
                        **config.outer_step.to_dict()),
                    sfl=None if config.level_sampler.kind == "uniform" else sfl.SFLSettings(
                        **{k: v for k, v in config.level_sampler.to_dict().items() if k != "kind"}))
  return Resolved(ppo=ppo, batch_size=batch_size, minibatch_size=scaled.minibatch_size,
                  learning_rate=scaled.learning_rate, num_updates=num_updates,
                  total_gradient_steps=(num_updates - first[0]) * config.update_epochs * scaled.num_minibatches,
                  max_policy_lag=config.pipeline.max_policy_lag if config.pipeline.mode == "overlap" else 0,
                  first_update=first[0], first_env_steps=first[1], lr_fraction=lr_fraction)
