"""The optax chain: global-norm clipping then Adam, with an optional linear learning-rate anneal to zero."""
from __future__ import annotations

import optax


def make_optimizer(learning_rate: float, max_grad_norm: float, anneal_lr: bool,
                   total_gradient_steps: int, first_step: int = 0) -> optax.GradientTransformation:
  """`total_gradient_steps` = updates × epochs × minibatches: the anneal goes from `learning_rate` at optimizer step
  `first_step` (0, or where a run continued at another num_envs: launch/run/elastic.py) to 0 at the end of the run."""
  lr = (optax.linear_schedule(learning_rate, 0.0, total_gradient_steps, transition_begin=first_step) if anneal_lr
        else learning_rate)
  return optax.chain(optax.clip_by_global_norm(max_grad_norm), optax.adam(lr, eps=1e-5))
