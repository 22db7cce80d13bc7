"""The Flax actor-critic: MLP trunks (separate or shared), a policy head sized by the distribution, a value head.

Gaussian heads use a state-independent log-std parameter (as in most PPO implementations), so the head output is
the mean followed by the broadcast log-std.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from learner import distributions

ACTIVATIONS = {"tanh": nn.tanh, "relu": nn.relu, "gelu": nn.gelu, "silu": nn.silu}


def _dense(features: int, scale: float) -> nn.Dense:
  return nn.Dense(features, kernel_init=nn.initializers.orthogonal(scale), bias_init=nn.initializers.zeros)


class MLP(nn.Module):
  hidden_sizes: Sequence[int]
  activation: str

  @nn.compact
  def __call__(self, x):
    act = ACTIVATIONS[self.activation]
    for size in self.hidden_sizes:
      x = act(_dense(size, np.sqrt(2))(x))
    return x


class ActorCritic(nn.Module):
  """Maps observations [..., obs] to (distribution params [..., P], value [...])."""
  dist: distributions.Distribution
  hidden_sizes: Sequence[int] = (64, 64)
  activation: str = "tanh"
  shared_trunk: bool = False

  def setup(self):
    if self.shared_trunk:
      self.trunk = MLP(self.hidden_sizes, self.activation)
    else:
      self.actor = MLP(self.hidden_sizes, self.activation)
      self.critic = MLP(self.hidden_sizes, self.activation)
    self.value_head = _dense(1, 1.0)
    if isinstance(self.dist, distributions.DiagGaussian):
      self.policy_head = _dense(self.dist.dim, 0.01)
      self.log_std = self.param("log_std", nn.initializers.zeros, (self.dist.dim,))
    else:
      self.policy_head = _dense(self.dist.param_size, 0.01)

  def __call__(self, obs: Float[Array, "*B obs"]) -> tuple[Float[Array, "*B P"], Float[Array, "*B"]]:
    obs = obs.astype(jnp.float32)
    if self.shared_trunk:
      actor_h = critic_h = self.trunk(obs)
    else:
      actor_h, critic_h = self.actor(obs), self.critic(obs)
    return self._head(actor_h), self.value_head(critic_h)[..., 0]

  def value(self, obs: Float[Array, "*B obs"]) -> Float[Array, "*B"]:
    """The critic alone (bootstrapping from final observations needs no policy)."""
    obs = obs.astype(jnp.float32)
    return self.value_head(self.trunk(obs) if self.shared_trunk else self.critic(obs))[..., 0]

  def _head(self, h):
    out = self.policy_head(h)
    if isinstance(self.dist, distributions.DiagGaussian):
      out = jnp.concatenate([out, jnp.broadcast_to(self.log_std, out.shape)], axis=-1)
    return out
