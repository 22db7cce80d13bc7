"""A [T, N] batch packed as one float32 array of rows, so gathering a sample reads one contiguous row.

Minibatches gather samples by random (t, n) index (pipeline/sgd_chunks.py). Gathered leaf by leaf, each sample costs
one scattered read per leaf (six for PPO: obs, action, log-prob, value, advantage, target), and once the batch
outgrows the caches each of them is a cache miss; packed, a sample is one row of a few dozen bytes. Packing is one
pass over the batch per update, against `update_epochs` passes of random reads.

float32 leaves are stored as they are; narrower types (bool, int8/16, float16, bfloat16) are converted, which
float32 holds exactly; 32-bit integers take two columns, their 16-bit halves as floats. (Not their bits: an int
bitcast to float32 is mostly a denormal, and on several devices XLA partitions the gather as a masked sum across
devices, which flushes denormals to zero.)
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jaxtyping import Array, Float, Int


@struct.dataclass
class Rows:
  data: Float[Array, "T N F"]
  treedef: Any = struct.field(pytree_node=False)
  columns: tuple = struct.field(pytree_node=False)  # per leaf: (offset, trailing shape, dtype)


def pack(batch) -> Rows:
  """`batch`: a pytree whose leaves are [T, N, ...].

  Packed one time step at a time: packed at once, XLA may materialise the converted non-float32 leaves of the whole
  batch beside the rows (for entity observations, their masks and indexes: ~1 KB per transition on Kinetix), and
  they would be live at the update's memory peak; per step they are [N, F] at most."""
  leaves, treedef = jax.tree.flatten(batch)
  columns, offset = [], 0
  for x in leaves:
    dtype = np.dtype(x.dtype)
    if dtype.itemsize > 4:
      raise TypeError(f"batch_rows packs 32-bit or narrower leaves, got {dtype}")
    columns.append((offset, x.shape[2:], dtype))  # 2 × the elements wide for 32-bit integers
    offset += int(np.prod(x.shape[2:], dtype=int)) * (2 if dtype != np.float32 and dtype.itemsize == 4 else 1)

  def step(xs):
    parts = []
    for x in xs:
      flat = x.reshape(x.shape[:1] + (-1,))
      if x.dtype != jnp.float32 and np.dtype(x.dtype).itemsize == 4:  # 32-bit integers: low and high 16 bits
        bits = jax.lax.bitcast_convert_type(flat, jnp.uint32)
        flat = jnp.concatenate([bits & 0xFFFF, bits >> 16], axis=-1)
      parts.append(flat.astype(jnp.float32))
    return jnp.concatenate(parts, axis=-1)

  return Rows(data=jax.lax.map(step, leaves), treedef=treedef, columns=tuple(columns))


def unpack(rows: Rows, data: Float[Array, "M F"]):
  """Gathered rows [M, F] -> the batch's pytree with leaves [M, ...]."""
  leaves = []
  for offset, shape, dtype in rows.columns:
    width = int(np.prod(shape, dtype=int))
    if dtype == np.float32 or dtype.itemsize < 4:
      x = data[:, offset:offset + width].astype(dtype)
    else:
      halves = data[:, offset:offset + 2 * width].astype(jnp.uint32)
      x = jax.lax.bitcast_convert_type(halves[:, :width] | (halves[:, width:] << 16), dtype)
    leaves.append(x.reshape((data.shape[0],) + tuple(shape)))
  return jax.tree.unflatten(rows.treedef, leaves)


def at(x: Array, idx: Int[Array, "M"]) -> Array:
  """x [T, N, ...] at the flat (t, n) sample indices `idx` (t * N + n) -> [M, ...]."""
  num_envs = x.shape[1]
  return x[idx // num_envs, idx % num_envs]


def take(rows: Rows, idx: Int[Array, "M"]) -> Float[Array, "M F"]:
  """The rows of the flat (t, n) sample indices `idx`."""
  return at(rows.data, idx)
