"""The pure-JAX environment interface: one env's reset/step, spaces, and auto-reset.

Environments are written for a single instance; the pipeline vmaps them over the env axis. Termination (the MDP
ended: no bootstrap) and truncation (a time limit cut the episode: bootstrap from the final observation) are
reported separately so that GAE can treat them differently. An observation is one float32 vector (`observation_shape`)
or any pytree of arrays (`observation_spec`, e.g. entities with masks and int indexes); the pipeline stores, packs,
shards and checkpoints either leaf by leaf.
"""
from __future__ import annotations

import abc
import dataclasses
from typing import Any, Generic, TypeVar

import jax
import jax.numpy as jnp
from flax import struct

PyTree = Any
EnvStateT = TypeVar("EnvStateT")


class UnknownEnvError(ValueError):
  """An env name no registry or suite knows; the message lists what is available."""


@dataclasses.dataclass(frozen=True)
class Discrete:
  """`n` actions, sampled as an int32 scalar."""
  n: int


@dataclasses.dataclass(frozen=True)
class MultiDiscrete:
  """Several independent categorical actions; `nvec[i]` choices for the i-th."""
  nvec: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Box:
  """A continuous action vector of `shape`, bounded elementwise by `low` and `high` (tuples, hashable)."""
  low: tuple[float, ...]
  high: tuple[float, ...]
  shape: tuple[int, ...]


ActionSpace = Discrete | MultiDiscrete | Box


@struct.dataclass
class StepResult(Generic[EnvStateT]):
  """What `Environment.step` returns for one env."""
  state: EnvStateT
  obs: PyTree  # an array, or a pytree of arrays (observation_spec)
  reward: jax.Array
  terminated: jax.Array  # bool: the episode ended inside the MDP; do not bootstrap
  truncated: jax.Array  # bool: a time limit cut the episode; bootstrap from `obs`


class Environment(abc.ABC, Generic[EnvStateT]):
  """A single pure-JAX environment. Subclasses must be hashable (they are static arguments of jitted code)."""

  @property
  def observation_shape(self) -> tuple[int, ...]:
    """Shape of one flat observation (float32). Envs with pytree observations define `observation_spec` instead."""
    raise NotImplementedError(f"{type(self).__name__} defines neither observation_shape nor observation_spec")

  @property
  def observation_spec(self) -> PyTree:
    """One observation's structure: a pytree of jax.ShapeDtypeStruct (default: one float32 `observation_shape`)."""
    return jax.ShapeDtypeStruct(tuple(self.observation_shape), jnp.float32)

  @property
  @abc.abstractmethod
  def action_space(self) -> ActionSpace:
    """The action space; it decides the policy head."""

  @property
  @abc.abstractmethod
  def max_episode_steps(self) -> int:
    """Truncation limit; evaluation runs at most this many steps."""

  @abc.abstractmethod
  def reset(self, key: jax.Array) -> tuple[EnvStateT, jax.Array]:
    """Samples a start state; returns (state, obs)."""

  @abc.abstractmethod
  def step(self, key: jax.Array, state: EnvStateT, action: jax.Array) -> StepResult[EnvStateT]:
    """One transition, without resetting."""


@struct.dataclass
class AutoResetStep:
  """One auto-reset step: `obs`/`state` already belong to the next episode where it ended."""
  state: PyTree
  obs: PyTree
  reward: jax.Array
  terminated: jax.Array
  truncated: jax.Array
  final_obs: PyTree  # the true next observation, before any reset (used to bootstrap truncations)


def is_flat(spec: PyTree) -> bool:
  """Whether an observation spec is one array (the MLP's and obs_norm's input) rather than a structure."""
  return isinstance(spec, jax.ShapeDtypeStruct)


def zeros_like_spec(spec: PyTree, batch: tuple[int, ...] = ()) -> PyTree:
  """Zero observations of `spec`, with leading `batch` axes (e.g. to initialise a network)."""
  return jax.tree.map(lambda s: jnp.zeros(batch + tuple(s.shape), s.dtype), spec)


def tree_select(pred: jax.Array, on_true: PyTree, on_false: PyTree) -> PyTree:
  """Elementwise `where` over matching pytrees with a scalar predicate."""
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def auto_reset_step(env: Environment, key: jax.Array, state: PyTree, action: jax.Array) -> AutoResetStep:
  """Steps one env and, if the episode ended, replaces state and obs with a fresh reset."""
  step_key, reset_key = jax.random.split(key)
  res = env.step(step_key, state, action)
  done = jnp.logical_or(res.terminated, res.truncated)
  reset_state, reset_obs = env.reset(reset_key)
  return AutoResetStep(
      state=tree_select(done, reset_state, res.state),
      obs=tree_select(done, reset_obs, res.obs),
      reward=res.reward.astype(jnp.float32),
      terminated=res.terminated,
      truncated=jnp.logical_and(res.truncated, jnp.logical_not(res.terminated)),
      final_obs=res.obs,
  )
