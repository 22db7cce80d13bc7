"""The Flax actor-critic: MLP trunks (separate or shared), a policy head sized by the distribution, a value head.

Gaussian heads use a state-independent log-std parameter (as in most PPO implementations), so the head output is
the mean followed by the broadcast log-std.
"""
from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from learner import code_path, distributions

# Which loss a parameter's gradient comes from, by the module names below (learner/diagnostics.py reports the
# gradient noise of each group): a separate actor trunk and the policy head only get the policy objective's gradient
# (surrogate + entropy), a separate critic trunk and the value head only the value loss's; a shared trunk (or the
# entity encoder) gets both and is neither.
POLICY_MODULES = ("actor", "policy_head", "log_std")
VALUE_MODULES = ("critic", "value_head")
PARAM_GROUPS = ("policy", "value", "shared")

THIN = 8  # products with at most this many inputs (or half as many outputs) are written elementwise
ACTIVATIONS = {"tanh": nn.tanh, "relu": nn.relu, "gelu": nn.gelu, "silu": nn.silu}


def param_groups(params) -> list[int]:
  """Per leaf of `params` (in jax.tree.leaves order), its index in PARAM_GROUPS: the first module name on its path
  that is a policy or a value module decides; a leaf under neither is shared."""
  def group(path) -> int:
    for entry in path:
      name = getattr(entry, "key", getattr(entry, "name", None))
      if name in POLICY_MODULES:
        return 0
      if name in VALUE_MODULES:
        return 1
    return 2
  return [group(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def _vecmat(v, m):
  """v [M] · m [M, D] -> [D]: a contraction over the long sample axis, which XLA:CPU runs as a fast GEMV."""
  return jax.lax.dot_general(v, m, (((0,), (0,)), ((), ())))


def _forward(x, kernel, bias):
  if kernel.shape[0] <= THIN:  # few inputs: multiply-adds that fuse with the activation around them
    return bias + sum(x[..., i:i + 1] * kernel[i] for i in range(kernel.shape[0]))
  if kernel.shape[1] <= THIN // 2:  # few outputs: one matrix-vector product per output
    return bias + jnp.stack([x @ kernel[:, j] for j in range(kernel.shape[1])], axis=-1)
  return x @ kernel + bias


@jax.custom_vjp
def dense(x, kernel, bias):
  """x [..., I] @ kernel [I, O] + bias [O], with a backward pass shaped for XLA:CPU.

  Autodiff's weight gradient xᵀ·g contracts the long sample axis of two row-major [M, ·] arrays; XLA:CPU runs that
  as a slow transposed GEMM (64×64: half the speed of the forward product) and, for the elementwise thin forms,
  as one materialised [M, O] product per input. Here each thin weight gradient is one GEMV per thin column over
  the sample axis, and bias gradients are GEMVs with a ones vector. Same values up to float summation order.
  """
  return _forward(x, kernel, bias)


def _dense_fwd(x, kernel, bias):
  return _forward(x, kernel, bias), (x, kernel)


def _dense_bwd(res, g):
  x, kernel = res
  lead, (num_in, num_out) = x.shape[:-1], kernel.shape
  x2, g2 = x.reshape(-1, num_in), g.reshape(-1, num_out)
  d_bias = _vecmat(jnp.ones(g2.shape[:1], g2.dtype), g2)
  if num_in <= THIN:
    d_kernel = jnp.stack([_vecmat(x2[:, i], g2) for i in range(num_in)], axis=0)
    d_x = jnp.stack([g2 @ kernel[i] for i in range(num_in)], axis=-1)
  elif num_out <= THIN // 2:
    d_kernel = jnp.stack([_vecmat(g2[:, j], x2) for j in range(num_out)], axis=1)
    d_x = sum(g2[:, j:j + 1] * kernel[:, j] for j in range(num_out))
  else:
    # xᵀ materialised (the barrier stops XLA folding the transpose back into the dot): a row-major [I, M] × [M, O]
    # product runs ~1.7× faster than the transposed form, which more than pays for the copy.
    d_kernel = jax.lax.optimization_barrier(x2.T) @ g2
    d_x = g2 @ kernel.T
  return d_x.reshape(*lead, num_in), d_kernel, d_bias


dense.defvjp(_dense_fwd, _dense_bwd)


class Dense(nn.Module):
  """`nn.Dense` (same params, names and init). On CPU it is computed by `dense`: thin products (≤ 8 inputs: the
  first layer on CartPole's 4 observations; ≤ 4 outputs: the policy and value heads) as multiply-adds or
  matrix-vector products, which XLA:CPU runs several times faster than as library matmuls, and a backward pass
  written for the CPU. Accelerators get the plain product and autodiff (their GEMMs take transposed operands), and
  so does a CPU with PPO_PORTABLE=1 (learner/code_path.py)."""
  features: int
  kernel_init: Callable = nn.initializers.lecun_normal()
  bias_init: Callable = nn.initializers.zeros

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features))
    bias = self.param("bias", self.bias_init, (self.features,))
    if not code_path.cpu_forms():
      return x @ kernel + bias
    return dense(x, kernel, bias)


def _dense(features: int, scale: float) -> Dense:
  return Dense(features, kernel_init=nn.initializers.orthogonal(scale), bias_init=nn.initializers.zeros)


class MLP(nn.Module):
  hidden_sizes: Sequence[int]
  activation: str

  @nn.compact
  def __call__(self, x):
    act = ACTIVATIONS[self.activation]
    for size in self.hidden_sizes:
      x = act(_dense(size, np.sqrt(2))(x))
    return x


class ActorCritic(nn.Module):
  """Maps observations [..., obs] to (distribution params [..., P], value [...])."""
  dist: distributions.Distribution
  hidden_sizes: Sequence[int] = (64, 64)
  activation: str = "tanh"
  shared_trunk: bool = False

  def setup(self):
    if self.shared_trunk:
      self.trunk = MLP(self.hidden_sizes, self.activation)
    else:
      self.actor = MLP(self.hidden_sizes, self.activation)
      self.critic = MLP(self.hidden_sizes, self.activation)
    self.value_head = _dense(1, 1.0)
    if isinstance(self.dist, distributions.DiagGaussian):
      self.policy_head = _dense(self.dist.dim, 0.01)
      self.log_std = self.param("log_std", nn.initializers.zeros, (self.dist.dim,))
    else:
      self.policy_head = _dense(self.dist.param_size, 0.01)

  def __call__(self, obs: Float[Array, "*B obs"]) -> tuple[Float[Array, "*B P"], Float[Array, "*B"]]:
    obs = obs.astype(jnp.float32)
    if self.shared_trunk:
      actor_h = critic_h = self.trunk(obs)
    else:
      actor_h, critic_h = self.actor(obs), self.critic(obs)
    return self._head(actor_h), self.value_head(critic_h)[..., 0]

  def value(self, obs: Float[Array, "*B obs"]) -> Float[Array, "*B"]:
    """The critic alone (bootstrapping from final observations needs no policy)."""
    obs = obs.astype(jnp.float32)
    return self.value_head(self.trunk(obs) if self.shared_trunk else self.critic(obs))[..., 0]

  def _head(self, h):
    out = self.policy_head(h)
    if isinstance(self.dist, distributions.DiagGaussian):
      out = jnp.concatenate([out, jnp.broadcast_to(self.log_std, out.shape)], axis=-1)
    return out
