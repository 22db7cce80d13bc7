"""One minibatch's gradient, gathered and computed in chunks of `chunk_size` samples and accumulated.

The loss is a mean over the minibatch, so the mean of equal-sized chunks' gradients is the minibatch gradient up to
float summation order; the advantage normalisation uses the whole minibatch's mean and std, computed first. Chunks
bound memory (1,048,576 envs × 128 steps / 4 minibatches is 33.5M samples, whose [M, 64] activations alone would
be 8.6 GB) and are faster at every size: a 4,096-sample chunk's activations stay in the CPU caches.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from jaxtyping import Array, Float, Int

from learner import diagnostics, networks
from pipeline import batch_rows


@struct.dataclass
class MinibatchGrad:
  """One minibatch's gradient and what the loss reported, averaged over its chunks."""
  grads: Any  # the gradient of the minibatch's mean loss, a pytree like the params
  aux: Any  # the loss's auxiliary outputs (learner.losses.LossAux for the PPO loss)
  # Mean over chunks of |chunk gradient|², per parameter group (learner/networks.py PARAM_GROUPS); None unless asked.
  chunk_sq_norm: Float[Array, "3"] | None = None


def advantage_stats(rows: batch_rows.Rows, chunks: Int[Array, "C K"], constrain: Callable = lambda x: x,
                    flat: bool = False, local_shards: int = 0) -> tuple[jax.Array, jax.Array]:
  """(mean, std) of the `.advantage` column over the samples `chunks` (flat (t, n) indices), a chunk at a time:
  each chunk's mean and sum of squared deviations, merged by Chan et al.'s pairwise update, so no [M] array of
  the minibatch's advantages or gather indices is ever held. `flat`, `local_shards`: batch_rows.take's."""
  def merge(carry, chunk_idx):
    count, mean, m2 = carry
    a = constrain(batch_rows.column_at(rows, ".advantage", chunk_idx, flat, local_shards))
    chunk_mean = a.mean()
    chunk_m2 = jnp.sum(jnp.square(a - chunk_mean))
    size = jnp.float32(a.shape[0])
    total = count + size
    delta = chunk_mean - mean
    return (total, mean + delta * size / total, m2 + chunk_m2 + delta * delta * count * size / total), None

  zero = jnp.zeros((), jnp.float32)
  (count, mean, m2), _ = jax.lax.scan(merge, (zero, zero, zero), chunks)
  return mean, jnp.sqrt(m2 / count)


def minibatch_grad(params, rows: batch_rows.Rows, idx: Int[Array, "M"], *,
                   loss_fn: Callable, chunk_size: int, constrain: Callable = lambda x: x,
                   chunk_sq_norms: bool = False, stats: tuple[jax.Array, jax.Array] | None = None,
                   flat: bool = False, local_shards: int = 0) -> MinibatchGrad:
  """The gradient of `loss_fn` on the samples `idx` (flat (t, n) indices) of the [T, N] batch packed in `rows`
  (pipeline/batch_rows.py: rows of a losses.Minibatch); the minibatch's advantage statistics are `stats` (mean, std)
  when given (pipeline/advantage_stats.py), else gathered from its `.advantage` column. `flat`: gather by flat
  index (batch_rows.at; only where the env axis is not split over devices); `local_shards`: `idx` is a local
  shuffle's over that many devices (pipeline/sgd.local_indices), gathered where the rows are (batch_rows.take_local).

  `loss_fn(params, mb, advantage_stats=...)` must be a mean over the samples of `mb`. `chunk_size` divides M.
  With `chunk_sq_norms` the result's `chunk_sq_norm` is the mean over chunks of |chunk gradient|² per parameter
  group: the chunks are disjoint random subsets of the minibatch at the same params, the small batch of the gradient
  noise scale.
  """
  minibatch_size = idx.shape[0]
  num_chunks = minibatch_size // chunk_size
  take = lambda i: batch_rows.unpack(rows, constrain(batch_rows.take(rows, i, flat, local_shards)))
  if stats is None:
    stats = advantage_stats(rows, idx.reshape(num_chunks, chunk_size), constrain, flat, local_shards)
  grad_fn = jax.grad(lambda p, mb: loss_fn(p, mb, advantage_stats=stats), has_aux=True)
  if num_chunks == 1:
    grads, aux = grad_fn(params, take(idx))
    return MinibatchGrad(grads=grads, aux=aux,
                         chunk_sq_norm=diagnostics.group_sq_norms(grads) if chunk_sq_norms else None)

  def chunk(carry, chunk_idx):
    total, sq = carry
    grads = grad_fn(params, take(chunk_idx))
    if chunk_sq_norms:
      sq = sq + diagnostics.group_sq_norms(grads[0])
    return (jax.tree.map(jnp.add, total, grads), sq), None

  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(grad_fn, params, take(idx[:chunk_size])))
  no_norms = jnp.zeros((len(networks.PARAM_GROUPS),), jnp.float32)
  (total, sq), _ = jax.lax.scan(chunk, (zeros, no_norms), idx.reshape(num_chunks, chunk_size))
  grads, aux = jax.tree.map(lambda x: x / num_chunks, total)
  return MinibatchGrad(grads=grads, aux=aux, chunk_sq_norm=sq / num_chunks if chunk_sq_norms else None)
