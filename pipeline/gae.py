"""Generalised advantage estimation that bootstraps through truncation but not through termination.

The rollout folds the truncation bootstrap into the reward as it steps (`bootstrap`): a step that a time limit cut
short gets γ·V(final obs) added, and every episode end (terminated or truncated) is then one `done` flag. GAE
(`advantages_in_rows`) runs backwards over the packed rollout (pipeline/batch_rows.py) and writes the advantages
and value targets over the reward and done columns, in place: no second copy of the batch.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from pipeline import batch_rows


def bootstrap(reward: Float[Array, "*B"], terminated: Bool[Array, "*B"], truncated: Bool[Array, "*B"],
              truncation_value: Float[Array, "*B"], gamma: float) -> Float[Array, "*B"]:
  """The reward a step stores: + γ·V(final obs) where a time limit truncated the episode and it did not also
  terminate (a terminal state is worth 0)."""
  return reward + gamma * jnp.where(truncated & ~terminated, truncation_value, 0.0)


def advantages_in_rows(rows: batch_rows.Rows, last_value: Float[Array, "N"], *, gamma: float,
                       gae_lambda: float) -> batch_rows.Rows:
  """`rows` of the rollout (columns `.value`, `.reward` = `bootstrap`'s, `.done`): the same rows with the
  advantages written over `.reward` and the value targets (advantage + value) over `.done`.

  Step t bootstraps from V(s_{t+1}) unless the episode ended there (its reward already holds V(final obs) if a time
  limit cut it); the λ-recursion stops at every episode end. One backward scan over time that reads and rewrites
  one step's rows at a time, so XLA updates the batch in place.
  """
  value_col = rows.offset(".value")
  if (rows.offset(".reward"), rows.offset(".done")) != (value_col + 1, value_col + 2):
    raise ValueError(f"GAE needs the value, reward and done columns side by side: {rows.names}")

  def backward(carry, t):
    data, next_adv, next_value = carry
    # One step's (value, reward, done) block is read and rewritten as (value, advantage, target), in place.
    block = jax.lax.dynamic_slice(data, (t, 0, value_col), (1, data.shape[1], 3))
    value, reward, done = block[0, :, 0], block[0, :, 1], block[0, :, 2]
    carry_on = 1.0 - done
    delta = reward + gamma * next_value * carry_on - value
    adv = delta + gamma * gae_lambda * carry_on * next_adv
    data = jax.lax.dynamic_update_slice(data, jnp.stack([value, adv, adv + value], axis=-1)[None], (t, 0, value_col))
    # The value carried to step t − 1 is read back from the rewritten batch: carried from the read, it keeps the
    # batch as it was before the write alive, and XLA copies the whole batch every step.
    value = jax.lax.dynamic_slice(data, (t, 0, value_col), (1, data.shape[1], 1))[0, :, 0]
    return (data, adv, value), None

  num_steps = rows.data.shape[0]
  (data, _, _), _ = jax.lax.scan(backward, (rows.data, jnp.zeros_like(last_value), last_value),
                                 jnp.arange(num_steps), reverse=True)
  return rows.replace(data=data)
