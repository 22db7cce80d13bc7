"""The PPO loss on one minibatch: clipped surrogate, clipped value loss, entropy bonus.

Advantages are normalised per minibatch. Besides the loss it returns the statistics the trainer logs. Given
`proximal_params` it is PPO-EWMA's decoupled objective (Hilton et al. 2022): the ratio is clipped around the proximal
policy, and the behaviour policy enters only through the importance weight π_prox / π_behaviour.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from jaxtyping import Array, Float

from learner import distributions


@struct.dataclass
class Minibatch:
  """The SGD inputs for M samples."""
  obs: Any  # [M, obs], or the env's observation pytree with leaves [M, ...]
  action: Array  # [M] int32 or [M, A]
  log_prob: Float[Array, "M"]  # behaviour policy log-prob of `action`
  value: Float[Array, "M"]  # behaviour critic's value, for value clipping
  advantage: Float[Array, "M"]
  target: Float[Array, "M"]  # return target for the critic
  behaviour_head: Float[Array, "M P"] | None = None  # the behaviour policy's distribution params (diagnostics only)


@struct.dataclass
class LossAux:
  policy_loss: jax.Array
  value_loss: jax.Array
  entropy: jax.Array
  approx_kl: jax.Array  # E[(r - 1) - log r], the low-variance k3 estimator of KL(behaviour ‖ current)
  clip_fraction: jax.Array


def ppo_loss(params, mb: Minibatch, *, apply_fn: Callable, dist: distributions.Distribution, clip_eps: float,
             vf_coef: float, ent_coef: float, advantage_stats: tuple[jax.Array, jax.Array] | None = None,
             proximal_params=None) -> tuple[jax.Array, LossAux]:
  """`advantage_stats` = (mean, std) of the whole minibatch when `mb` is one chunk of it (pipeline/sgd_chunks.py);
  by default they are taken over `mb`. `proximal_params`: PPO-EWMA's proximal policy (see the module docstring)."""
  head, value = apply_fn(params, mb.obs)
  log_prob = dist.log_prob(head, mb.action)
  log_ratio = log_prob - mb.log_prob
  ratio = jnp.exp(log_ratio)

  adv_mean, adv_std = advantage_stats if advantage_stats is not None else (mb.advantage.mean(), mb.advantage.std())
  adv = (mb.advantage - adv_mean) / (adv_std + 1e-8)
  if proximal_params is None:  # the proximal policy is the behaviour policy: weight 1
    weight, clip_ratio = 1.0, ratio
  else:
    prox_log_prob = jax.lax.stop_gradient(dist.log_prob(apply_fn(proximal_params, mb.obs)[0], mb.action))
    weight, clip_ratio = jnp.exp(prox_log_prob - mb.log_prob), jnp.exp(log_prob - prox_log_prob)
  surrogate = weight * jnp.minimum(clip_ratio * adv, jnp.clip(clip_ratio, 1.0 - clip_eps, 1.0 + clip_eps) * adv)
  policy_loss = -surrogate.mean()

  value_clipped = mb.value + jnp.clip(value - mb.value, -clip_eps, clip_eps)
  value_loss = 0.5 * jnp.maximum((value - mb.target)**2, (value_clipped - mb.target)**2).mean()

  entropy = dist.entropy(head).mean()
  loss = policy_loss + vf_coef * value_loss - ent_coef * entropy
  aux = LossAux(
      policy_loss=policy_loss,
      value_loss=value_loss,
      entropy=entropy,
      approx_kl=((ratio - 1.0) - log_ratio).mean(),
      clip_fraction=(jnp.abs(clip_ratio - 1.0) > clip_eps).mean(),  # against the proximal policy
  )
  return loss, aux
