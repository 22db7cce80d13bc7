"""PPO-EWMA's proximal policy (Hilton et al. 2022): an exponentially weighted moving average of past params.

The average is debiased as in the paper's code: it is the weighted mean of every params vector seen so far (the
initial one included) with weights decay^age, renormalised, so early in training it is not pulled towards zero.
A centre of mass c (the mean age of the average, in optimizer steps) gives decay = c / (1 + c).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class EWMAState:
  """The proximal params and the total weight sum_k decay^k of the history they average."""
  params: Any
  total_weight: jax.Array


def decay_from_center_of_mass(center_of_mass: float) -> float:
  """The decay whose weights (1 - d) d^k have mean age k = center_of_mass."""
  return center_of_mass / (1.0 + center_of_mass)


def init(params) -> EWMAState:
  return EWMAState(params=params, total_weight=jnp.ones((), jnp.float32))


def update(state: EWMAState, params, decay: float) -> EWMAState:
  """Adds `params` as the newest point of the average."""
  total = decay * state.total_weight + 1.0
  keep = decay * state.total_weight / total  # share of the old average in the new one
  new = jax.tree.map(lambda e, p: keep * e + (1.0 - keep) * p, state.params, params)
  return EWMAState(params=new, total_weight=total)
