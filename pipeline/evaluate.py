"""Evaluation: the deterministic (mode) policy, one episode in each of `num_episodes` parallel envs."""
from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from envs import base
from learner import distributions


def make_evaluate(env: base.Environment, apply_fn: Callable, dist: distributions.Distribution,
                  num_episodes: int) -> Callable:
  """Returns `(params, key) -> mean undiscounted return`; each env stops at its first episode end."""

  def evaluate(params, key):
    reset_key, step_key = jax.random.split(key)
    env_state, obs = jax.vmap(env.reset)(jax.random.split(reset_key, num_episodes))
    zeros = jnp.zeros((num_episodes,), jnp.float32)
    init = (env_state, obs, zeros, jnp.zeros((num_episodes,), bool), step_key, jnp.zeros((), jnp.int32))

    def cond(carry):
      *_, done, _, t = carry
      return jnp.logical_and(t < env.max_episode_steps, jnp.logical_not(jnp.all(done)))

    def body(carry):
      env_state, obs, ret, done, key, t = carry
      key, k = jax.random.split(key)
      head, _ = apply_fn(params, obs)
      res = jax.vmap(env.step)(jax.random.split(k, num_episodes), env_state, dist.mode(head))
      ret = ret + jnp.where(done, 0.0, res.reward)
      done = done | res.terminated | res.truncated
      return res.state, res.obs, ret, done, key, t + 1

    _, _, ret, *_ = jax.lax.while_loop(cond, body, init)
    return ret.mean()

  return evaluate
