"""The SGD stage: `update_epochs` passes over the batch, each split into `num_minibatches` random minibatches.

Minibatches are gathered by index from the time-major batch rather than by materialising a shuffled copy, one
chunk at a time (pipeline/sgd_chunks.py), from the batch packed as one row per sample (pipeline/batch_rows.py). The
permutation is drawn over the global sample index (pipeline/permutation.py), so minibatch contents do not depend on
the device layout. Optionally it also advances PPO-EWMA's proximal params after every optimizer step, and measures
the first epoch's gradient noise (learner/diagnostics.py): each minibatch gradient is the mean of its chunks'
gradients at the same params, so chunk and minibatch give the two batch sizes of B_simple for free.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from learner import code_path, diagnostics, ewma as ewma_lib, losses
from pipeline import advantage_stats, batch_rows, permutation, sgd_chunks


@struct.dataclass
class SGDResult:
  """What the SGD stage hands back after all its epochs."""
  params: Any  # the updated params
  opt_state: optax.OptState
  loss: losses.LossAux  # averaged over all minibatch steps
  proximal: ewma_lib.EWMAState | None  # PPO-EWMA's average advanced by every step; None when PPO-EWMA is off
  grad_noise: diagnostics.GradNoiseStats | None  # the first epoch's B_simple inputs; None unless tracked


def sgd_epochs(params, opt_state, rows: batch_rows.Rows, key: jax.Array, *, loss_fn: Callable,
               optimizer: optax.GradientTransformation, update_epochs: int, num_minibatches: int,
               chunk_size: int | None = None, constrain: Callable = lambda x: x,
               proximal: ewma_lib.EWMAState | None = None, ewma_decay: float | None = None,
               track_grad_noise: bool = False, lr_scale: jax.Array | None = None,
               streamed_stats: bool = True, flat_gather: bool = False, local_shards: int = 0) -> SGDResult:
  """`rows`: the [T, N] batch packed as rows of a losses.Minibatch (pipeline/batch_rows.py); `track_grad_noise`
  fills the result's `grad_noise`; `lr_scale` multiplies every optimizer step (outer-step control,
  learner/outer_step.py; None: the optimizer's own learning rate); `streamed_stats` takes the minibatches' advantage
  statistics from one pass over the batch (pipeline/advantage_stats.py) where the batch size and backend allow,
  else each minibatch gathers them; `flat_gather` gathers rows by flat index (batch_rows.at: faster, but only where
  the env axis is not split over devices); `local_shards` = D > 0: the env axis is split over D devices and each
  draws its M / D samples of every minibatch (and K / D of every chunk) from its own T × N / D, by its own permutation
  (the epoch's key folded with the device's index), so no row crosses devices; results depend on D.

  Each minibatch's gradient is accumulated over chunks of `chunk_size` samples (default: the whole minibatch).
  """
  num_steps, num_envs = rows.data.shape[:2]
  batch_size = num_steps * num_envs
  minibatch_size = batch_size // num_minibatches
  chunk_size = chunk_size or minibatch_size

  if local_shards:
    if num_envs % local_shards or chunk_size % local_shards:
      raise ValueError(f"a local shuffle over {local_shards} devices needs num_envs ({num_envs}) and the chunk size "
                       f"({chunk_size}) divisible by them")
    streamed_stats = False  # the streamed statistics follow the global permutation

  def minibatch_indices(epoch_key, minibatch):
    if not local_shards:
      return permutation.permutation_slice(epoch_key, batch_size, minibatch * minibatch_size, minibatch_size)
    return local_indices(epoch_key, minibatch, num_steps, num_envs, minibatch_size, chunk_size, local_shards)

  def minibatch_step(carry, xs, epoch_key):
    params, opt_state, proximal = carry
    minibatch, stats = xs
    idx = minibatch_indices(epoch_key, minibatch)
    fn = loss_fn if proximal is None else functools.partial(loss_fn, proximal_params=proximal.params)
    out = sgd_chunks.minibatch_grad(params, rows, idx, loss_fn=fn, chunk_size=chunk_size,
                                    constrain=constrain, chunk_sq_norms=track_grad_noise, stats=stats,
                                    flat=flat_gather, local_shards=local_shards)
    noise = (out.chunk_sq_norm, diagnostics.group_sq_norms(out.grads)) if track_grad_noise else ()
    updates, opt_state = optimizer.update(out.grads, opt_state, params)
    if lr_scale is not None:
      updates = jax.tree.map(lambda u: u * lr_scale, updates)
    params = optax.apply_updates(params, updates)
    if proximal is not None:
      proximal = ewma_lib.update(proximal, params, ewma_decay)
    return (params, opt_state, proximal), (out.aux, noise)

  def epoch(carry, xs):
    # Minibatch m of the epoch is the permutation's m-th slice, computed as it is needed.
    epoch_key, stats = xs
    return jax.lax.scan(functools.partial(minibatch_step, epoch_key=epoch_key), carry,
                        (jnp.arange(num_minibatches), stats))

  epoch_keys = jax.random.split(key, update_epochs)
  # Every minibatch's advantage mean and std, all epochs at once, from one pass over the batch in memory order
  # (a power-of-two batch, CPU forms: its per-minibatch sums are float scatter-adds, which XLA:GPU orders by atomics);
  # otherwise each minibatch gathers its own (None), deterministic on every backend (learner/code_path.py).
  stats = (advantage_stats.streamed(rows, epoch_keys, num_minibatches)
           if streamed_stats and code_path.cpu_forms() and advantage_stats.supported(batch_size) else None)
  (params, opt_state, proximal), (aux, noise) = jax.lax.scan(epoch, (params, opt_state, proximal),
                                                             (epoch_keys, stats))
  stats = None
  if track_grad_noise:  # noise leaves are [epochs, minibatches, groups]: average the first epoch's
    small_sq, big_sq = noise
    stats = diagnostics.GradNoiseStats(mean_small_sq=small_sq[0].mean(0), big_sq=big_sq[0].mean(0),
                                       b_small=chunk_size, b_big=minibatch_size)
  return SGDResult(params=params, opt_state=opt_state, loss=jax.tree.map(jnp.mean, aux), proximal=proximal,
                   grad_noise=stats)


def local_indices(epoch_key: jax.Array, minibatch: jax.Array, num_steps: int, num_envs: int, minibatch_size: int,
                  chunk_size: int, shards: int) -> jax.Array:
  """Minibatch `minibatch`'s flat (t, n) sample indices [M] under a local shuffle over `shards` = D devices: device d
  permutes its own T × N / D samples (envs d N / D ... (d + 1) N / D - 1) with fold_in(epoch_key, d) and gives
  positions minibatch × M / D ... of it. Ordered chunk, device, sample: chunk c of K samples holds K / D of each
  device's, in device order (what batch_rows.take_local gathers without moving rows)."""
  per_device, envs_per_device = minibatch_size // shards, num_envs // shards

  def device(d):
    local = permutation.permutation_slice(jax.random.fold_in(epoch_key, d), num_steps * envs_per_device,
                                          minibatch * per_device, per_device)
    return (local // envs_per_device) * num_envs + d * envs_per_device + local % envs_per_device

  idx = jax.vmap(device)(jnp.arange(shards))  # [D, M / D]
  chunks = minibatch_size // chunk_size
  return idx.reshape(shards, chunks, chunk_size // shards).transpose(1, 0, 2).reshape(-1)
