"""The SGD stage: `update_epochs` passes over the batch, each split into `num_minibatches` random minibatches.

Minibatches are gathered by index from the time-major batch rather than by materialising a shuffled copy. The
permutation is drawn over the global sample index, so minibatch contents do not depend on the device layout.
Optionally it also advances PPO-EWMA's proximal params after every optimizer step, and keeps the first epoch's
gradient norms for the gradient noise scale (learner/diagnostics.py).
"""
from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from learner import diagnostics, ewma as ewma_lib, losses


def sgd_epochs(params, opt_state, batch: losses.Minibatch, key: jax.Array, *, loss_fn: Callable,
               optimizer: optax.GradientTransformation, update_epochs: int, num_minibatches: int,
               constrain: Callable = lambda x: x, proximal: ewma_lib.EWMAState | None = None,
               ewma_decay: float | None = None, track_grad_noise: bool = False):
  """`batch` leaves are [T, N, ...]. Returns (params, opt_state, LossAux averaged over all minibatch steps,
  proximal advanced by every step (None if PPO-EWMA is off), GradNoiseStats of the first epoch or None)."""
  num_steps, num_envs = batch.advantage.shape
  batch_size = num_steps * num_envs
  minibatch_size = batch_size // num_minibatches
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def minibatch_step(carry, idx):
    params, opt_state, proximal, grad_sum = carry
    mb = jax.tree.map(lambda x: x[idx // num_envs, idx % num_envs], batch)
    mb = constrain(mb)
    if proximal is None:
      (_, aux), grads = grad_fn(params, mb)
    else:
      (_, aux), grads = grad_fn(params, mb, proximal_params=proximal.params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    if proximal is not None:
      proximal = ewma_lib.update(proximal, params, ewma_decay)
    if not track_grad_noise:
      return (params, opt_state, proximal, grad_sum), (aux, ())
    grad_sum = jax.tree.map(jnp.add, grad_sum, grads)
    return (params, opt_state, proximal, grad_sum), (aux, diagnostics.sq_norm(grads))

  def epoch(carry, epoch_key):
    perm = jax.random.permutation(epoch_key, batch_size).reshape(num_minibatches, minibatch_size)
    grad_sum = jax.tree.map(jnp.zeros_like, carry[0]) if track_grad_noise else ()
    (*carry, grad_sum), (aux, grad_sq) = jax.lax.scan(minibatch_step, (*carry, grad_sum), perm)
    return tuple(carry), (aux, grad_sq, grad_sum)

  (params, opt_state, proximal), (aux, grad_sq, grad_sum) = jax.lax.scan(
      epoch, (params, opt_state, proximal), jax.random.split(key, update_epochs))
  noise = None
  if track_grad_noise:
    noise = diagnostics.grad_noise_from_epoch(grad_sq[0], jax.tree.map(lambda g: g[0], grad_sum), minibatch_size)
  return params, opt_state, jax.tree.map(jnp.mean, aux), proximal, noise
