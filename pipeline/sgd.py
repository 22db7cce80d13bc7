"""The SGD stage: `update_epochs` passes over the batch, each split into `num_minibatches` random minibatches.

Minibatches are gathered by index from the time-major batch rather than by materialising a shuffled copy, one
chunk at a time (pipeline/sgd_chunks.py). The permutation is drawn over the global sample index
(pipeline/permutation.py), so minibatch contents do not depend on the device layout.
"""
from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from learner import losses
from pipeline import permutation, sgd_chunks


def sgd_epochs(params, opt_state, batch: losses.Minibatch, key: jax.Array, *, loss_fn: Callable,
               optimizer: optax.GradientTransformation, update_epochs: int, num_minibatches: int,
               chunk_size: int | None = None, constrain: Callable = lambda x: x):
  """`batch` leaves are [T, N, ...]. Returns (params, opt_state, LossAux averaged over all minibatch steps).

  Each minibatch's gradient is accumulated over chunks of `chunk_size` samples (default: the whole minibatch).
  """
  num_steps, num_envs = batch.advantage.shape
  batch_size = num_steps * num_envs
  minibatch_size = batch_size // num_minibatches
  chunk_size = chunk_size or minibatch_size

  def minibatch_step(carry, idx):
    params, opt_state = carry
    grads, aux = sgd_chunks.minibatch_grad(params, batch, idx, loss_fn=loss_fn, chunk_size=chunk_size,
                                           constrain=constrain)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), aux

  def epoch(carry, epoch_key):
    perm = permutation.random_permutation(epoch_key, batch_size).reshape(num_minibatches, minibatch_size)
    return jax.lax.scan(minibatch_step, carry, perm)

  (params, opt_state), aux = jax.lax.scan(epoch, (params, opt_state), jax.random.split(key, update_epochs))
  return params, opt_state, jax.tree.map(jnp.mean, aux)
