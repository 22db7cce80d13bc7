"""A trained policy apart from the training loop: params plus a small JSON description, saved and loaded.

  policy = load_policy("policy_dir")         # written by `python -m launch.export --workdir=RUN --out=policy_dir`
  action = jax.jit(policy.act)(obs, key, True)

The directory holds `params.safetensors` (the network's params, flattened to "a/b/c" names; no pickle) and
`policy.json` (network kind, sizes, activation, trunk; action space; observation shape; the observation statistics
when the run normalised observations). This module imports only the network and distributions, nothing of the
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

from envs import base
from learner import distributions, networks

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

  @property
  def dist(self) -> distributions.Distribution:
    return distributions.for_action_space(self.action_space)

  def model(self) -> networks.ActorCritic:
    return networks.ActorCritic(dist=self.dist, hidden_sizes=tuple(self.hidden_sizes), activation=self.activation,
                                shared_trunk=self.shared_trunk)

  def param_shapes(self) -> Any:
    """The params pytree as jax.ShapeDtypeStructs (no computation)."""
    obs = jnp.zeros(self.observation_shape, jnp.float32)
    return jax.eval_shape(self.model().init, jax.random.PRNGKey(0), obs)

  def to_json(self) -> dict[str, Any]:
    space = self.action_space
    if isinstance(space, base.Discrete):
      action = {"kind": "discrete", "n": space.n}
    elif isinstance(space, base.MultiDiscrete):
      action = {"kind": "multi_discrete", "nvec": list(space.nvec)}
    else:
      action = {"kind": "box", "shape": list(space.shape), "low": list(space.low), "high": list(space.high)}
    return {
        "format": FORMAT,
        "env_name": self.env_name,
        "network": {"kind": "actor_critic_mlp", "hidden_sizes": list(self.hidden_sizes),
                    "activation": self.activation, "shared_trunk": self.shared_trunk,
                    "distribution": type(self.dist).__name__},
        "action_space": action,
        "observation_shape": list(self.observation_shape),
        "obs_norm": None if self.obs_norm is None else dataclasses.asdict(self.obs_norm),
    }

  @classmethod
  def from_json(cls, data: dict[str, Any]) -> PolicySpec:
    if data.get("format") != FORMAT:
      raise ValueError(f"not a policy description of format {FORMAT!r}: format={data.get('format')!r}")
    net, action = data["network"], data["action_space"]
    if net["kind"] != "actor_critic_mlp":
      raise ValueError(f"unknown network kind {net['kind']!r}")
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
               env_name=data.get("env_name", ""))


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
    obs = jnp.asarray(obs, jnp.float32)
    if norm is not None:
      mean, var = jnp.asarray(norm.mean, jnp.float32), jnp.asarray(norm.var, jnp.float32)
      obs = jnp.clip((obs - mean) * jax.lax.rsqrt(var + norm.eps), -norm.clip, norm.clip)
    head, _ = model.apply(params, obs)
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
