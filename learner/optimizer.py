"""The optax chain: global-norm clipping then Adam, with an optional linear learning-rate anneal to zero.

The anneal counts where it is as (updates, optimizer steps within the update), two int32 counts that cannot
overflow: a run has fewer than 2^31 updates and an update fewer than 2^31 optimizer steps (both checked by
launch/config/resolve.py). One count of optimizer steps would not do: a run of 10^12 transitions at 2^20 envs takes
about 4e9 of them, and optax's schedules count in int32 (ScaleByScheduleState.count saturates at 2^31 - 1).
Adam's own count saturates there too, harmlessly: its bias corrections are exactly 1 long before.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


class AnnealState(NamedTuple):
  update: jax.Array  # int32: updates done before the current one (TrainState.update at its start)
  step: jax.Array  # int32: optimizer steps done in the current update, in [0, steps_per_update)


def anneal_fraction(state: AnnealState, steps_per_update: int, num_updates: int, first_update: int = 0) -> jax.Array:
  """The share of the learning rate left at optimizer step `state`: 1 at the first step of update `first_update`,
  falling linearly per step to 1 / (steps_per_update * (num_updates - first_update)) at the run's last step.

  float32 throughout: the updates left are exact below 2^24 (the end of any run, where the rate is smallest) and
  within 6e-8 relative above; no product of the counts is formed, so nothing overflows."""
  left = (num_updates - state.update).astype(jnp.float32) - state.step.astype(jnp.float32) / steps_per_update
  return jnp.clip(left / max(num_updates - first_update, 1), 0.0, 1.0)


def scale_by_linear_anneal(learning_rate: float, steps_per_update: int, num_updates: int,
                           first_update: int = 0) -> optax.GradientTransformation:
  """Multiplies updates by -learning_rate * anneal_fraction (as optax.scale_by_learning_rate does by -lr)."""

  def init_fn(params):
    del params
    return AnnealState(update=jnp.zeros((), jnp.int32), step=jnp.zeros((), jnp.int32))

  def update_fn(updates, state, params=None):
    del params
    lr = learning_rate * anneal_fraction(state, steps_per_update, num_updates, first_update)
    updates = jax.tree.map(lambda g: jnp.asarray(-lr, g.dtype) * g, updates)
    step = state.step + 1
    done = step == steps_per_update  # the update's last step: the next one is the next update's first
    return updates, AnnealState(update=state.update + done.astype(jnp.int32), step=jnp.where(done, 0, step))

  return optax.GradientTransformation(init_fn, update_fn)


def make_optimizer(learning_rate: float, max_grad_norm: float, anneal_lr: bool, steps_per_update: int = 1,
                   num_updates: int = 1, first_update: int = 0) -> optax.GradientTransformation:
  """`steps_per_update` = epochs × minibatches; with `anneal_lr` the rate goes from `learning_rate` at the first
  optimizer step of update `first_update` (0, or where a run continued at another num_envs: launch/run/elastic.py)
  to 0 at the end of update `num_updates` (the run's last)."""
  if not anneal_lr:
    return optax.chain(optax.clip_by_global_norm(max_grad_norm), optax.adam(learning_rate, eps=1e-5))
  return optax.chain(optax.clip_by_global_norm(max_grad_norm), optax.scale_by_adam(eps=1e-5),
                     scale_by_linear_anneal(learning_rate, steps_per_update, num_updates, first_update))
