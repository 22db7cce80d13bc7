"""Rollout: `num_steps` of vmapped auto-reset env steps under the current policy, as one lax.scan.

Randomness is drawn per env from keys split over the global env axis, so it does not depend on how envs are placed
on devices. Optionally the policy sees running-normalised observations (pipeline/obs_norm.py) and finished episodes
restart from a reset pool (envs/reset_pool.py); both are replicated state threaded through the scan.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import struct
from jaxtyping import Array, Float

from envs import base
from envs import reset_pool as reset_pool_lib
from learner import distributions
from learner import obs_store as obs_store_lib
from pipeline import batch_rows, gae as gae_lib
from pipeline import obs_norm as obs_norm_lib
from pipeline import sfl as sfl_lib


@struct.dataclass
class RunnerState:
  """The actors' state: the live envs, sharded over the env axis N, and what they share (replicated).

  `SHARED` names the shared fields, the one list of them: the rollout, the shardings (sharding/mesh.py, which may
  not import this module and so asks the runner), a resize and its checkpoint target all derive the split from
  `per_env` / `shared` / `with_shared`, so a shared part added later is one field here and its name in `SHARED`."""
  env_state: Any  # env-specific pytree, leaves [N, ...]
  obs: Any  # raw observations: [N, obs], or the env's observation pytree with leaves [N, ...]
  episode_return: Float[Array, "N"]  # return so far of each env's current episode
  obs_norm: obs_norm_lib.RunningMeanStd | None = None  # running observation statistics (config.obs_norm)
  reset_pool: reset_pool_lib.ResetPool | None = None  # pre-sampled start states (config.reset_pool.size > 0)
  level_buffer: sfl_lib.LevelBuffer | None = None  # SFL's most learnable levels (config.level_sampler.kind=sfl)

  SHARED: ClassVar[tuple[str, ...]] = ("obs_norm", "reset_pool", "level_buffer")  # the rest have the env axis

  def per_env(self) -> RunnerState:
    """The parts with an env axis (the shared ones set to None)."""
    return self.replace(**dict.fromkeys(self.SHARED))

  def shared(self) -> RunnerState:
    """The parts shared by all envs (the per-env ones set to None)."""
    per_env = [f.name for f in dataclasses.fields(self) if f.name not in self.SHARED]
    return self.replace(**dict.fromkeys(per_env))

  def with_shared(self, other: RunnerState) -> RunnerState:
    """This runner's per-env parts with `other`'s shared parts (`other` may be a tree of shapes or shardings)."""
    return self.replace(**{name: getattr(other, name) for name in self.SHARED})

  @property
  def num_envs(self) -> int:
    return self.episode_return.shape[0]


@struct.dataclass
class Trajectory:
  """One rollout step of all envs, as the rollout packs it into rows (pipeline/batch_rows.py); leaves [N, ...].

  The fields are in the order of losses.Minibatch's, so that GAE's advantages and targets, written over `reward`
  and `done` in place, make the rows a minibatch source (pipeline/iteration.py)."""
  obs: Any  # [N, obs], or the env's observation pytree with leaves [N, ...]; float leaves bfloat16 if obs_store is
  action: Array  # [N] int16 for discrete actions (exact, one column), or [N, A]
  log_prob: Float[Array, "N"]
  value: Float[Array, "N"]
  reward: Float[Array, "N"]  # with γ·V(final obs) added where a time limit truncated the episode (gae.bootstrap)
  done: Float[Array, "N"]  # 1.0 where the episode ended (terminated or truncated): GAE's recursion stops there
  head: Float[Array, "N P"] | None  # the behaviour policy's distribution params (exact KL diagnostic), if kept


@struct.dataclass
class EpisodeStats:
  """Training episodes that finished during a rollout."""
  return_sum: jax.Array
  count: jax.Array
  buffer_resets: jax.Array | None = None  # of those, episodes restarted from the SFL level buffer (when it is on)


def init_runner(env: base.Environment, key: jax.Array, num_envs: int, obs_norm: bool = False,
                reset_pool_size: int = 0, level_buffer_size: int = 0) -> RunnerState:
  """Fresh envs. With a reset pool the first episodes also start from it (an expensive reset is then neither paid
  nor compiled once more); with obs_norm the statistics start from the first observations' moments."""
  pool = None
  if reset_pool_size:
    pool = reset_pool_lib.init_pool(env, jax.random.fold_in(key, 1), reset_pool_size)
    env_state, obs = reset_pool_lib.draw_many(pool, key, num_envs)
  else:
    env_state, obs = jax.vmap(env.reset)(jax.random.split(key, num_envs))
  stats = obs_norm_lib.update(obs_norm_lib.init(env.observation_spec.shape), obs) if obs_norm else None
  buffer = sfl_lib.init_buffer(env, jax.random.fold_in(key, 2), level_buffer_size) if level_buffer_size else None
  return RunnerState(env_state=env_state, obs=obs, episode_return=jnp.zeros((num_envs,), jnp.float32),
                     obs_norm=stats, reset_pool=pool, level_buffer=buffer)


