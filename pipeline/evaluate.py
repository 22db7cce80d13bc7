"""Evaluation: one episode in each of `num_episodes` parallel envs, acting with the policy's mode (its most likely
action) or, with `sampled`, drawing actions as in training. Besides the mean return it counts the distinct episodes:
a deterministic env played by the mode policy repeats a few trajectories however many episodes it runs (gymnax's
MinAtar: 1-2), and the count says how much of the task an evaluation sampled."""
from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import struct

from envs import base
from learner import distributions
from pipeline import obs_norm as obs_norm_lib


@struct.dataclass
class Evaluation:
  mean_return: jax.Array  # float32: the undiscounted return, averaged over the episodes
  distinct: jax.Array  # int32: distinct (return, length) pairs among them, a lower bound on the distinct episodes


def distinct_pairs(returns: jax.Array, lengths: jax.Array) -> jax.Array:
  """How many different (return, length) pairs the episodes have (sorted, then the changes counted)."""
  order = jnp.lexsort((lengths, returns))
  r, n = returns[order], lengths[order]
  return 1 + jnp.sum((r[1:] != r[:-1]) | (n[1:] != n[:-1])).astype(jnp.int32)


def make_evaluate(env: base.Environment, apply_fn: Callable, dist: distributions.Distribution,
                  num_episodes: int, sampled: bool = False) -> Callable:
  """Returns `(params, key, obs_norm=None) -> Evaluation`; each env stops at its first episode end.

  With `obs_norm` (the run's running statistics) the policy sees normalised observations, as in training; `apply_fn`
  (iteration.Agent.apply) rounds them as obs_store stores them, so the evaluated policy is the trained one.
  """

  def evaluate(params, key, obs_norm=None):
    reset_key, step_key = jax.random.split(key)
    env_state, obs = jax.vmap(env.reset)(jax.random.split(reset_key, num_episodes))
    zeros = jnp.zeros((num_episodes,), jnp.float32)
    lengths = jnp.zeros((num_episodes,), jnp.int32)
    init = (env_state, obs, zeros, lengths, jnp.zeros((num_episodes,), bool), step_key, jnp.zeros((), jnp.int32))

    def cond(carry):
      *_, done, _, t = carry
      return jnp.logical_and(t < env.max_episode_steps, jnp.logical_not(jnp.all(done)))

    def body(carry):
      env_state, obs, ret, length, done, key, t = carry
      key, k = jax.random.split(key)
      head, _ = apply_fn(params, obs if obs_norm is None else obs_norm_lib.normalize(obs_norm, obs))
      if sampled:
        k, action_key = jax.random.split(k)
        action = dist.sample(action_key, head)
      else:
        action = dist.mode(head)
      res = jax.vmap(env.step)(jax.random.split(k, num_episodes), env_state, action)
      ret = ret + jnp.where(done, 0.0, res.reward)
      length = length + jnp.logical_not(done).astype(jnp.int32)
      done = done | res.terminated | res.truncated
      return res.state, res.obs, ret, length, done, key, t + 1

    _, _, ret, length, *_ = jax.lax.while_loop(cond, body, init)
    return Evaluation(mean_return=ret.mean(), distinct=distinct_pairs(ret, length))

  return evaluate
