"""Kinetix's headline metric: the solve rate on hand-designed levels, per level, per size and overall.

Each level is played `attempts` times by the sampled policy, as kinetix-env reports it (its eval samples actions
at temperature 1, 20 attempts per level): Kinetix's physics and a fixed level are deterministic, so the mode policy
would score each level 0 or 1 and be a different, noisier measure than the published numbers. A level's solve rate
is the fraction of its attempts whose first episode ended at the goal (`env.success`). Randomness is drawn per
(level, attempt, step) from the level's index, so a level's rate does not depend on which levels are evaluated with it.
With the run's observation statistics the policy sees normalised observations, as it does in training.
"""
from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from learner import distributions
from pipeline import obs_norm as obs_norm_lib


def make_solve_rates(env, apply_fn: Callable, dist: distributions.Distribution, attempts: int) -> Callable:
  """`(params, key, levels [L, ...], level_ids [L], obs_norm=None) -> solve rate per level [L]` for levels of one
  size played in `env` (its step and observation; the levels' start states replace its reset). `obs_norm`: the run's
  running statistics (None when off), as in pipeline/evaluate.py: a policy trained on normalised observations is
  another policy on raw ones."""
  obs_of = jax.vmap(env._obs)  # pylint: disable=protected-access  (the adapter's observation of a state)

  def observe(state, obs_norm):
    obs = obs_of(state)
    return obs if obs_norm is None else obs_norm_lib.normalize(obs_norm, obs)

  def solve_rates(params, key, levels, level_ids, obs_norm=None):
    num_levels = level_ids.shape[0]
    state = jax.tree.map(lambda x: jnp.repeat(x, attempts, axis=0), levels)  # level-major [L * A, ...]
    keys = jax.vmap(lambda i: jax.random.split(jax.random.fold_in(key, i), attempts))(level_ids).reshape(-1, 2)
    zeros = jnp.zeros((num_levels * attempts,), bool)

    def cond(carry):
      _, done, _, t = carry
      return (t < env.max_episode_steps) & ~jnp.all(done)

    def body(carry):
      state, done, solved, t = carry
      step_keys = jax.vmap(lambda k: jax.random.split(jax.random.fold_in(k, t)))(keys)
      head, _ = apply_fn(params, observe(state, obs_norm))
      action = jax.vmap(dist.sample)(step_keys[:, 0], head)
      res = jax.vmap(env.step)(step_keys[:, 1], state, action)
      solved = solved | (~done & env.success(res))
      return res.state, done | res.terminated | res.truncated, solved, t + 1

    _, _, solved, _ = jax.lax.while_loop(cond, body, (state, zeros, zeros, jnp.zeros((), jnp.int32)))
    return solved.reshape(num_levels, attempts).mean(axis=1)

  return solve_rates


def summarize(rates: dict[str, float]) -> dict[str, float]:
  """Per-level rates (name "s/h0_weak_thrust" -> rate) -> `solve_rate_<size>` per size present and `solve_rate`."""
  out = {}
  for size in sorted({n.split("/")[0] for n in rates}):
    values = [r for n, r in rates.items() if n.split("/")[0] == size]
    out[f"solve_rate_{size}"] = sum(values) / len(values)
  out["solve_rate"] = sum(rates.values()) / max(len(rates), 1)
  return out
