"""The Flax actor-critic: MLP trunks (separate or shared), a policy head sized by the distribution, a value head.

Gaussian heads use a state-independent log-std parameter (as in most PPO implementations), so the head output is
the mean followed by the broadcast log-std.
"""
from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from learner import distributions

THIN = 8  # products with at most this many inputs (or half as many outputs) are written elementwise
ACTIVATIONS = {"tanh": nn.tanh, "relu": nn.relu, "gelu": nn.gelu, "silu": nn.silu}


class Dense(nn.Module):
  """`nn.Dense` (same params, names and init) that computes very thin products as broadcast multiply-adds.

  A product with ≤ 8 inputs (the first layer on CartPole's 4 observations) or ≤ 4 outputs (the policy and value
  heads) does little arithmetic, but as a library matmul, and as its transpose in the backward pass, it costs as
  much as a 64×64 layer on XLA:CPU; written elementwise, XLA fuses it with the activation around it.
  """
  features: int
  kernel_init: Callable = nn.initializers.lecun_normal()
  bias_init: Callable = nn.initializers.zeros

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features))
    bias = self.param("bias", self.bias_init, (self.features,))
    if kernel.shape[0] <= THIN:
      return bias + sum(x[..., i:i + 1] * kernel[i] for i in range(kernel.shape[0]))
    if self.features <= THIN // 2:
      return bias + jnp.stack([jnp.sum(x * kernel[:, j], axis=-1) for j in range(self.features)], axis=-1)
    return x @ kernel + bias


def _dense(features: int, scale: float) -> Dense:
  return Dense(features, kernel_init=nn.initializers.orthogonal(scale), bias_init=nn.initializers.zeros)


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
