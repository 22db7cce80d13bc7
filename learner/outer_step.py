"""Outer-step control: the learning rate rescaled after every update from the KL that update measured.

The scale multiplies every optimizer step of the next update (pipeline/sgd.py); it is part of the TrainState, so it
is checkpointed and a resumed run continues it exactly, and changing it recompiles nothing.

  adaptive_kl     the baseline Brax / rsl_rl / Sample Factory ship: KL per update above 2 x kl_target divides the
                  learning rate by `factor`, below kl_target / 2 multiplies it by `factor`, in between keeps it.
  samples_per_kl  targets the data spent per unit of divergence: batch size / the update's mean KL (the metrics
                  rows' `samples_per_kl` is the same over a log interval, learner/diagnostics.py). For small steps
                  KL ≈ ½ Δθᵀ F Δθ with Δθ ∝ lr, so samples per KL ∝ lr⁻²: the scale that would meet the target
                  is scale · sqrt(samples_per_kl / target); it moves there, by at most `factor` per update.
Either way the scale stays in [1 / max_scale, max_scale]; a non-finite KL leaves it unchanged, and a KL ≤ 0 (no
measurable step, or float rounding of a tiny one) reads as a step far too small.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct
from jaxtyping import Array, Float

MODES = ("adaptive_kl", "samples_per_kl")


@struct.dataclass
class OuterState:
  lr_scale: Float[Array, ""]  # multiplies the learning rate (after the anneal); 1 at the start


@dataclasses.dataclass(frozen=True)
class OuterSettings:
  """config.outer_step.* (launch/config/schema.py)."""
  mode: str
  kl_target: float = 0.01
  samples_per_kl: float = 1e6
  factor: float = 1.5
  max_scale: float = 10.0

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f"outer-step mode {self.mode!r}: one of {MODES}")


def init() -> OuterState:
  return OuterState(lr_scale=jnp.ones((), jnp.float32))


def adaptive_kl(scale: jax.Array, kl: jax.Array, target: float, factor: float) -> jax.Array:
  return jnp.where(kl > 2.0 * target, scale / factor, jnp.where(kl < 0.5 * target, scale * factor, scale))


def samples_per_kl(scale: jax.Array, measured: jax.Array, target: float, factor: float) -> jax.Array:
  return scale * jnp.clip(jnp.sqrt(measured / target), 1.0 / factor, factor)


def step(settings: OuterSettings, state: OuterState, kl_mean: jax.Array, samples: jax.Array | int) -> OuterState:
  """The scale for the next update, from this update's KL (mean over its `samples` states)."""
  scale = state.lr_scale
  if settings.mode == "adaptive_kl":
    new = adaptive_kl(scale, kl_mean, settings.kl_target, settings.factor)
  else:  # samples per KL; a KL <= 0 is an unbounded ratio, which moves the scale up by the factor
    measured = jnp.where(kl_mean > 0, samples / jnp.where(kl_mean > 0, kl_mean, 1.0), jnp.inf)
    new = samples_per_kl(scale, measured, settings.samples_per_kl, settings.factor)
  new = jnp.where(jnp.isfinite(kl_mean), new, scale)
  return OuterState(lr_scale=jnp.clip(new, 1.0 / settings.max_scale, settings.max_scale).astype(jnp.float32))
