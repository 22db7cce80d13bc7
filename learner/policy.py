"""A trained policy apart from the training loop: params plus a small JSON description, saved and loaded.

  policy = load_policy("policy_dir")         # written by `python -m launch.export --workdir=RUN --out=policy_dir`
  action = jax.jit(policy.act)(obs, key, True)

The directory holds `params.safetensors` (the network's params, flattened to "a/b/c" names; no pickle) and
`policy.json` (network kind — the MLP or the entity transformer — sizes, activation, trunk; action space; the
observation: a flat shape, or the entity observation's leaves with their shapes and dtypes; the observation
statistics when the run normalised observations). This module imports only the network and distributions, nothing of the
training loop (pipeline/, launch/), so a policy can be used wherever JAX and Flax are installed.
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from envs import base, entities
from learner import distributions, entity_network, networks, obs_store as obs_store_lib

FORMAT = "ppo-million-policy/1"
PARAMS_FILE = "params.safetensors"
SPEC_FILE = "policy.json"


@dataclasses.dataclass(frozen=True)
class ObsNorm:
  """The run's observation statistics: the policy sees clip((obs - mean) / sqrt(var + eps), -clip, clip)."""
  mean: tuple[float, ...]
  var: tuple[float, ...]
  clip: float
  eps: float


@dataclasses.dataclass(frozen=True)
class PolicySpec:
  """What rebuilds the policy network around saved params (the JSON beside them)."""
  hidden_sizes: tuple[int, ...]
  activation: str
  shared_trunk: bool
  action_space: base.ActionSpace
  observation_shape: tuple[int, ...]
  obs_norm: ObsNorm | None = None
  env_name: str = ""  # informational: the env the policy was trained on
  # network.kind=entity: EntityActorCritic's (width, layers, heads, qkv_features); None for the MLP.
  entity: tuple[int, int, int, int] | None = None
  # Entity observations: field -> (shape, dtype) of one env's EntityObs; None for a flat observation_shape.
  observation_leaves: tuple[tuple[str, tuple[int, ...], str], ...] | None = None
  obs_store: str = "float32"  # the run's obs_store: the policy sees its observations rounded as in training

  @property
  def dist(self) -> distributions.Distribution:
    return distributions.for_action_space(self.action_space)

  def model(self) -> networks.ActorCritic | entity_network.EntityActorCritic:
    if self.entity is not None:
      width, layers, heads, qkv = self.entity
      return entity_network.EntityActorCritic(dist=self.dist, hidden_sizes=tuple(self.hidden_sizes),
                                              activation=self.activation, width=width, layers=layers, heads=heads,
                                              qkv_features=qkv)
    return networks.ActorCritic(dist=self.dist, hidden_sizes=tuple(self.hidden_sizes), activation=self.activation,
                                shared_trunk=self.shared_trunk)

  def observation(self) -> Any:
    """One observation's structure as jax.ShapeDtypeStructs: an array, or an EntityObs of them."""
    if self.observation_leaves is None:
      return jax.ShapeDtypeStruct(tuple(self.observation_shape), jnp.float32)
    return entities.EntityObs(**{name: jax.ShapeDtypeStruct(shape, jnp.dtype(dtype))
                                 for name, shape, dtype in self.observation_leaves})

  def param_shapes(self) -> Any:
    """The params pytree as jax.ShapeDtypeStructs (no computation)."""
    obs = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), self.observation())
    return jax.eval_shape(self.model().init, jax.random.PRNGKey(0), obs)

  def to_json(self) -> dict[str, Any]:
    space = self.action_space
    if isinstance(space, base.Discrete):
      action = {"kind": "discrete", "n": space.n}
    elif isinstance(space, base.MultiDiscrete):
      action = {"kind": "multi_discrete", "nvec": list(space.nvec)}
    else:
      action = {"kind": "box", "shape": list(space.shape), "low": list(space.low), "high": list(space.high)}
    network = {"kind": "actor_critic_mlp", "hidden_sizes": list(self.hidden_sizes), "activation": self.activation,
               "shared_trunk": self.shared_trunk, "distribution": type(self.dist).__name__}
    if self.entity is not None:
      network.update(kind="entity_transformer", **dict(zip(ENTITY_KEYS, self.entity)))
    out = {
        "format": FORMAT,
        "env_name": self.env_name,
        "network": network,
        "action_space": action,
        "observation_shape": list(self.observation_shape),
        "obs_norm": None if self.obs_norm is None else dataclasses.asdict(self.obs_norm),
    }
    if self.obs_store != "float32":  # absent: float32, as every policy.json written before the key was
      out["obs_store"] = self.obs_store
    if self.observation_leaves is not None:
      out["observation_leaves"] = {name: {"shape": list(shape), "dtype": dtype}
                                   for name, shape, dtype in self.observation_leaves}
    return out

  @classmethod
  def from_json(cls, data: dict[str, Any]) -> PolicySpec:
    if data.get("format") != FORMAT:
      raise ValueError(f"not a policy description of format {FORMAT!r}: format={data.get('format')!r}")
    net, action = data["network"], data["action_space"]
    if net["kind"] not in ("actor_critic_mlp", "entity_transformer"):
      raise ValueError(f"unknown network kind {net['kind']!r}")
    entity = tuple(int(net[k]) for k in ENTITY_KEYS) if net["kind"] == "entity_transformer" else None
    leaves = data.get("observation_leaves")
    if leaves is not None:
      leaves = tuple((name, tuple(int(d) for d in leaf["shape"]), str(leaf["dtype"])) for name, leaf in leaves.items())
    if action["kind"] == "discrete":
      space = base.Discrete(int(action["n"]))
    elif action["kind"] == "multi_discrete":
      space = base.MultiDiscrete(tuple(int(n) for n in action["nvec"]))
    elif action["kind"] == "box":
      space = base.Box(low=tuple(map(float, action["low"])), high=tuple(map(float, action["high"])),
                       shape=tuple(int(d) for d in action["shape"]))
    else:
      raise ValueError(f"unknown action space kind {action['kind']!r}")
    norm = data.get("obs_norm")
    return cls(hidden_sizes=tuple(int(s) for s in net["hidden_sizes"]), activation=net["activation"],
               shared_trunk=bool(net["shared_trunk"]), action_space=space,
               observation_shape=tuple(int(d) for d in data["observation_shape"]),
               obs_norm=None if norm is None else ObsNorm(mean=tuple(norm["mean"]), var=tuple(norm["var"]),
                                                          clip=float(norm["clip"]), eps=float(norm["eps"])),
               env_name=data.get("env_name", ""), entity=entity, observation_leaves=leaves,
               obs_store=data.get("obs_store", "float32"))


