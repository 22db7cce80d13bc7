"""The entity actor-critic: a transformer over a scene's shapes, for entity observations (envs/entities.EntityObs).

The structure of kinetix-env's baseline, written for this trainer:
  1. embed each entity type with its own layer (polygons and circles are shapes, each type also gets a learned
     type vector; joints and thrusters get their own embeddings), and put a learned "dummy" entity in front;
  2. `layers` × [pre-norm multi-head self-attention over the dummy and the shapes, masked to present shapes and to
     the observation's attention mask (heads split evenly over its channels), residual; a pre-norm dense layer,
     residual; joint and thruster messages: each joint reads the two shapes it connects (and each thruster its
     shape) with its own features, and its message is added to the shape it belongs to];
  3. pool: the dummy's embedding next to the mean over present shapes ("dummy and mean");
  4. the actor and critic MLP heads of learner/networks.py on the pooled vector.
Absent slots never reach a present one: their features are zeroed before use (so garbage or NaN there changes
nothing), attention to them is masked, and the messages of absent joints and thrusters are dropped. Differences from
kinetix-env's model: plain residuals instead of its GRU-style gating, a learned dummy instead of ones, the pooled
dummy and mean concatenated (kinetix-env averages the dummy in with the shapes), no RNN.
"""
from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from envs.entities import EntityObs
from learner import code_path, distributions, networks


def _gather(x, index):
  """x [B, S, W], index [B, J] -> [B, J, W]. Accelerators: a one-hot matmul (the gather's gradient is a scatter-add
  with colliding rows, which XLA:GPU orders by atomics; learner/code_path.py)."""
  if code_path.cpu_forms():
    return jnp.take_along_axis(x, index[..., None], axis=1)
  return jnp.einsum("bjs,bsw->bjw", jax.nn.one_hot(index, x.shape[1], dtype=x.dtype), x)


def _scatter_add(x, index, update):
  """x [B, S, W] with update [B, J, W] added at rows index [B, J] (accelerators: a one-hot matmul, as `_gather`)."""
  if code_path.cpu_forms():
    return jax.vmap(lambda a, i, u: a.at[i].add(u))(x, index, update)
  return x + jnp.einsum("bjs,bjw->bsw", jax.nn.one_hot(index, x.shape[1], dtype=update.dtype), update)


def _where(mask, x):
  return jnp.where(mask[..., None], x, 0.0)


class EntityLayer(nn.Module):
  """One transformer layer over [B, 1 + S, W] shape embeddings, then the joint and thruster messages."""
  width: int
  heads: int
  qkv_features: int
  activation: str

  @nn.compact
  def __call__(self, x, attention_mask, joints, joint_index, joint_mask, thrusters, thruster_index, thruster_mask):
    act = networks.ACTIVATIONS[self.activation]
    y = nn.MultiHeadDotProductAttention(num_heads=self.heads, qkv_features=self.qkv_features,
                                        out_features=self.width)(nn.LayerNorm()(x), mask=attention_mask)
    x = x + y
    x = x + act(networks.Dense(self.width)(nn.LayerNorm()(x)))
    joint_in = jnp.concatenate([_gather(x, joint_index[..., 0]), _gather(x, joint_index[..., 1]), joints], axis=-1)
    x = _scatter_add(x, joint_index[..., 0], _where(joint_mask, networks.Dense(self.width)(joint_in)))
    thruster_in = jnp.concatenate([_gather(x, thruster_index), thrusters], axis=-1)
    return _scatter_add(x, thruster_index, _where(thruster_mask, networks.Dense(self.width)(thruster_in)))


class EntityEncoder(nn.Module):
  """EntityObs with leading batch axes [*B] -> the pooled scene embedding [*B, 2 W]."""
  width: int = 128
  layers: int = 2
  heads: int = 8
  qkv_features: int = 16
  activation: str = "tanh"

  @nn.compact
  def __call__(self, obs: EntityObs):
    batch = obs.polygon_mask.shape[:-1]
    obs = jax.tree.map(lambda a: a.reshape((-1,) + a.shape[len(batch):]), obs)  # one batch axis
    act = networks.ACTIVATIONS[self.activation]
    dense = lambda name: networks.Dense(self.width, kernel_init=nn.initializers.orthogonal(np.sqrt(2)), name=name)
    embed = lambda name, feats, mask: _where(mask, act(dense(name)(_where(mask, feats))))
    type_vectors = self.param("type_vectors", nn.initializers.normal(0.1), (2, self.width))
    polygons = embed("polygon", obs.polygons, obs.polygon_mask) + type_vectors[0]
    circles = embed("circle", obs.circles, obs.circle_mask) + type_vectors[1]
    joints = embed("joint", obs.joints, obs.joint_mask)
    thrusters = embed("thruster", obs.thrusters, obs.thruster_mask)
    num = polygons.shape[0]
    dummy = jnp.broadcast_to(self.param("dummy", nn.initializers.ones, (self.width,)), (num, 1, self.width))
    present = jnp.concatenate([jnp.ones((num, 1), bool), obs.polygon_mask, obs.circle_mask], axis=-1)
    x = _where(present, jnp.concatenate([dummy, polygons, circles], axis=1))

    channels = obs.attention_mask.shape[1]
    if self.heads % channels:
      raise ValueError(f"{self.heads} attention heads cannot be split over {channels} attention-mask channels")
    # The dummy sees and is seen by every present shape; the observation's mask decides between shapes.
    mask = jnp.pad(obs.attention_mask, ((0, 0), (0, 0), (1, 0), (1, 0)), constant_values=True)
    mask = jnp.repeat(mask, self.heads // channels, axis=1) & present[:, None, :, None] & present[:, None, None, :]
    joint_index, thruster_index = obs.joint_indexes + 1, obs.thruster_indexes + 1  # after the dummy
    # An absent joint's or thruster's index may be anything: clamp it into range (its message is dropped anyway).
    joint_index = jnp.clip(jnp.where(obs.joint_mask[..., None], joint_index, 0), 0, x.shape[1] - 1)
    thruster_index = jnp.clip(jnp.where(obs.thruster_mask, thruster_index, 0), 0, x.shape[1] - 1)
    for i in range(self.layers):
      x = EntityLayer(self.width, self.heads, self.qkv_features, self.activation, name=f"layer_{i}")(
          x, mask, joints, joint_index, obs.joint_mask, thrusters, thruster_index, obs.thruster_mask)
      x = _where(present, x)
    shapes = present[:, 1:]
    mean = x[:, 1:].sum(axis=1) / jnp.maximum(shapes.sum(axis=1, keepdims=True), 1)
    pooled = jnp.concatenate([x[:, 0], mean], axis=-1)
    return pooled.reshape(batch + pooled.shape[-1:])


class EntityActorCritic(nn.Module):
  """`networks.ActorCritic`'s interface (`__call__` -> (head, value), `.value`) on entity observations: one shared
  encoder (as kinetix-env's), separate actor and critic MLPs on its pooled embedding."""
  dist: distributions.Distribution
  hidden_sizes: Sequence[int] = (128, 128)
  activation: str = "tanh"
  width: int = 128
  layers: int = 2
  heads: int = 8
  qkv_features: int = 16

  def setup(self):
    self.encoder = EntityEncoder(self.width, self.layers, self.heads, self.qkv_features, self.activation)
    self.heads_ = networks.ActorCritic(self.dist, tuple(self.hidden_sizes), self.activation)

  def __call__(self, obs: EntityObs):
    return self.heads_(self.encoder(obs))

  def value(self, obs: EntityObs):
    return self.heads_.value(self.encoder(obs))
