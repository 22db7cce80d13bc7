"""A reset pool (optimistic resets): finished episodes start from a pre-sampled state instead of a fresh reset.

Plain auto-reset computes `env.reset` for every env at every step (under vmap both branches of the select run), which
dominates when resets are expensive — Kinetix samples and filters a random level, Craftax generates a world. The pool
holds `size` start states; each env step re-samples `refresh` of them (a ring, oldest first), and an env whose
episode ended takes the entry at an index drawn uniformly from its own key. Because the index is drawn fresh and
independently of what is in the pool, a start state's chance of being used does not depend on how its episodes go,
so start states follow the plain reset distribution (tested); envs that finish close together may share one.

The pool is replicated on every device (it is indexed by every env) and refreshed from the run's key, so results do
not depend on the device count; each device computes the `refresh` resets itself.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from jaxtyping import Array, Int

from envs import base


@struct.dataclass
class ResetPool:
  """`size` start states of one env, stacked."""
  state: Any  # env state pytree, leaves [P, ...]
  obs: Any  # observations [P, ...] (an array or the env's observation pytree)
  cursor: Int[Array, ""]  # first entry of the next refresh batch


def pool_size(pool: ResetPool) -> int:
  return jax.tree.leaves(pool.obs)[0].shape[0]


def _take(tree, index):
  return jax.tree.map(lambda x: x[index], tree)


def init_pool(env: base.Environment, key: jax.Array, size: int) -> ResetPool:
  state, obs = jax.vmap(env.reset)(jax.random.split(key, size))
  return ResetPool(state=state, obs=obs, cursor=jnp.zeros((), jnp.int32))


def draw_many(pool: ResetPool, key: jax.Array, num: int) -> tuple[Any, Any]:
  """`num` start states drawn uniformly from the pool (how the runner starts when the pool is on, so that an
  expensive reset is neither paid nor compiled once more for the first episodes)."""
  index = jax.random.randint(key, (num,), 0, pool_size(pool))
  return _take(pool.state, index), _take(pool.obs, index)


def refresh(env: base.Environment, pool: ResetPool, key: jax.Array, count: int) -> ResetPool:
  """Re-samples the `count` oldest entries (`count` divides the pool size, so a batch never wraps)."""
  size = pool_size(pool)
  state, obs = jax.vmap(env.reset)(jax.random.split(key, count))
  put = lambda old, new: jax.lax.dynamic_update_slice_in_dim(old, new.astype(old.dtype), pool.cursor, axis=0)
  return ResetPool(state=jax.tree.map(put, pool.state, state), obs=jax.tree.map(put, pool.obs, obs),
                   cursor=(pool.cursor + count) % size)


def pooled_auto_reset_step(env: base.Environment, pool: ResetPool, key: jax.Array, state: Any,
                           action: jax.Array) -> base.AutoResetStep:
  """`base.auto_reset_step` for one env, but a finished episode restarts from a uniformly drawn pool entry."""
  step_key, draw_key = jax.random.split(key)
  res = env.step(step_key, state, action)
  done = jnp.logical_or(res.terminated, res.truncated)
  index = jax.random.randint(draw_key, (), 0, pool_size(pool))
  reset_state = _take(pool.state, index)
  return base.AutoResetStep(
      state=base.tree_select(done, reset_state, res.state),
      obs=base.tree_select(done, _take(pool.obs, index), res.obs),
      reward=res.reward.astype(jnp.float32),
      terminated=res.terminated,
      truncated=jnp.logical_and(res.truncated, jnp.logical_not(res.terminated)),
      final_obs=res.obs,
  )


def buffered_auto_reset_step(env: base.Environment, pool: ResetPool, buffer: Any, buffer_ratio: float,
                             key: jax.Array, state: Any, action: jax.Array) -> tuple[base.AutoResetStep, jax.Array]:
  """`pooled_auto_reset_step` with a level buffer (pipeline/sfl.py: any pytree with `state` and `obs` leaves
  [K, ...]): a finished episode restarts from a uniformly drawn buffer level with probability `buffer_ratio`, else
  from the pool. Also returns whether this step restarted from the buffer."""
  step_key, draw_key, pick_key, buffer_key = jax.random.split(key, 4)
  res = env.step(step_key, state, action)
  done = jnp.logical_or(res.terminated, res.truncated)
  from_buffer = jax.random.uniform(pick_key) < buffer_ratio
  index = jax.random.randint(draw_key, (), 0, pool_size(pool))
  buffer_index = jax.random.randint(buffer_key, (), 0, jax.tree.leaves(buffer.obs)[0].shape[0])
  reset_state = base.tree_select(from_buffer, _take(buffer.state, buffer_index), _take(pool.state, index))
  reset_obs = base.tree_select(from_buffer, _take(buffer.obs, buffer_index), _take(pool.obs, index))
  out = base.AutoResetStep(
      state=base.tree_select(done, reset_state, res.state),
      obs=base.tree_select(done, reset_obs, res.obs),
      reward=res.reward.astype(jnp.float32),
      terminated=res.terminated,
      truncated=jnp.logical_and(res.truncated, jnp.logical_not(res.terminated)),
      final_obs=res.obs,
  )
  return out, done & from_buffer
