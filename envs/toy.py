"""A deterministic toy env with a known optimal return, for tests that must see learning happen fast.

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


@struct.dataclass
class LevelsState:
  level: jax.Array  # int32 level index
  time: jax.Array  # int32 steps taken in the episode


class LevelsEnv(base.Environment[LevelsState]):
  """Levels of known difficulty, for the level sampler (pipeline/sfl.py): whatever the policy does, level i is
  always solved when i % 3 == 0, never when i % 3 == 1 and, when i % 3 == 2, in half of its episodes (a coin flip
  from the step's key). The observation is the level's one-hot; an episode lasts `length` steps and ends
  (terminated) with reward +1 if solved, else −1."""

  def __init__(self, num_levels: int = 12, length: int = 2):
    self.num_levels = num_levels
    self.length = length

  def __hash__(self):
    return hash((type(self), self.num_levels, self.length))

  def __eq__(self, other):
    return type(other) is type(self) and (other.num_levels, other.length) == (self.num_levels, self.length)

  @property
  def observation_shape(self):
    return (self.num_levels,)

  @property
  def action_space(self):
    return base.Discrete(2)

  @property
  def max_episode_steps(self):
    return self.length

  def reset(self, key):
    level = jax.random.randint(key, (), 0, self.num_levels)
    return LevelsState(level=level, time=jnp.zeros((), jnp.int32)), jax.nn.one_hot(level, self.num_levels)

  def success(self, result: base.StepResult) -> jax.Array:
    """The episode ended solved (its only positive reward)."""
    return result.terminated & (result.reward > 0)

  def step(self, key, state, action):
    del action
    kind = state.level % 3
    solved = (kind == 0) | ((kind == 2) & jax.random.bernoulli(key))
    time = state.time + 1
    end = time >= self.length
    return base.StepResult(state=LevelsState(level=state.level, time=time),
                           obs=jax.nn.one_hot(state.level, self.num_levels),
                           reward=jnp.where(end, jnp.where(solved, 1.0, -1.0), 0.0).astype(jnp.float32),
                           terminated=end, truncated=jnp.zeros((), bool))
