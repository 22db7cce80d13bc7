"""Sticky actions (Machado et al., 2018, "Revisiting the Arcade Learning Environment"): at every step the env repeats
its previous action instead of the agent's with probability `prob`. Deterministic envs (gymnax's MinAtar has no
sticky actions; the original MinAtar uses p = 0.1) then play a different episode each time, so that an evaluation of
many episodes samples the task rather than replaying one trajectory. Config key `sticky_actions`; applied in training
and in every evaluation of the run.

The previous action starts at zero (MinAtar's no-op) at every reset. Anything else the wrapped env offers (`success`,
renderers, level generators) is its own, reached through the wrapper.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from envs import base


@struct.dataclass
class StickyState:
  inner: Any  # the wrapped env's state
  last_action: jax.Array  # the action the env executed last (zeros after a reset)


def zero_action(space: base.ActionSpace) -> jax.Array:
  """The all-zero action of `space` (MinAtar's no-op for a Discrete one)."""
  if isinstance(space, base.Discrete):
    return jnp.zeros((), jnp.int32)
  if isinstance(space, base.MultiDiscrete):
    return jnp.zeros((len(space.nvec),), jnp.int32)
  return jnp.zeros(space.shape, jnp.float32)


@dataclasses.dataclass(frozen=True)
class StickyActions(base.Environment[StickyState]):
  """`env`, repeating its previous action with probability `prob` at each step."""
  env: base.Environment
  prob: float

  def __post_init__(self):
    if not 0.0 < self.prob < 1.0:
      raise ValueError(f"sticky actions: the probability must be in (0, 1), got {self.prob}")

  def __getattr__(self, name: str) -> Any:  # what the wrapped env offers beyond the interface
    if name.startswith("__") or name in ("env", "prob"):
      raise AttributeError(name)
    found = getattr(self.env, name)
    if name == "success":  # SFL's and the solve rates' test of an episode's end, on the wrapped env's own state
      return lambda result: found(result.replace(state=result.state.inner))
    return found

  @property
  def observation_shape(self):
    return self.env.observation_shape

  @property
  def observation_spec(self):
    return self.env.observation_spec

  @property
  def action_space(self):
    return self.env.action_space

  @property
  def max_episode_steps(self):
    return self.env.max_episode_steps

  def reset(self, key):
    state, obs = self.env.reset(key)
    return StickyState(inner=state, last_action=zero_action(self.env.action_space)), obs

  def step(self, key, state, action):
    stick_key, step_key = jax.random.split(key)
    executed = jnp.where(jax.random.bernoulli(stick_key, self.prob), state.last_action,
                         jnp.asarray(action, state.last_action.dtype))
    res = self.env.step(step_key, state.inner, executed)
    return res.replace(state=StickyState(inner=res.state, last_action=executed))


def wrap(env: base.Environment, prob: float) -> base.Environment:
  """`env` with sticky actions of probability `prob`; `env` itself for 0."""
  return env if prob == 0 else StickyActions(env, float(prob))