def rollout(params, runner: RunnerState, key: jax.Array, *, env: base.Environment, apply_fn: Callable,
            value_fn: Callable, dist: distributions.Distribution, num_steps: int,
            gamma: float, constrain: Callable = lambda x: x, keep_head: bool = False,
            pool_refresh: int = 0, buffer_ratio: float = 0.0,
            obs_store: str = "float32") -> tuple[RunnerState, batch_rows.Rows, Float[Array, "N"], EpisodeStats]:
  """Steps all envs `num_steps` times. Returns the new runner, the trajectory as rows (batch_rows.Rows of
  `Trajectory`, [T, N, F]: each step packed as it is taken, so no unpacked batch is ever held), V(last obs) and
  episode stats.

  `gamma` discounts the bootstrap from V(final obs) that truncated steps' rewards carry. `constrain` pins the
  runner's env axis to the mesh (a no-op on one device). `keep_head` stores the policy's distribution params in the
  trajectory (for the KL diagnostic; P floats more per row). With `runner.obs_norm` the
  policy sees normalised observations (the trajectory stores what it saw) and the statistics are updated with every
  step's new observations; with `runner.reset_pool`, `pool_refresh` entries are re-sampled per step and finished
  episodes restart from the pool; with `runner.level_buffer` as well, a `buffer_ratio` share of them from the buffer
  (pipeline/sfl.py), counted in the stats' `buffer_resets`. `obs_store` (learner/obs_store.py): the observations'
  precision in the trajectory; `apply_fn` and `value_fn` must see them at it (iteration.Agent's do), so that the
  stored observation is what the policy acted on.
  """
  num_envs = runner.num_envs
  norm = (lambda stats, obs: obs) if runner.obs_norm is None else obs_norm_lib.normalize

  def step(carry, step_key):
    runner, stats, shared = carry  # shared: the replicated parts (RunnerState.shared), carried apart from the envs
    obs_stats, pool, level_buffer = shared.obs_norm, shared.reset_pool, shared.level_buffer
    from_buffer = None
    act_key, env_key = jax.random.split(step_key)
    obs = obs_store_lib.narrow(norm(obs_stats, runner.obs), obs_store)  # what the policy sees is what is stored
    head, value = apply_fn(params, obs)
    action = dist.sample(act_key, head)
    log_prob = dist.log_prob(head, action)
    env_keys = jax.random.split(env_key, num_envs)
    if pool is None:
      out = jax.vmap(base.auto_reset_step, in_axes=(None, 0, 0, 0))(env, env_keys, runner.env_state, action)
    elif level_buffer is not None:
      pool = reset_pool_lib.refresh(env, pool, jax.random.fold_in(step_key, 1), pool_refresh)
      out, from_buffer = jax.vmap(reset_pool_lib.buffered_auto_reset_step, in_axes=(None, None, None, None, 0, 0, 0))(
          env, pool, level_buffer, buffer_ratio, env_keys, runner.env_state, action)
    else:
      pool = reset_pool_lib.refresh(env, pool, jax.random.fold_in(step_key, 1), pool_refresh)
      out = jax.vmap(reset_pool_lib.pooled_auto_reset_step, in_axes=(None, None, 0, 0, 0))(
          env, pool, env_keys, runner.env_state, action)
    truncation_value = jnp.where(out.truncated, value_fn(params, norm(obs_stats, out.final_obs)), 0.0)
    done = out.terminated | out.truncated
    episode_return = runner.episode_return + out.reward
    # Per env, summed once after the scan: a sum over the env axis here would be a cross-device reduction per step.
    stats = EpisodeStats(return_sum=stats.return_sum + jnp.where(done, episode_return, 0.0),
                         count=stats.count + done.astype(jnp.int32),
                         buffer_resets=None if from_buffer is None else
                         stats.buffer_resets + from_buffer.astype(jnp.int32))
    new_runner = constrain(RunnerState(env_state=out.state, obs=out.obs,
                                       episode_return=jnp.where(done, 0.0, episode_return)))
    if obs_stats is not None:
      obs_stats = obs_norm_lib.update(obs_stats, out.obs)
    transition = step_record(obs, action, log_prob, value,
                             gae_lib.bootstrap(out.reward, out.terminated, out.truncated, truncation_value, gamma),
                             done, head if keep_head else None, dist, obs_store)
    shared = shared.replace(obs_norm=obs_stats, reset_pool=pool)
    return (new_runner, stats, shared), constrain(batch_rows.pack_step(transition))

  counts = lambda: jnp.zeros((num_envs,), jnp.int32)
  stats0 = constrain(EpisodeStats(return_sum=jnp.zeros((num_envs,), jnp.float32), count=counts(),
                                  buffer_resets=None if runner.level_buffer is None else counts()))
  (runner, stats, shared), data = jax.lax.scan(
      step, (runner.per_env(), stats0, runner.shared()), jax.random.split(key, num_steps))
  stats = jax.tree.map(jnp.sum, stats)
  last_value = value_fn(params, norm(shared.obs_norm, runner.obs))
  example = jax.eval_shape(lambda: step_record(
      runner.obs, dist.sample(key, jnp.zeros((num_envs, dist.param_size))), *[jnp.zeros((num_envs,))] * 4,
      jnp.zeros((num_envs, dist.param_size)) if keep_head else None, dist, obs_store))
  return (runner.with_shared(shared), batch_rows.from_steps(data, example), last_value, stats)


