"""The config rules that look outside the config: the env's observations against the network and obs_norm, SFL's
settings, and whether the W&B extra is installed.

`config_lib.check` applies them (with its `valid` and `err` helpers) once each key's own rule holds.
"""
from __future__ import annotations

import importlib.util
from typing import Any

from envs import base, entities, registry

WANDB_INSTALL = 'pip install -e ".[wandb]"'


def wandb_installed() -> bool:
  return importlib.util.find_spec("wandb") is not None


def wandb_missing_message() -> str:
  return f"needs the wandb extra, which is not installed. Install it with: {WANDB_INSTALL}"


def check_sfl(flat: dict[str, Any], valid, err, mode: str, shards: int) -> None:
  """SFL's settings against each other, the reset pool, the pipeline and the env (pipeline/sfl.py)."""
  scored = flat["level_sampler.batch_size"] * flat["level_sampler.num_batches"]
  if valid("level_sampler.buffer_size", "level_sampler.batch_size", "level_sampler.num_batches") and \
      flat["level_sampler.buffer_size"] > scored:
    err("level_sampler.buffer_size", f"must be at most the {scored:,} levels scored per re-scoring "
        "(level_sampler.batch_size x level_sampler.num_batches)")
  if valid("level_sampler.batch_size", "mesh.data") and flat["level_sampler.batch_size"] % shards:
    err("level_sampler.batch_size", f"must be a multiple of the {shards} devices the scored levels are split over")
  if valid("reset_pool.size") and not flat["reset_pool.size"]:
    err("level_sampler.kind", "sfl draws its generator levels from the reset pool: set reset_pool.size > 0")
  if valid("pipeline.mode") and mode != "fused":
    err("level_sampler.kind", "sfl runs in the fused update only: use pipeline.mode='fused'")
  if valid("env_name"):
    try:
      env = registry.make(flat["env_name"])
    except (registry.UnknownEnvError, ImportError):
      return  # reported for env_name
    if not callable(getattr(env, "success", None)):
      err("level_sampler.kind", f"sfl needs an env whose episodes restart from a stored start state and that says "
          f"which episodes succeeded (`success`); {flat['env_name']} has no `success`")


def check_observations(flat: dict[str, Any], env, err) -> None:
  """The network, obs_norm and solve-rate levels against the env's observations."""
  spec, name, kind = env.observation_spec, flat["env_name"], flat["network.kind"]
  if base.is_flat(spec) == (kind == "entity") or (kind == "entity" and not isinstance(spec, entities.EntityObs)):
    err("network.kind", f"{kind} needs " + ("flat observations" if kind == "mlp" else "entity observations (e.g. "
        "env_name='kinetix:s@entity')") + f"; {name} observes {'a flat vector' if base.is_flat(spec) else 'a pytree'}")
  elif kind == "entity" and flat["network.entity_heads"] % spec.attention_mask.shape[0]:
    err("network.entity_heads", f"must be a multiple of {name}'s {spec.attention_mask.shape[0]} attention channels")
  if flat["obs_norm"] and not base.is_flat(spec):
    err("obs_norm", f"normalises flat observations only; {name} observes a pytree (entities with masks and indexes)")
  if flat["eval.solve_levels"]:
    from envs import kinetix_adapter  # pylint: disable=import-outside-toplevel
    try:
      kinetix_adapter.solve_levels(flat["eval.solve_levels"])
    except (registry.UnknownEnvError, ImportError) as e:
      err("eval.solve_levels", str(e))
