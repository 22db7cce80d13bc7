"""Rollout: `num_steps` of vmapped auto-reset env steps under the current policy, as one lax.scan.

Randomness is drawn per env from keys split over the global env axis, so it does not depend on how envs are placed
on devices.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from jaxtyping import Array, Bool, Float

from envs import base
from learner import distributions


@struct.dataclass
class RunnerState:
  """The live envs: sharded over the env axis N."""
  env_state: Any  # env-specific pytree, leaves [N, ...]
  obs: Float[Array, "N obs"]
  episode_return: Float[Array, "N"]  # return so far of each env's current episode


@struct.dataclass
class Trajectory:
  """One rollout, time-major."""
  obs: Float[Array, "T N obs"]
  action: Array  # [T, N] int32 or [T, N, A]
  log_prob: Float[Array, "T N"]
  head: Float[Array, "T N P"] | None  # the behaviour policy's distribution params (exact KL diagnostic), if kept
  value: Float[Array, "T N"]
  reward: Float[Array, "T N"]
  terminated: Bool[Array, "T N"]
  truncated: Bool[Array, "T N"]
  truncation_value: Float[Array, "T N"]  # V(final obs) where truncated, else 0


@struct.dataclass
class EpisodeStats:
  """Training episodes that finished during a rollout."""
  return_sum: jax.Array
  count: jax.Array


def init_runner(env: base.Environment, key: jax.Array, num_envs: int) -> RunnerState:
  env_state, obs = jax.vmap(env.reset)(jax.random.split(key, num_envs))
  return RunnerState(env_state=env_state, obs=obs, episode_return=jnp.zeros((num_envs,), jnp.float32))


def rollout(params, runner: RunnerState, key: jax.Array, *, env: base.Environment, apply_fn: Callable,
            value_fn: Callable, dist: distributions.Distribution, num_steps: int,
            constrain: Callable = lambda x: x,
            keep_head: bool = False) -> tuple[RunnerState, Trajectory, Float[Array, "N"], EpisodeStats]:
  """Steps all envs `num_steps` times. Returns the new runner, the trajectory, V(last obs) and episode stats.

  `constrain` pins the runner's env axis to the mesh (a no-op on one device). `keep_head` stores the policy's
  distribution params in the trajectory (for the KL diagnostic; [T, N, P] floats more).
  """
  num_envs = runner.obs.shape[0]

  def step(carry, step_key):
    runner, stats = carry
    act_key, env_key = jax.random.split(step_key)
    head, value = apply_fn(params, runner.obs)
    action = dist.sample(act_key, head)
    log_prob = dist.log_prob(head, action)
    out = jax.vmap(base.auto_reset_step, in_axes=(None, 0, 0, 0))(
        env, jax.random.split(env_key, num_envs), runner.env_state, action)
    truncation_value = jnp.where(out.truncated, value_fn(params, out.final_obs), 0.0)
    done = out.terminated | out.truncated
    episode_return = runner.episode_return + out.reward
    stats = EpisodeStats(return_sum=stats.return_sum + jnp.sum(jnp.where(done, episode_return, 0.0)),
                         count=stats.count + jnp.sum(done, dtype=jnp.int32))
    new_runner = constrain(RunnerState(env_state=out.state, obs=out.obs,
                                       episode_return=jnp.where(done, 0.0, episode_return)))
    transition = Trajectory(obs=runner.obs, action=action, log_prob=log_prob, head=head if keep_head else None,
                            value=value, reward=out.reward, terminated=out.terminated, truncated=out.truncated,
                            truncation_value=truncation_value)
    return (new_runner, stats), transition

  stats0 = EpisodeStats(return_sum=jnp.zeros((), jnp.float32), count=jnp.zeros((), jnp.int32))
  (runner, stats), traj = jax.lax.scan(step, (runner, stats0), jax.random.split(key, num_steps))
  last_value = value_fn(params, runner.obs)
  return runner, traj, last_value, stats