ENTITY_KEYS = ("width", "layers", "heads", "qkv_features")


def describe_observation(spec: Any) -> tuple[tuple[int, ...], tuple[tuple[str, tuple[int, ...], str], ...] | None]:
  """An env's `observation_spec` as PolicySpec's (observation_shape, observation_leaves)."""
  if isinstance(spec, entities.EntityObs):
    return (), tuple((name, tuple(getattr(spec, name).shape), np.dtype(getattr(spec, name).dtype).name)
                     for name in entities.EntityObs.__dataclass_fields__)
  return tuple(spec.shape), None


@dataclasses.dataclass(frozen=True)
class Policy:
  """`act(obs, key, deterministic)` → action: jittable, vmappable (obs may carry leading batch axes).

  Deterministic actions are the distribution's mode (argmax; a Gaussian's mean), as the trainer's evaluation takes
  them; otherwise sampled with `key`. Box actions come out unclipped, as the trainer's policy emits them (its env
  adapters clip them to the action space's low/high, which `spec.action_space` holds)."""
  spec: PolicySpec
  params: Any
  act: Callable[..., jax.Array]


def make_act(spec: PolicySpec, params: Any) -> Callable[..., jax.Array]:
  model, dist, norm = spec.model(), spec.dist, spec.obs_norm

  def act(obs, key, deterministic=True):
    # A flat observation as float32; an entity observation's leaves keep their dtypes (masks, indexes).
    obs = jnp.asarray(obs, jnp.float32) if spec.observation_leaves is None else jax.tree.map(jnp.asarray, obs)
    if norm is not None:
      mean, var = jnp.asarray(norm.mean, jnp.float32), jnp.asarray(norm.var, jnp.float32)
      obs = jnp.clip((obs - mean) * jax.lax.rsqrt(var + norm.eps), -norm.clip, norm.clip)
    head, _ = model.apply(params, obs_store_lib.view(obs, spec.obs_store))
    if isinstance(deterministic, bool):  # a Python bool: only one branch is traced
      return dist.mode(head) if deterministic else dist.sample(key, head)
    return jax.lax.cond(deterministic, dist.mode, lambda h: dist.sample(key, h).astype(dist.mode(h).dtype), head)

  return act


def save_policy(path: str, spec: PolicySpec, params: Any) -> None:
  """Writes PATH/params.safetensors and PATH/policy.json (PATH is a directory, created if needed)."""
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  os.makedirs(path, exist_ok=True)
  flat = traverse_util.flatten_dict(jax.device_get(params), sep="/")
  save_file({k: np.ascontiguousarray(v) for k, v in flat.items()}, os.path.join(path, PARAMS_FILE),
            metadata={"format": FORMAT})
  with open(os.path.join(path, SPEC_FILE), "w", encoding="utf-8") as f:
    json.dump(spec.to_json(), f, indent=2)
    f.write("\n")


def load_policy(path: str) -> Policy:
  """The policy saved in directory `path` (see `save_policy`); params checked against the description's network."""
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
  with open(os.path.join(path, SPEC_FILE), encoding="utf-8") as f:
    spec = PolicySpec.from_json(json.load(f))
  flat = load_file(os.path.join(path, PARAMS_FILE))
  want = traverse_util.flatten_dict(spec.param_shapes(), sep="/")
  bad = sorted(k for k in set(want) | set(flat)
               if k not in want or k not in flat or tuple(flat[k].shape) != tuple(want[k].shape))
  if bad:
    raise ValueError(f"{path}: the params do not fit the network in {SPEC_FILE}: " + ", ".join(bad[:8]))
  params = traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in flat.items()}, sep="/")
  return Policy(spec=spec, params=params, act=make_act(spec, params))
