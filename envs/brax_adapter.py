"""Adapter for Brax environments (`env_name="brax:<name>"` or `"brax:<name>@<backend>"`): continuous control.

Brax envs report `done` for natural termination only; the time limit (Brax's training default of 1000 steps) is kept
here as truncation, so GAE bootstraps through it. Actions are clipped to the actuators' control range, which is the
Box the Gaussian policy head is told about.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from envs import base, extras

BACKENDS = ("generalized", "positional", "spring", "mjx")
EPISODE_LENGTH = 1000  # Brax's own training wrappers truncate here


def import_brax_envs():
  extras.require("brax", "brax", "brax")
  return extras.require("brax.envs", "brax", "brax")


@struct.dataclass
class BraxState:
  inner: Any  # brax.envs.State
  time: jax.Array  # int32 steps taken in this episode


class BraxEnv(base.Environment[BraxState]):
  """One Brax environment with its default parameters."""

  def __init__(self, name: str, backend: str | None = None, episode_length: int = EPISODE_LENGTH):
    brax_envs = import_brax_envs()
    self.name, self.backend, self.episode_length = name, backend, episode_length
    self._env = brax_envs.get_environment(name, **({} if backend is None else {"backend": backend}))
    dim = int(self._env.action_size)
    ctrl = getattr(getattr(self._env.sys, "actuator", None), "ctrl_range", None)
    if ctrl is not None and np.shape(ctrl) == (dim, 2):
      low, high = np.asarray(ctrl, np.float32)[:, 0], np.asarray(ctrl, np.float32)[:, 1]
    else:  # Brax's convention where the system does not say
      low, high = -np.ones(dim, np.float32), np.ones(dim, np.float32)
    self._space = base.Box(low=tuple(map(float, low)), high=tuple(map(float, high)), shape=(dim,))

  def __hash__(self):
    return hash((type(self), self.name, self.backend, self.episode_length))

  def __eq__(self, other):
    return type(other) is type(self) and (other.name, other.backend, other.episode_length) == (
        self.name, self.backend, self.episode_length)

  @property
  def observation_shape(self):
    return (int(self._env.observation_size),)

  @property
  def action_space(self):
    return self._space

  @property
  def max_episode_steps(self):
    return self.episode_length

  def reset(self, key):
    inner = self._env.reset(key)
    return BraxState(inner=inner, time=jnp.zeros((), jnp.int32)), inner.obs.astype(jnp.float32)

  def step(self, key, state, action):
    del key  # Brax dynamics are deterministic
    action = jnp.clip(action, jnp.asarray(self._space.low), jnp.asarray(self._space.high))
    inner = self._env.step(state.inner, action)
    time = state.time + 1
    return base.StepResult(
        state=BraxState(inner=inner, time=time),
        obs=inner.obs.astype(jnp.float32),
        reward=jnp.asarray(inner.reward, jnp.float32),
        terminated=jnp.asarray(inner.done) > 0.5,
        truncated=time >= self.episode_length,
    )
