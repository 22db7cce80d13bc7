"""Evaluation: the deterministic (mode) policy, one episode in each of `num_episodes` parallel envs."""
from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from envs import base
from learner import distributions
from pipeline import obs_norm as obs_norm_lib


def make_evaluate(env: base.Environment, apply_fn: Callable, dist: distributions.Distribution,
                  num_episodes: int) -> Callable:
  """Returns `(params, key, obs_norm=None) -> mean undiscounted return`; each env stops at its first episode end.

  With `obs_norm` (the run's running statistics) the policy sees normalised observations, as in training; `apply_fn`
  (iteration.Agent.apply) rounds them as obs_store stores them, so the evaluated policy is the trained one.
  """

  def evaluate(params, key, obs_norm=None):
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
      head, _ = apply_fn(params, obs if obs_norm is None else obs_norm_lib.normalize(obs_norm, obs))
      res = jax.vmap(env.step)(jax.random.split(k, num_episodes), env_state, dist.mode(head))
      ret = ret + jnp.where(done, 0.0, res.reward)
      done = done | res.terminated | res.truncated
      return res.state, res.obs, ret, done, key, t + 1

    _, _, ret, *_ = jax.lax.while_loop(cond, body, init)
    return ret.mean()

  return evaluate
