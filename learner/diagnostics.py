"""Outer-loop diagnostics of one PPO update: how far the policy moved, how noisy the gradient is, how good the critic.

These make the paper's view of PPO observable: the outer step (KL between the behaviour and the updated policy, and
the update size ‖Δθ‖) against the noise (the gradient noise scale B_simple of McCandlish et al. 2018), and the data
spent per unit of divergence. All are computed inside the jitted update from values it already has, plus one
forward pass of the updated params over the batch. The noise is measured for the whole gradient and for the
policy's and the critic's own params apart (learner/networks.py `param_groups`). A metrics row (`summarize`) holds
means over its interval and, for the noise scales and samples per KL, ratios of those means.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jaxtyping import Array, Float

from learner import distributions, networks


_BLOCK_SAMPLES = 32768  # samples per forward pass of the updated policy
QUANTILE_SAMPLES = 65536  # per-state KLs the quantile is taken over (the whole batch when it is no larger)


@struct.dataclass
class Diagnostics:
  """Per-update scalars. A metrics row holds their means over its interval (`summarize`), and the ratios in ROW_RATIOS
  taken of those means: the |G|² estimate of a single update is often ≤ 0 late in training, so a per-update ratio is
  not a noise scale, and a mean of such ratios is dominated by its few near-zero denominators."""
  kl_mean: jax.Array  # mean over the batch's states of KL(behaviour ‖ updated policy), exact per state
  kl_quantile: jax.Array  # a high quantile (diagnostics.kl_quantile) of the same per-state KL
  update_norm: jax.Array  # ‖θ_after − θ_before‖ (global L2 norm over all params)
  grad_sq_norm: jax.Array  # unbiased estimate of |G|², the total loss's gradient over all params
  grad_trace_cov: jax.Array  # unbiased estimate of tr(Σ), the per-sample covariance of that gradient
  grad_sq_norm_policy: jax.Array  # the same two over the policy's own params: the policy objective's gradient
  grad_trace_cov_policy: jax.Array  # (surrogate + entropy bonus; learner/networks.py POLICY_MODULES)
  grad_sq_norm_value: jax.Array  # ... and over the critic's own params: the value loss's gradient
  grad_trace_cov_value: jax.Array  # (learner/networks.py VALUE_MODULES)
  samples: jax.Array  # states the KL is averaged over (the batch size): the numerator of samples_per_kl
  explained_variance: jax.Array  # 1 − Var(target − V_behaviour) / Var(target)


# Row metrics that are ratios: name -> (numerator, denominator), both Diagnostics fields averaged over the interval.
# B_simple = tr(Σ) / |G|² (McCandlish et al. 2018 average the two estimates before dividing, App. A.1), and samples
# per KL = samples / KL: the interval's samples over its KL.
ROW_RATIOS = {
    "grad_noise_scale": ("grad_trace_cov", "grad_sq_norm"),
    "grad_noise_scale_policy": ("grad_trace_cov_policy", "grad_sq_norm_policy"),
    "grad_noise_scale_value": ("grad_trace_cov_value", "grad_sq_norm_value"),
    "samples_per_kl": ("samples", "kl_mean"),
}
_NOT_IN_ROWS = ("samples",)  # the batch size: already in the row as the env_steps between rows


@struct.dataclass
class GradNoiseStats:
  """What the SGD stage measures over its first epoch to estimate B_simple (pipeline/sgd.py).

  Every minibatch gradient is the mean of its chunks' gradients, all taken at the same params: per minibatch, the
  chunk gradients are estimates at batch size b_small and their mean one at b_big, so each pair is unbiased for the
  params it was taken at (no drift between the two sizes). Both squared norms are averaged over the epoch, per
  parameter group (learner/networks.py PARAM_GROUPS: policy, value, shared); their sum is the whole gradient's.
  """
  mean_small_sq: Float[Array, "3"]  # mean over minibatches and their chunks of |g_chunk|² (b_small samples each)
  big_sq: Float[Array, "3"]  # mean over minibatches of |g_minibatch|² (b_big samples each)
  b_small: int = struct.field(pytree_node=False, default=1)
  b_big: int = struct.field(pytree_node=False, default=1)


def sq_norm(tree) -> jax.Array:
  return sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree))


def group_sq_norms(tree) -> Float[Array, "3"]:
  """|tree|² per parameter group (networks.PARAM_GROUPS): a gradient's squared norm split at no extra cost."""
  sums = [jnp.zeros((), jnp.float32)] * len(networks.PARAM_GROUPS)
  for group, x in zip(networks.param_groups(tree), jax.tree.leaves(tree)):
    sums[group] = sums[group] + jnp.sum(jnp.square(x.astype(jnp.float32)))
  return jnp.stack(sums)


def noise_estimates(stats: GradNoiseStats) -> tuple[Float[Array, "3"], Float[Array, "3"]]:
  """McCandlish et al. (2018), App. A.1: unbiased |G|² and tr(Σ) from gradient norms at two batch sizes, per group.

  E|G_B|² = |G|² + tr(Σ)/B, so two batch sizes give two equations. Returns (|G|², tr(Σ)); NaN when a minibatch is a
  single chunk (the two sizes coincide). Minibatches and chunks are drawn without replacement from the batch, so
  tr(Σ) is the batch's unbiased per-sample covariance trace and |G|² estimates |mean g|² − tr(Σ)/batch. Both are
  linear in the squared norms, so the groups' estimates sum to the whole gradient's.
  """
  bs, bb = stats.b_small, stats.b_big
  if bs == bb:
    nan = jnp.full(stats.big_sq.shape, jnp.nan, jnp.float32)
    return nan, nan
  g_sq = (bb * stats.big_sq - bs * stats.mean_small_sq) / (bb - bs)
  trace = (stats.mean_small_sq - stats.big_sq) / (1.0 / bs - 1.0 / bb)
  return g_sq, trace


