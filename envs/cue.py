"""`cue`: a deterministic toy env with a known optimal return, for tests that must see learning happen fast.

Each step shows a one-hot cue of which of `num_actions` actions is correct (cycling deterministically through them);
the correct action earns +1, a wrong one ends the episode (terminated). Episodes are truncated after `length` steps,
so the optimal return is exactly `length` and a uniformly random policy earns about 1/(num_actions-1).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from envs import base


@struct.dataclass
class CueState:
  time: jax.Array  # int32


class CueEnv(base.Environment[CueState]):
  """Follow the cue: optimal return `length`."""

  def __init__(self, length: int = 8, num_actions: int = 3):
    self.length = length
    self.num_actions = num_actions

  def __hash__(self):
    return hash((type(self), self.length, self.num_actions))

  def __eq__(self, other):
    return type(other) is type(self) and (other.length, other.num_actions) == (self.length, self.num_actions)

  @property
  def optimal_return(self) -> float:
    return float(self.length)

  @property
  def observation_shape(self):
    return (self.num_actions,)

  @property
  def action_space(self):
    return base.Discrete(self.num_actions)

  @property
  def max_episode_steps(self):
    return self.length

  def _obs(self, time):
    return jax.nn.one_hot(time % self.num_actions, self.num_actions, dtype=jnp.float32)

  def reset(self, key):
    del key
    time = jnp.zeros((), jnp.int32)
    return CueState(time=time), self._obs(time)

  def step(self, key, state, action):
    del key
    correct = action == state.time % self.num_actions
    time = state.time + 1
    return base.StepResult(
        state=CueState(time=time),
        obs=self._obs(time),
        reward=correct.astype(jnp.float32),
        terminated=jnp.logical_not(correct),
        truncated=time >= self.length,
    )
