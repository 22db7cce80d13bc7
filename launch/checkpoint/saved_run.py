"""A run's trained policy read from its newest checkpoint: the saved config, the network params and (with obs_norm)
the observation statistics. Nothing else is read: no optimizer state, no env states, no envs stepped.

Used by launch.evaluate and launch.export; both get a learner.policy.Policy.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

import envs
from launch.config import resolve as config_lib
from launch.checkpoint import format as format_lib, params as ckpt_params
from learner import policy as policy_lib
from pipeline import obs_norm as obs_norm_lib


@dataclasses.dataclass(frozen=True)
class SavedRun:
  step_dir: str  # the checkpoint step read
  update: int
  config: ml_collections.ConfigDict  # the run's own config, as saved with the checkpoint
  policy: policy_lib.Policy


def read_params(step_dir: str, target: Any) -> Any:
  """The only place this module reads params: the checkpoint's `params` part by name, onto `target`'s shardings."""
  return ckpt_params.read_params(step_dir, target)


def _manager(directory: epath.Path) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True, create=False))


def newest_step(workdir: str) -> tuple[epath.Path, int]:
  """(checkpoints directory, newest step) of a run's workdir, its checkpoints/ or one step directory."""
  directory, step = ckpt_params.locate(workdir)
  if not directory.is_dir():
    raise config_lib.ConfigError(f"--workdir={workdir}: no such directory")
  if step is None:
    manager = _manager(directory)
    step = manager.latest_step()
    manager.close()
    if step is None:
      raise config_lib.ConfigError(f"--workdir={workdir}: holds no checkpoint (train first, or wait for the first "
                                   "save: config.checkpoint_every)")
  return directory, step


def _read_host(directory: epath.Path, step: int) -> dict[str, Any]:
  manager = _manager(directory)
  try:
    return manager.restore(step, args=ocp.args.Composite(host=ocp.args.JsonRestore()))["host"]
  finally:
    manager.close()


def saved_config(workdir: str) -> dict[str, Any]:
  """The config saved with the newest checkpoint of a run, as a nested dict (its host record only: no arrays)."""
  directory, step = newest_step(workdir)
  return _read_host(directory, step)["config"]


def _read_obs_norm(directory: epath.Path, step: int, host: dict[str, Any]) -> policy_lib.ObsNorm:
  manager = _manager(directory)
  try:
    words = ckpt_params.read_obs_stats(manager, step, host, str(directory / str(step)))
  finally:
    manager.close()
  return policy_lib.ObsNorm(mean=tuple(map(float, words["mean"])), var=tuple(map(float, words["var"])),
                            clip=float(obs_norm_lib.CLIP), eps=float(obs_norm_lib.EPS))


def spec_for(config: ml_collections.ConfigDict, obs_norm: policy_lib.ObsNorm | None = None,
             env_name: str | None = None) -> policy_lib.PolicySpec:
  """The policy description of a run's config (the env is built only for its spaces)."""
  env = envs.make(env_name or config.env_name)
  net = config.network
  entity = ((int(net.entity_width), int(net.entity_layers), int(net.entity_heads), int(net.entity_qkv))
            if net.get("kind", "mlp") == "entity" else None)
  shape, leaves = policy_lib.describe_observation(env.observation_spec)
  return policy_lib.PolicySpec(hidden_sizes=tuple(net.hidden_sizes), activation=net.activation,
                               shared_trunk=bool(net.shared_trunk), action_space=env.action_space,
                               observation_shape=shape, obs_norm=obs_norm, env_name=env_name or config.env_name,
                               entity=entity, observation_leaves=leaves,
                               obs_store=config.get("obs_store", "float32"))


def load(workdir: str) -> SavedRun:
  """The newest checkpoint's policy of the run in `workdir` (or of one step directory)."""
  directory, step = newest_step(workdir)
  host = _read_host(directory, step)
  format_lib.check_format(host, str(directory / str(step)))
  config = ml_collections.ConfigDict(host["config"])
  obs_norm = _read_obs_norm(directory, step, host) if config.get("obs_norm", False) else None
  spec = spec_for(config, obs_norm)
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("data",))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated), spec.param_shapes())
  params = jax.device_get(read_params(str(directory / str(step)), target))
  return SavedRun(step_dir=str(directory / str(step)), update=step, config=config,
                  policy=policy_lib.Policy(spec=spec, params=params, act=policy_lib.make_act(spec, params)))