def _finite(x) -> float | None:
  x = float(x)
  return x if math.isfinite(x) else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
  """numerator / denominator of two interval means; None (JSON null: undefined) unless the denominator is positive
  and the numerator not negative: a |G|² estimate ≤ 0 means no gradient signal was measured, a KL ≤ 0 no step, and
  a negative tr(Σ) estimate no noise: none of them has a noise scale or samples per KL."""
  if numerator is None or denominator is None or denominator <= 0 or numerator < 0:
    return None
  return numerator / denominator


def summarize(stacked: Diagnostics) -> dict[str, float | None]:
  """One metrics row's diagnostics from the interval's per-update values (host numpy, leaves [updates]): each
  field's mean, then the ROW_RATIOS of those means. A mean that is not finite (an update without an estimate, e.g.
  a metric a checkpoint of another version did not hold) is None."""
  means = {f.name: _finite(np.mean(getattr(stacked, f.name))) for f in dataclasses.fields(Diagnostics)}
  row = {k: v for k, v in means.items() if k not in _NOT_IN_ROWS}
  row.update({name: ratio(means[num], means[den]) for name, (num, den) in ROW_RATIOS.items()})
  return row


def _mean(x: jax.Array, ones: jax.Array) -> jax.Array:
  return jnp.dot(x, ones) / x.size


def explained_variance(value: Float[Array, "*B"], target: Float[Array, "*B"]) -> jax.Array:
  """1 − Var(target − value) / Var(target). The sums are dot products: XLA:CPU runs a dot as a library call on
  materialised operands, so their float order does not depend on how the surrounding ops are fused — which differs
  when the update's stages are compiled as one program or apart (pipeline/dataflow.py's sync mode is ==)."""
  target, residual = target.reshape(-1), (target - value).reshape(-1)
  ones = jnp.ones_like(target)

  def var(x):
    centred = x - _mean(x, ones)
    return _mean(centred * centred, ones)

  var_target = var(target)
  return jnp.where(var_target > 0, 1.0 - var(residual) / jnp.maximum(var_target, 1e-12), jnp.nan)


def sampled_quantile(x: Float[Array, "*B"], q: float, key: jax.Array,
                     num_samples: int = QUANTILE_SAMPLES) -> jax.Array:
  """The q-quantile of `x`, exact when x.size <= num_samples, else of `num_samples` entries drawn uniformly with
  replacement by `key`: a sort of at most `num_samples` values, whatever the batch size.

  The draw is over the global flat index, so it does not depend on how `x` is placed on devices. Error, in rank
  (the fraction of x below the estimate): q ± sqrt(q(1 − q) / num_samples) (one standard deviation; 0.0012 for
  q = 0.9 and 65,536 samples), and by the Dvoretzky–Kiefer–Wolfowitz inequality the sample's distribution function
  is within ε of x's everywhere with probability ≥ 1 − 2 exp(−2 num_samples ε²) (ε = 0.01: 1 − 4e-6). In value the
  error is that rank error times the spread of x around its q-quantile (tests/test_diagnostics.py: 2^20 lognormal
  values, 0.9 quantile within 2%).
  """
  flat = x.reshape(-1)
  if flat.size > num_samples:
    flat = flat[jax.random.randint(key, (num_samples,), 0, flat.size)]
  return jnp.quantile(flat, q)


def compute(old_params, new_params, batch: Any, value: Float[Array, "T N"], target: Float[Array, "T N"],
            grad_noise: GradNoiseStats, *, apply_fn: Callable, dist: distributions.Distribution, kl_quantile: float,
            key: jax.Array, states: Callable = lambda step: step) -> Diagnostics:
  """All diagnostics of one update; `value` is the behaviour critic's, and `states(batch at one step)` gives that
  step's (observations [N, ...], behaviour policy's head [N, P]) — by default `batch` is that pair with leaves
  [T, N, ...]; the trainer passes its packed rows and reads the two from them, so neither is copied out whole.

  `key` draws the states the KL quantile is estimated from (`sampled_quantile`); everything else is exact.
  """
  # The updated policy over the batch, a few time steps at a time: at a million envs the whole batch's activations
  # would not fit in memory, and small blocks stay in the CPU caches.
  steps_per_block = max(1, min(value.shape[0], _BLOCK_SAMPLES // max(value.shape[1], 1)))

  def step_kl(step):
    obs, behaviour_head = states(step)
    return dist.kl(behaviour_head, apply_fn(new_params, obs)[0])

  kl = jax.lax.map(step_kl, batch, batch_size=steps_per_block)
  kl_mean = kl.mean()
  g_sq, trace = noise_estimates(grad_noise)
  delta = jax.tree.map(lambda a, b: a - b, new_params, old_params)
  policy, value_group = networks.PARAM_GROUPS.index("policy"), networks.PARAM_GROUPS.index("value")
  return Diagnostics(kl_mean=kl_mean, kl_quantile=sampled_quantile(kl, kl_quantile, key),
                     update_norm=jnp.sqrt(sq_norm(delta)), grad_sq_norm=g_sq.sum(), grad_trace_cov=trace.sum(),
                     grad_sq_norm_policy=g_sq[policy], grad_trace_cov_policy=trace[policy],
                     grad_sq_norm_value=g_sq[value_group], grad_trace_cov_value=trace[value_group],
                     samples=jnp.float32(kl.size), explained_variance=explained_variance(value, target))
