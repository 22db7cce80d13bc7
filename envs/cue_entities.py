"""`cue_entities`: `cue` with entity observations (envs/entities.py), so the pytree path and the entity network are
tested without kinetix-env."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from envs import base
from envs.entities import EntityObs


@struct.dataclass
class CueEntitiesState:
  time: jax.Array  # int32


class CueEntitiesEnv(base.Environment[CueEntitiesState]):
  """`cue` (envs/cue.py) seen as entities: every present shape carries the one-hot cue among noise features, shapes
  sit in random slots, and absent slots hold large garbage. Optimal return `length`."""

  def __init__(self, length: int = 8, num_actions: int = 3, slots: tuple[int, int, int, int] = (3, 2, 4, 2),
               features: int = 5, channels: int = 2):
    self.length, self.num_actions, self.features, self.channels = length, num_actions, features, channels
    self.slots = slots  # polygons, circles, joints, thrusters

  def _key(self):
    return (self.length, self.num_actions, self.slots, self.features, self.channels)

  def __hash__(self):
    return hash((type(self), self._key()))

  def __eq__(self, other):
    return type(other) is type(self) and other._key() == self._key()

  @property
  def observation_spec(self):
    p, c, j, k = self.slots
    f, s = self.features, p + c
    box = lambda *shape, dtype=jnp.float32: jax.ShapeDtypeStruct(shape, dtype)
    return EntityObs(circles=box(c, f), polygons=box(p, f), joints=box(j, f), thrusters=box(k, f),
                     circle_mask=box(c, dtype=bool), polygon_mask=box(p, dtype=bool), joint_mask=box(j, dtype=bool),
                     thruster_mask=box(k, dtype=bool), attention_mask=box(self.channels, s, s, dtype=bool),
                     joint_indexes=box(j, 2, dtype=jnp.int32), thruster_indexes=box(k, dtype=jnp.int32))

  @property
  def optimal_return(self) -> float:
    return float(self.length)

  @property
  def action_space(self):
    return base.Discrete(self.num_actions)

  @property
  def max_episode_steps(self):
    return self.length

  def _obs(self, key, time) -> EntityObs:
    p, c, j, k = self.slots
    s = p + c
    keys = jax.random.split(key, 8)
    present = jax.random.bernoulli(keys[0], 0.6, (s,)).at[jax.random.randint(keys[1], (), 0, s)].set(True)
    cue = jax.nn.one_hot(time % self.num_actions, self.num_actions, dtype=jnp.float32)
    noise = jax.random.normal(keys[2], (s, self.features - self.num_actions))
    shapes = jnp.concatenate([jnp.broadcast_to(cue, (s, self.num_actions)), noise], axis=-1)
    shapes = jnp.where(present[:, None], shapes, 1e3 * jax.random.normal(keys[3], shapes.shape))  # garbage
    # Joints and thrusters on random present shapes (a categorical over present slots).
    logits = jnp.where(present, 0.0, -jnp.inf)
    joint_indexes = jax.random.categorical(keys[4], logits, shape=(j, 2)).astype(jnp.int32)
    thruster_indexes = jax.random.categorical(keys[5], logits, shape=(k,)).astype(jnp.int32)
    joint_mask = jax.random.bernoulli(keys[6], 0.5, (j,))
    thruster_mask = jax.random.bernoulli(keys[7], 0.5, (k,))
    extra = jax.random.normal(jax.random.fold_in(key, 9), (j + k, self.features))
    pair = present[:, None] & present[None, :]
    channel = jnp.stack([pair] + [pair & jnp.eye(s, dtype=bool) | pair & (jnp.arange(s)[:, None] < jnp.arange(s))]
                        * (self.channels - 1))
    return EntityObs(circles=shapes[p:], polygons=shapes[:p], joints=extra[:j], thrusters=extra[j:],
                     circle_mask=present[p:], polygon_mask=present[:p], joint_mask=joint_mask,
                     thruster_mask=thruster_mask, attention_mask=channel, joint_indexes=joint_indexes,
                     thruster_indexes=thruster_indexes)

  def reset(self, key):
    time = jnp.zeros((), jnp.int32)
    return CueEntitiesState(time=time), self._obs(key, time)

  def step(self, key, state, action):
    correct = action == state.time % self.num_actions
    time = state.time + 1
    return base.StepResult(state=CueEntitiesState(time=time), obs=self._obs(key, time),
                           reward=correct.astype(jnp.float32), terminated=jnp.logical_not(correct),
                           truncated=time >= self.length)
