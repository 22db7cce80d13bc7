"""`levels`: levels of known difficulty (solved always, never or half the time whatever the policy does), for the
level sampler's tests (pipeline/sfl.py)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from envs import base


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
