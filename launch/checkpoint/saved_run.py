"""A run's trained policy read from its newest valid checkpoint (launch/checkpoint/reader.py: the whole step is
checked, then only the saved config, the network params and, with obs_norm, the observation statistics are used; no
envs are stepped).

Used by launch.evaluate and launch.export; both get a learner.policy.Policy.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import ml_collections
import numpy as np

import envs
from launch.checkpoint import params as ckpt_params, reader
from learner import policy as policy_lib
from pipeline import obs_norm as obs_norm_lib


@dataclasses.dataclass(frozen=True)
class SavedRun:
  step_dir: str  # the checkpoint step read
  update: int
  config: ml_collections.ConfigDict  # the run's own config, as saved with the checkpoint
  policy: policy_lib.Policy


def saved_config(workdir: str, what: str | None = None) -> dict[str, Any]:
  """The config saved with the newest valid checkpoint of a run, as a nested dict (its host record only, checked
  against its checksum: no arrays)."""
  return reader.newest(workdir, what or f"--workdir={workdir}", arrays=False).host["config"]


def _obs_norm(source: reader.Step) -> policy_lib.ObsNorm:
  words = ckpt_params.obs_stats(source, source.path)
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


def load(workdir: str, what: str | None = None) -> SavedRun:
  """The policy of the newest valid checkpoint of the run in `workdir` (or of one step directory), read and checked
  by launch/checkpoint/reader.py. `what` names it in messages (default: --workdir=WORKDIR, as the CLIs take it)."""
  what = what or f"--workdir={workdir}"
  source = reader.newest(workdir, what)
  config = ml_collections.ConfigDict(source.host["config"])
  obs_norm = _obs_norm(source) if config.get("obs_norm", False) else None
  spec = spec_for(config, obs_norm)
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("data",))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated), spec.param_shapes())
  params = jax.device_get(ckpt_params.params_of(source, target, what))
  return SavedRun(step_dir=source.path, update=source.step, config=config,
                  policy=policy_lib.Policy(spec=spec, params=params, act=policy_lib.make_act(spec, params)))
