"""Adapter that runs any gymnax environment (`env_name="gymnax:<id>"`) behind the `envs.base` interface.

gymnax ≥ 1.0 reports natural termination from `step_env` and time limits through `is_truncated`, which map directly
onto our terminated / truncated. Observations are flattened to float32; continuous actions are clipped to the
action space's bounds before they reach the env.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from envs import base, extras


def _import_gymnax():
  return extras.require("gymnax", "gymnax", "gymnax")


def _convert_space(space) -> base.ActionSpace:
  kind = type(space).__name__
  if kind == "Discrete":
    return base.Discrete(int(space.n))
  if kind == "Box":
    shape = tuple(space.shape) if space.shape else (1,)
    low = np.broadcast_to(np.asarray(space.low, np.float32), shape).reshape(-1)
    high = np.broadcast_to(np.asarray(space.high, np.float32), shape).reshape(-1)
    return base.Box(low=tuple(map(float, low)), high=tuple(map(float, high)), shape=shape)
  raise ValueError(f"gymnax action space {kind} is not supported (Discrete and Box are)")


class GymnaxEnv(base.Environment):
  """One gymnax environment with its default params."""

  def __init__(self, env_id: str):
    gymnax = _import_gymnax()
    self.env_id = env_id
    self._env, self._params = gymnax.make(env_id)
    self._action_space = _convert_space(self._env.action_space(self._params))
    self._obs_shape = (int(math.prod(self._env.observation_space(self._params).shape)),)
    self._scalar_action = isinstance(self._action_space, base.Box) and (
        tuple(self._env.action_space(self._params).shape) == ())

  def __hash__(self):
    return hash((type(self), self.env_id))

  def __eq__(self, other):
    return type(other) is type(self) and other.env_id == self.env_id

  @property
  def observation_shape(self):
    return self._obs_shape

  @property
  def action_space(self):
    return self._action_space

  @property
  def max_episode_steps(self):
    return int(self._params.max_steps_in_episode)

  def reset(self, key):
    obs, state = self._env.reset_env(key, self._params)
    return state, jnp.asarray(obs, jnp.float32).reshape(-1)

  def step(self, key, state, action):
    space = self._action_space
    if isinstance(space, base.Box):
      action = jnp.clip(action, jnp.asarray(space.low), jnp.asarray(space.high))
      if self._scalar_action:
        action = action[0]
    obs, new_state, reward, terminated, _ = self._env.step_env(key, state, action, self._params)
    truncated = self._env.is_truncated(new_state, self._params)
    return base.StepResult(
        state=new_state,
        obs=jnp.asarray(obs, jnp.float32).reshape(-1),
        reward=jnp.asarray(reward, jnp.float32),
        terminated=jnp.asarray(terminated, bool),
        truncated=jnp.asarray(truncated, bool),
    )
