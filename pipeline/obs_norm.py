"""Running observation normalisation: a Welford/Chan mean and variance over every observation seen in training.

The statistics are a replicated part of the TrainState (so they are checkpointed with the run) and are updated in the
rollout with each step's batch of observations. The policy sees `(obs - mean) / std`, clipped to ±CLIP.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct
from jaxtyping import Array, Float

CLIP = 10.0  # normalised observations are clipped to ±CLIP (as in SB3 and Brax), so outliers cannot blow up
EPS = 1e-8


@struct.dataclass
class RunningMeanStd:
  """Moments of the observations seen so far. `count` is float32: it only weighs the merge of a new batch. Past
  2^24 batches (num_envs x 2^24 observations: 1.8e13 at 2^20 envs, 5.4e8 at 32) adding a batch no longer changes
  it, so each new batch keeps a weight of about 2^-24 instead of less: the moments become an average over roughly
  the last 2^24 rollout steps rather than all (a float32 mean moves by no less than 2^-24 of itself either way)."""
  mean: Float[Array, "obs"]
  var: Float[Array, "obs"]
  count: Float[Array, ""]


def init(obs_shape: tuple[int, ...]) -> RunningMeanStd:
  """Identity statistics: normalising with them leaves observations unchanged (up to EPS)."""
  return RunningMeanStd(mean=jnp.zeros(obs_shape, jnp.float32), var=jnp.ones(obs_shape, jnp.float32),
                        count=jnp.zeros((), jnp.float32))


def update(stats: RunningMeanStd, batch: Float[Array, "N obs"]) -> RunningMeanStd:
  """Merges a batch's moments into the running moments (Chan et al.'s parallel form of Welford's algorithm)."""
  n = jnp.asarray(batch.shape[0], jnp.float32)
  batch_mean = jnp.mean(batch, axis=0)
  batch_var = jnp.mean(jnp.square(batch - batch_mean), axis=0)
  total = stats.count + n
  delta = batch_mean - stats.mean
  mean = stats.mean + delta * (n / total)
  m2 = stats.var * stats.count + batch_var * n + jnp.square(delta) * (stats.count * n / total)
  return RunningMeanStd(mean=mean, var=m2 / total, count=total)


def normalize(stats: RunningMeanStd, obs: Float[Array, "*B obs"]) -> Float[Array, "*B obs"]:
  return jnp.clip((obs - stats.mean) * jax.lax.rsqrt(stats.var + EPS), -CLIP, CLIP)
