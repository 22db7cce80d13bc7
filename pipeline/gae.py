"""Generalised advantage estimation that bootstraps through truncation but not through termination."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float


def gae(reward: Float[Array, "T N"], value: Float[Array, "T N"], terminated: Bool[Array, "T N"],
        truncated: Bool[Array, "T N"], truncation_value: Float[Array, "T N"], last_value: Float[Array, "N"], *,
        gamma: float, gae_lambda: float) -> tuple[Float[Array, "T N"], Float[Array, "T N"]]:
  """Returns (advantages, value targets).

  Step t bootstraps from the next state's value: V(s_{t+1}) inside an episode, V(final obs) where a time limit
  truncated it, and 0 where it terminated. The λ-recursion stops at every episode boundary.
  """
  next_value = jnp.concatenate([value[1:], last_value[None]], axis=0)
  bootstrap = jnp.where(truncated, truncation_value, next_value)
  bootstrap = jnp.where(terminated, 0.0, bootstrap)
  delta = reward + gamma * bootstrap - value
  carry_on = gamma * gae_lambda * (1.0 - (terminated | truncated).astype(jnp.float32))

  def backward(next_adv, xs):
    delta_t, carry_t = xs
    adv = delta_t + carry_t * next_adv
    return adv, adv

  _, advantages = jax.lax.scan(backward, jnp.zeros_like(last_value), (delta, carry_on), reverse=True)
  return advantages, advantages + value
