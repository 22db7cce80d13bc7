"""The SGD stage: `update_epochs` passes over the batch, each split into `num_minibatches` random minibatches.

Minibatches are gathered by index from the time-major batch rather than by materialising a shuffled copy. The
permutation is drawn over the global sample index, so minibatch contents do not depend on the device layout.
"""
from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from learner import losses


def sgd_epochs(params, opt_state, batch: losses.Minibatch, key: jax.Array, *, loss_fn: Callable,
               optimizer: optax.GradientTransformation, update_epochs: int, num_minibatches: int,
               constrain: Callable = lambda x: x):
  """`batch` leaves are [T, N, ...]. Returns (params, opt_state, LossAux averaged over all minibatch steps)."""
  num_steps, num_envs = batch.advantage.shape
  batch_size = num_steps * num_envs
  minibatch_size = batch_size // num_minibatches
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def minibatch_step(carry, idx):
    params, opt_state = carry
    mb = jax.tree.map(lambda x: x[idx // num_envs, idx % num_envs], batch)
    mb = constrain(mb)
    (_, aux), grads = grad_fn(params, mb)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), aux

  def epoch(carry, epoch_key):
    perm = jax.random.permutation(epoch_key, batch_size).reshape(num_minibatches, minibatch_size)
    return jax.lax.scan(minibatch_step, carry, perm)

  (params, opt_state), aux = jax.lax.scan(epoch, (params, opt_state), jax.random.split(key, update_epochs))
  return params, opt_state, jax.tree.map(jnp.mean, aux)
