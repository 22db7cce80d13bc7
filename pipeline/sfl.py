"""Sampling For Learnability (SFL, Rutherford et al. 2024; kinetix-env's ued/sfl): a buffer of the start states
("levels") the current policy solves about half the time, which a share of finished episodes restart from.

Every `rescore_every` updates, `num_batches` × `batch_size` fresh levels are drawn from the env's own reset (the
generator) and each is played for `rollout_steps` steps by the sampled policy, restarting from the same level
whenever an episode ends. A level's success rate p is the share of its finished episodes that the env counts as
solved (`env.success`: Kinetix's goal reached; 0 when no episode finished), its learnability is p·(1−p), and the
`buffer_size` levels of highest p·(1−p) + 0.001·p (kinetix-env's tie-break towards solved levels) become the
buffer. Between re-scorings a finished episode restarts from a uniformly drawn buffer level with probability
`buffer_ratio`, else from the generator (the reset pool, envs/reset_pool.py).

Levels are whole start states, so this works for any env whose episodes can start from a stored state and which
says what success is. The buffer lives in the runner (replicated, checkpointed with it); the scoring is the same
kind of vmapped, env-sharded scan as the rollout, with keys split over the global level index, so its result does
not depend on the device count.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from jaxtyping import Array, Float

from envs import base
from learner import distributions

TIE_BREAK = 0.001  # kinetix-env: among equally learnable levels prefer the more often solved
SFL_STREAM = 0x73666C  # folded into the update's key for the re-scoring


@dataclasses.dataclass(frozen=True)
class SFLSettings:
  """The level sampler's resolved settings (launch/config/resolve.py)."""
  batch_size: int = 4096  # levels scored per batch
  num_batches: int = 3  # batches scored per re-scoring
  rollout_steps: int = 512  # policy steps per scored level
  buffer_size: int = 1024  # the most learnable levels kept
  rescore_every: int = 128  # updates between re-scorings (the first before update 1)
  buffer_ratio: float = 0.5  # share of resets drawn from the buffer


@struct.dataclass
class LevelBuffer:
  """The `buffer_size` most learnable levels of the last re-scoring, with their scores."""
  state: Any  # env start states, leaves [K, ...]
  obs: Any  # their observations [K, ...]
  learnability: Float[Array, "K"]  # p·(1−p)
  success: Float[Array, "K"]  # p


@struct.dataclass
class SFLMetrics:
  """Per update: the buffer's scores (constant between re-scorings) and how many resets it served."""
  learnability_mean: jax.Array
  learnability_min: jax.Array
  learnability_max: jax.Array
  success_mean: jax.Array
  success_min: jax.Array
  success_max: jax.Array
  buffer_resets: jax.Array  # episodes of this update's rollout that restarted from the buffer
  resets: jax.Array  # all episodes of this update's rollout that restarted


def learnability(success: jax.Array) -> jax.Array:
  return success * (1.0 - success)


def select(state: Any, obs: Any, success: Float[Array, "L"], size: int) -> LevelBuffer:
  """The `size` levels of highest p·(1−p) + TIE_BREAK·p (ties: the lower level index first)."""
  _, index = jax.lax.top_k(learnability(success) + TIE_BREAK * success, size)
  take = lambda tree: jax.tree.map(lambda x: x[index], tree)
  return LevelBuffer(state=take(state), obs=take(obs), learnability=learnability(success[index]),
                     success=success[index])


def init_buffer(env: base.Environment, key: jax.Array, size: int) -> LevelBuffer:
  """Generator levels with zero scores: what the buffer holds before the first re-scoring replaces it."""
  state, obs = jax.vmap(env.reset)(jax.random.split(key, size))
  zeros = jnp.zeros((size,), jnp.float32)
  return LevelBuffer(state=state, obs=obs, learnability=zeros, success=zeros)


def success_rates(params, state: Any, obs: Any, key: jax.Array, *, env: base.Environment, apply_fn: Callable,
                  dist: distributions.Distribution, num_steps: int, normalize: Callable = lambda obs: obs,
                  constrain: Callable = lambda x: x) -> Float[Array, "L"]:
  """Each level's success rate over `num_steps` sampled-policy steps, every episode restarting from that level."""
  start_state, start_obs = state, obs
  num_levels = jax.tree.leaves(obs)[0].shape[0]
  level_keys = jax.random.split(key, num_levels)  # per level (global index), so independent of the device count

  def step(carry, t):
    state, obs, done_count, solved_count = carry
    keys = jax.vmap(lambda k: jax.random.split(jax.random.fold_in(k, t)))(level_keys)
    head, _ = apply_fn(params, normalize(obs))
    action = jax.vmap(dist.sample)(keys[:, 0], head)
    res = jax.vmap(env.step)(keys[:, 1], state, action)
    done = res.terminated | res.truncated
    solved = jax.vmap(env.success)(res)
    restart = lambda start, now: jax.vmap(lambda d, a, b: jnp.where(d, a, b))(done, start, now)
    state = jax.tree.map(restart, start_state, res.state)
    obs = jax.tree.map(restart, start_obs, res.obs)
    carry = constrain((state, obs, done_count + done.astype(jnp.int32), solved_count + solved.astype(jnp.int32)))
    return carry, None

  zeros = jnp.zeros((num_levels,), jnp.int32)
  (_, _, done_count, solved_count), _ = jax.lax.scan(step, constrain((state, obs, zeros, zeros)),
                                                     jnp.arange(num_steps))
  return jnp.where(done_count > 0, solved_count / jnp.maximum(done_count, 1), 0.0).astype(jnp.float32)


def rescore(params, key: jax.Array, *, env: base.Environment, apply_fn: Callable, dist: distributions.Distribution,
            settings: SFLSettings, normalize: Callable = lambda obs: obs,
            constrain: Callable = lambda x: x) -> LevelBuffer:
  """A new buffer: `num_batches` batches of generator levels scored, the most learnable kept."""

  def score_batch(_, batch_key):
    gen_key, play_key = jax.random.split(batch_key)
    state, obs = constrain(jax.vmap(env.reset)(jax.random.split(gen_key, settings.batch_size)))
    p = success_rates(params, state, obs, play_key, env=env, apply_fn=apply_fn, dist=dist,
                      num_steps=settings.rollout_steps, normalize=normalize, constrain=constrain)
    return None, (state, obs, p)

  _, (state, obs, p) = jax.lax.scan(score_batch, None, jax.random.split(key, settings.num_batches))
  flat = lambda tree: jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), tree)
  return select(flat(state), flat(obs), p.reshape(-1), settings.buffer_size)


def metrics(buffer: LevelBuffer, buffer_resets: jax.Array, resets: jax.Array) -> SFLMetrics:
  lrn, suc = buffer.learnability, buffer.success
  return SFLMetrics(learnability_mean=lrn.mean(), learnability_min=lrn.min(), learnability_max=lrn.max(),
                    success_mean=suc.mean(), success_min=suc.min(), success_max=suc.max(),
                    buffer_resets=buffer_resets, resets=resets)


def summarize(stacked: SFLMetrics) -> dict[str, float | None]:
  """A metrics row's SFL values: the buffer's scores as of the interval's last update, the interval's share of
  resets drawn from the buffer (None without resets)."""
  row = {f"sfl_{name}": float(getattr(stacked, name)[-1]) for name in (
      "learnability_mean", "learnability_min", "learnability_max", "success_mean", "success_min", "success_max")}
  resets = int(stacked.resets.sum())
  row["sfl_buffer_share"] = float(stacked.buffer_resets.sum()) / resets if resets else None
  return row
