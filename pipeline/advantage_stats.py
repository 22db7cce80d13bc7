"""Every minibatch's advantage mean and std for all epochs of an update, from one streaming pass over the batch.

The PPO loss normalises advantages with its minibatch's mean and std. Gathering them per minibatch
(pipeline/sgd_chunks.advantage_stats) reads every sample once per epoch at a random address, and once the batch
no longer fits in the CPU caches each read waits on memory: at 131,072 envs × 128 steps that gather was ≈ 15% of
the learn stage. Here each sample is read once per update, in memory order: the permutation's inverse
(pipeline/permutation.positions) says which minibatch of each epoch it falls in, and per-minibatch sums are
scattered into [epochs × minibatches] accumulators, one time step at a time.

Per time step the sums are taken around that step's mean (so squares do not cancel) and merged across steps with
Chan et al.'s pairwise update, as the gathered version merges its chunks: the same statistics up to float order.
Needs a power-of-two batch (the permutation's inverse is element-wise only then); sgd.py falls back to the gather
otherwise.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from pipeline import batch_rows, permutation


def supported(batch_size: int) -> bool:
  """Whether `streamed` can serve a batch of this many samples."""
  return batch_size >= 1 and not batch_size & (batch_size - 1)


def streamed(rows: batch_rows.Rows, epoch_keys: jax.Array,
             num_minibatches: int) -> tuple[Float[Array, "E B"], Float[Array, "E B"]]:
  """(mean, std) of the `.advantage` column over minibatch b of epoch e, for the epochs' permutation keys
  `epoch_keys` [E] (those pipeline/sgd.py slices minibatches from) and `num_minibatches` = B minibatches each."""
  num_steps, num_envs, _ = rows.data.shape
  batch_size = num_steps * num_envs
  if not supported(batch_size) or batch_size % num_minibatches:
    raise ValueError(f"streamed advantage statistics need a power-of-two batch split evenly, got {batch_size} "
                     f"samples in {num_minibatches} minibatches")
  shift = (batch_size // num_minibatches).bit_length() - 1  # position >> shift = minibatch
  num_epochs = epoch_keys.shape[0]
  column = rows.offset(".advantage")
  env_index = jnp.arange(num_envs, dtype=jnp.int32)

  def step(carry, t):
    count, mean, m2 = carry  # [E * B] each
    adv = jax.lax.dynamic_index_in_dim(rows.data, t, axis=0, keepdims=False)[:, column]
    centre = adv.mean()
    dev = adv - centre
    values = jnp.stack([jnp.ones_like(dev), dev, dev * dev], axis=-1)  # [N, 3]
    sums = jnp.zeros((num_epochs * num_minibatches, 3), jnp.float32)
    for e in range(num_epochs):
      minibatch = permutation.positions(epoch_keys[e], batch_size, t * num_envs + env_index) >> shift
      sums = sums.at[minibatch + e * num_minibatches].add(values, mode="promise_in_bounds")
    n, s1, s2 = sums[:, 0], sums[:, 1], sums[:, 2]
    safe_n = jnp.maximum(n, 1.0)
    step_mean = centre + s1 / safe_n
    step_m2 = jnp.maximum(s2 - s1 * s1 / safe_n, 0.0)
    total = count + n
    delta = step_mean - mean
    weight = n / jnp.maximum(total, 1.0)
    return (total, mean + delta * weight, m2 + step_m2 + delta * delta * count * weight), None

  zero = jnp.zeros((num_epochs * num_minibatches,), jnp.float32)
  (count, mean, m2), _ = jax.lax.scan(step, (zero, zero, zero), jnp.arange(num_steps))
  shape = (num_epochs, num_minibatches)
  return mean.reshape(shape), jnp.sqrt(m2 / count).reshape(shape)