def step_record(obs, action, log_prob, value, reward, done, head, dist: distributions.Distribution,
                obs_store: str = "float32") -> Trajectory:
  """What one step stores per env. Discrete actions (< 2^15 of them) as int16: exact in one float32 column,
  where int32 takes two (batch_rows). The observation at `obs_store`'s precision (learner/obs_store.narrow:
  bfloat16, two per column), as the policy saw it."""
  if jnp.issubdtype(action.dtype, jnp.integer) and dist.param_size < 2**15:
    action = action.astype(jnp.int16)
  return Trajectory(obs=obs_store_lib.narrow(obs, obs_store), action=action, log_prob=log_prob, value=value,
                    reward=reward, done=done.astype(jnp.float32), head=head)


RESIZE_STREAM = 0x656C6173  # folded into the run's key for the resets of envs added by a change of num_envs


def resize_runner(env: base.Environment, runner: RunnerState, key: jax.Array, num_envs: int) -> RunnerState:
  """The runner at another env count (a run continued at another num_envs, launch/run/elastic.py).

  Env i < min(old, new) keeps its state, observation and return so far; env i >= old starts a fresh episode from a
  reset keyed by fold_in(fold_in(key, RESIZE_STREAM), i), i.e. by its global index, so the result does not depend on
  the device count (from the reset pool when it is on, drawn the same way). Every leaf of the per-env parts is cut
  or extended along its env axis, whatever the observation's pytree; the shared parts (RunnerState.SHARED: the
  observation statistics, the reset pool, SFL's level buffer) carry over unchanged.
  """
  keep = min(runner.num_envs, num_envs)
  per_env = runner.per_env()
  if keep == num_envs:
    return jax.tree.map(lambda x: x[:keep], per_env).with_shared(runner)
  base_key = jax.random.fold_in(key, RESIZE_STREAM)
  keys = jax.vmap(lambda i: jax.random.fold_in(base_key, i))(jnp.arange(keep, num_envs))
  pool = runner.reset_pool
  if pool is None:
    state, obs = jax.vmap(env.reset)(keys)
  else:
    index = jax.vmap(lambda k: jax.random.randint(k, (), 0, reset_pool_lib.pool_size(pool)))(keys)
    state, obs = jax.tree.map(lambda x: x[index], (pool.state, pool.obs))
  added = per_env.replace(env_state=state, obs=obs, episode_return=jnp.zeros((num_envs - keep,), jnp.float32))
  join = lambda old, new: jnp.concatenate([old[:keep], new.astype(old.dtype)])
  return jax.tree.map(join, per_env, added).with_shared(runner)
