"""Action distributions for the policy heads, chosen from the env's action space.

Small and dependency-free: each distribution is a namespace of pure functions over the head's raw output, so the
same object serves rollout (sample, log_prob), the loss (log_prob, entropy) and evaluation (mode).
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from envs import base
from learner import code_path


@dataclasses.dataclass(frozen=True)
class Categorical:
  """One categorical over `n` actions; head output: logits [..., n]."""
  n: int

  @property
  def param_size(self) -> int:
    return self.n

  def sample(self, key, logits):
    return jax.random.categorical(key, logits).astype(jnp.int32)

  def log_prob(self, logits, action):
    logp = jax.nn.log_softmax(logits)
    action = action.astype(jnp.int32)
    if code_path.cpu_forms():  # the gradient is a scatter-add into the logits: XLA:GPU's atomics (code_path.py)
      return jnp.take_along_axis(logp, action[..., None], axis=-1)[..., 0]
    return jnp.where(jnp.arange(self.n) == action[..., None], logp, 0.0).sum(-1)  # the same value, exactly

  def entropy(self, logits):
    logp = jax.nn.log_softmax(logits)
    return -jnp.sum(jnp.exp(logp) * logp, axis=-1)

  def mode(self, logits):
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)

  def kl(self, p_logits, q_logits):
    """KL(p ‖ q), exact."""
    logp, logq = jax.nn.log_softmax(p_logits), jax.nn.log_softmax(q_logits)
    return jnp.sum(jnp.exp(logp) * (logp - logq), axis=-1)


@dataclasses.dataclass(frozen=True)
class MultiCategorical:
  """Independent categoricals; head output: concatenated logits [..., sum(nvec)]; actions int32 [..., len(nvec)]."""
  nvec: tuple[int, ...]

  @property
  def param_size(self) -> int:
    return sum(self.nvec)

  def _split(self, logits):
    bounds = [sum(self.nvec[:i + 1]) for i in range(len(self.nvec) - 1)]
    return jnp.split(logits, bounds, axis=-1)

  def sample(self, key, logits):
    keys = jax.random.split(key, len(self.nvec))
    return jnp.stack([Categorical(n).sample(k, l) for n, k, l in zip(self.nvec, keys, self._split(logits))], -1)

  def log_prob(self, logits, action):
    parts = self._split(logits)
    return sum(Categorical(n).log_prob(l, action[..., i]) for i, (n, l) in enumerate(zip(self.nvec, parts)))

  def entropy(self, logits):
    return sum(Categorical(n).entropy(l) for n, l in zip(self.nvec, self._split(logits)))

  def mode(self, logits):
    return jnp.stack([jnp.argmax(l, axis=-1).astype(jnp.int32) for l in self._split(logits)], -1)

  def kl(self, p_logits, q_logits):
    return sum(Categorical(n).kl(p, q) for n, p, q in zip(self.nvec, self._split(p_logits), self._split(q_logits)))


@dataclasses.dataclass(frozen=True)
class DiagGaussian:
  """Diagonal Gaussian; head output: [..., 2*d] = mean and log-std. Samples are unbounded (envs clip)."""
  dim: int

  @property
  def param_size(self) -> int:
    return 2 * self.dim

  def _split(self, params):
    return params[..., :self.dim], params[..., self.dim:]

  def sample(self, key, params):
    mean, log_std = self._split(params)
    return mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape, mean.dtype)

  def log_prob(self, params, action):
    mean, log_std = self._split(params)
    z = (action - mean) * jnp.exp(-log_std)
    return jnp.sum(-0.5 * z**2 - log_std - 0.5 * math.log(2 * math.pi), axis=-1)

  def entropy(self, params):
    _, log_std = self._split(params)
    return jnp.sum(log_std + 0.5 * math.log(2 * math.pi * math.e), axis=-1)

  def mode(self, params):
    return self._split(params)[0]

  def kl(self, p_params, q_params):
    (mp, lp), (mq, lq) = self._split(p_params), self._split(q_params)
    return jnp.sum(lq - lp + (jnp.exp(2 * lp) + (mp - mq)**2) / (2 * jnp.exp(2 * lq)) - 0.5, axis=-1)


Distribution = Categorical | MultiCategorical | DiagGaussian


def for_action_space(space: base.ActionSpace) -> Distribution:
  """The policy distribution that fits an action space."""
  if isinstance(space, base.Discrete):
    return Categorical(space.n)
  if isinstance(space, base.MultiDiscrete):
    return MultiCategorical(tuple(space.nvec))
  if isinstance(space, base.Box):
    return DiagGaussian(math.prod(space.shape))
  raise TypeError(f"unsupported action space {space!r}")
