"""The SGD's random permutation of the batch: one sort of 64-bit words instead of `jax.random.permutation`.

`jax.random.permutation` sorts (random key, index) pairs in several rounds; XLA:CPU sorts pairs with a generic
comparator (≈ 80 ms for 2^18 elements here, and ≈ 90 s per round at 2^27 = 1,048,576 envs × 128 steps), while a
single array of 64-bit unsigned integers takes its fast path (≈ 13 ms, ≈ 15 s). So each element becomes one word:
random bits in the high bits, its index in the low `ceil(log2 n)` bits; sorting the words orders the indices by
their random keys, and the low bits read back are the permutation. With ≥ 37 random bits per element (n ≤ 2^27),
ties — the only departure from a uniform permutation, broken by index as in one round of jax's own shuffle — touch
a fraction ≤ n / 2^38 of the elements (≤ 0.05% at 2^27, ≈ 1e-6 at the reference 2^18).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Int

MAX_SIZE = 2**31 - 1  # int32 indices


def random_permutation(key: jax.Array, n: int) -> Int[Array, "n"]:
  """A uniformly random permutation of `range(n)` (int32), the same on any device layout."""
  if not 1 <= n <= MAX_SIZE:
    raise ValueError(f"permutation size {n} must be in [1, 2^31 - 1]")
  index_bits = max(1, (n - 1).bit_length())
  hi, lo = jax.random.bits(key, (2, n), jnp.uint32)
  index = jnp.arange(n, dtype=jnp.uint32)
  # 64-bit integers only exist inside this block; the result is converted back to int32 before it leaves.
  with jax.enable_x64(True):
    u64 = lambda x: jax.lax.convert_element_type(x, jnp.uint64)
    random_high = (u64(hi) << 32 | u64(lo)) >> index_bits << index_bits
    words = jax.lax.sort(random_high | u64(index))
    perm = jax.lax.convert_element_type(words & jnp.uint64((1 << index_bits) - 1), jnp.uint32)
  return perm.astype(jnp.int32)
