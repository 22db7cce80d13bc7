"""A [T, N] batch packed as one float32 array of rows, so gathering a sample reads one contiguous row.

The rollout writes each time step's transitions as rows (`pack_step`), GAE writes advantages and targets into two of
their columns in place (pipeline/gae.py), and the SGD epochs gather from them: the update holds one copy of the
batch, one row per transition.

Minibatches gather samples by random (t, n) index (pipeline/sgd_chunks.py). Gathered leaf by leaf, each sample costs
one scattered read per leaf (six for PPO: obs, action, log-prob, value, advantage, target), and once the batch
outgrows the caches each of them is a cache miss; packed, a sample is one row of a few dozen bytes.

float32 leaves are stored as they are; narrower types (int8/16, float16) are converted, which float32 holds
exactly; 32-bit integers take two columns, their 16-bit halves as floats; bools (the masks of entity observations:
206 of them per Kinetix transition) are bits, 16 to a column, each column that 16-bit integer as a float. (Not their bits: an int bitcast to float32
is mostly a denormal, and on several devices XLA partitions the gather as a masked sum across devices, which flushes
denormals to zero; GPUs also run float32 with flush-to-zero.)

bfloat16 leaves (observations with obs_store=bfloat16, learner/obs_store.py) are stored two per column, as bits:
a (first of a pair) and b as the float32 whose bits are ((bits(a) + 0x0080) << 16) | bits(b), a leaf with an odd
element count padded with one zero. Adding 1 to a's 8-bit exponent field maps a finite bfloat16 of exponent field
0..0xFD (|a| <= 2^126) to 1..0xFE: the packed float is always normal and finite (zeros, negative zeros and bfloat16
denormals included), so copies, selects and masked sums keep it bit for bit. Larger magnitudes, ±inf and NaN are
stored as ±2^126 (obs_store clamps observations to that range before rounding, so it never happens to them).
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
  names: tuple = struct.field(pytree_node=False, default=())  # per leaf: its path in the tree (jax.tree_util.keystr)

  def offset(self, name: str) -> int:
    """The column of the float32 scalar leaf at path `name` (e.g. ".value")."""
    offset, shape, dtype = self.columns[self.names.index(name)]
    if shape != () or dtype != np.float32:
      raise TypeError(f"{name} is not a float32 scalar column: {shape} {dtype}")
    return offset

  def relabel(self, fn) -> Rows:
    """The same data read as `fn(tree)`, a new pytree of this one's leaves in the same order (e.g. a trajectory's
    reward and done columns read as advantages and targets once GAE has written them there in place)."""
    marks = [jax.ShapeDtypeStruct(shape, dtype) for _, shape, dtype in self.columns]
    with_path, treedef = jax.tree_util.tree_flatten_with_path(fn(jax.tree.unflatten(self.treedef, marks)))
    if len(with_path) != len(marks) or any(x is not m for (_, x), m in zip(with_path, marks)):
      raise ValueError("relabel: the new tree must hold every column, in the same order")
    return Rows(data=self.data, treedef=treedef, columns=self.columns,
                names=tuple(jax.tree_util.keystr(path) for path, _ in with_path))


BOOL_BITS = 16  # bools per column: an integer below 2^16, exact in float32 (normal or zero, so gathers keep it)
PAIR_BIAS = 0x0080  # + 1 in the exponent field of a pair's first bfloat16 (see the module docstring)
_PAIR_MAX_BITS = 0x7E80  # bits of 2^126: the largest |bfloat16| whose exponent field is <= 0xFD


def _columns(shape: tuple, dtype: np.dtype) -> int:
  """Floats a leaf of trailing `shape` and `dtype` takes in a row."""
  size = int(np.prod(shape, dtype=int))
  if dtype == jnp.bfloat16:
    return (size + 1) // 2  # two per column
  if dtype == np.bool_:
    return -(-size // BOOL_BITS)  # BOOL_BITS per column
  return 2 * size if dtype != np.float32 and dtype.itemsize == 4 else size  # 32-bit integers: two halves


def _layout(tree, leading: int) -> tuple[Any, tuple, tuple]:
  """(treedef, columns, names) of `tree`'s leaves, whose first `leading` axes are the batch axes."""
  with_path, treedef = jax.tree_util.tree_flatten_with_path(tree)
  columns, names, offset = [], [], 0
  for path, x in with_path:
    dtype = np.dtype(x.dtype)
    if dtype.itemsize > 4:
      raise TypeError(f"batch_rows packs 32-bit or narrower leaves, got {dtype}")
    columns.append((offset, tuple(x.shape[leading:]), dtype))
    names.append(jax.tree_util.keystr(path))
    offset += _columns(tuple(x.shape[leading:]), dtype)
  return treedef, tuple(columns), tuple(names)


def width(tree, leading: int = 1) -> int:
  """Floats per row for `tree` (leaves with `leading` batch axes)."""
  _, columns, _ = _layout(tree, leading)
  if not columns:
    return 0
  offset, shape, dtype = columns[-1]
  return offset + _columns(shape, dtype)


def _pack_pairs(flat: Array) -> Float[Array, "N P"]:
  """bfloat16 [N, E] -> float32 [N, ceil(E / 2)]: element 2i in the high half (exponent + 1), 2i + 1 in the low.
  Integer operations only: a float clamp or pad would flush bfloat16 denormals to zero on CPU."""
  bits = jax.lax.bitcast_convert_type(flat, jnp.uint16).astype(jnp.uint32)
  magnitude = bits & 0x7FFF  # ±inf and NaN (exponent field 0xFF) and 0xFE become ±2^126
  bits = jnp.where(magnitude > _PAIR_MAX_BITS, (bits & 0x8000) | _PAIR_MAX_BITS, bits)
  if bits.shape[-1] % 2:
    bits = jnp.pad(bits, ((0, 0), (0, 1)))
  bits = bits.reshape(bits.shape[0], -1, 2)
  return jax.lax.bitcast_convert_type(((bits[..., 0] + PAIR_BIAS) << 16) | bits[..., 1], jnp.float32)


def _unpack_pairs(packed: Float[Array, "M P"], size: int) -> Array:
  """float32 [M, P] from `_pack_pairs` -> bfloat16 [M, size]."""
  bits = jax.lax.bitcast_convert_type(packed, jnp.uint32)
  halves = jnp.stack([((bits >> 16) - PAIR_BIAS) & 0xFFFF, bits & 0xFFFF], axis=-1).astype(jnp.uint16)
  return jax.lax.bitcast_convert_type(halves.reshape(packed.shape[0], -1)[:, :size], jnp.bfloat16)


def _pack_bools(flat: Array) -> Float[Array, "N B"]:
  """bool [N, E] -> float32 [N, ceil(E / BOOL_BITS)]: each column the integer whose bits are BOOL_BITS of them
  (element BOOL_BITS·j + i is bit i of column j), as a float32, which holds it exactly."""
  pad = -flat.shape[-1] % BOOL_BITS
  bits = jnp.pad(flat, ((0, 0), (0, pad))).reshape(flat.shape[0], -1, BOOL_BITS).astype(jnp.uint32)
  return jnp.sum(bits << jnp.arange(BOOL_BITS, dtype=jnp.uint32), axis=-1, dtype=jnp.uint32).astype(jnp.float32)


def _unpack_bools(packed: Float[Array, "M B"], size: int) -> Array:
  """float32 [M, B] from `_pack_bools` -> bool [M, size]."""
  bits = packed.astype(jnp.uint32)[..., None] >> jnp.arange(BOOL_BITS, dtype=jnp.uint32)
  return (bits & 1).astype(bool).reshape(packed.shape[0], -1)[:, :size]


def pack_step(tree) -> Float[Array, "N F"]:
  """One time step's pytree (leaves [N, ...]) as its [N, F] rows."""
  parts = []
  for x in jax.tree.leaves(tree):
    if np.dtype(x.dtype).itemsize > 4:
      raise TypeError(f"batch_rows packs 32-bit or narrower leaves, got {x.dtype}")
    flat = x.reshape(x.shape[:1] + (-1,))
    if x.dtype == jnp.bfloat16:
      flat = _pack_pairs(flat)
    elif x.dtype == jnp.bool_:
      flat = _pack_bools(flat)
    elif x.dtype != jnp.float32 and np.dtype(x.dtype).itemsize == 4:  # 32-bit integers: low and high 16 bits
      bits = jax.lax.bitcast_convert_type(flat, jnp.uint32)
      flat = jnp.concatenate([bits & 0xFFFF, bits >> 16], axis=-1)
    parts.append(flat.astype(jnp.float32))
  return jnp.concatenate(parts, axis=-1)


def from_steps(data: Float[Array, "T N F"], step_tree) -> Rows:
  """Rows of the [T, N, F] `data` stacked from `pack_step(step_tree)` at every step (step_tree: leaves [N, ...])."""
  treedef, columns, names = _layout(step_tree, leading=1)
  return Rows(data=data, treedef=treedef, columns=columns, names=names)


def pack(batch) -> Rows:
  """`batch`: a pytree whose leaves are [T, N, ...], packed one time step at a time: packed at once, XLA may
  materialise the converted non-float32 leaves of the whole batch beside the rows (for entity observations, their
  masks and indexes: ~1 KB per transition on Kinetix); per step they are [N, F] at most. (The rollout packs each
  step as it goes, pipeline/rollout.py, so the trainer never holds an unpacked batch.)"""
  treedef, columns, names = _layout(batch, leading=2)
  return Rows(data=jax.lax.map(pack_step, batch), treedef=treedef, columns=columns, names=names)


def unpack(rows: Rows, data: Float[Array, "M F"]):
  """Gathered rows [M, F] -> the batch's pytree with leaves [M, ...]."""
  leaves = []
  for offset, shape, dtype in rows.columns:
    size = int(np.prod(shape, dtype=int))
    columns = data[:, offset:offset + _columns(shape, dtype)]
    if dtype == jnp.bfloat16:
      x = _unpack_pairs(columns, size)
    elif dtype == np.bool_:
      x = _unpack_bools(columns, size)
    elif dtype == np.float32 or dtype.itemsize < 4:
      x = columns.astype(dtype)
    else:
      halves = columns.astype(jnp.uint32)
      x = jax.lax.bitcast_convert_type(halves[:, :size] | (halves[:, size:] << 16), dtype)
    leaves.append(x.reshape((data.shape[0],) + tuple(shape)))
  return jax.tree.unflatten(rows.treedef, leaves)


def unpack_batch(rows: Rows):
  """The whole batch's pytree, leaves [T, N, ...] (for inspection: the trainer only ever unpacks gathered rows)."""
  num_steps, num_envs, num_columns = rows.data.shape
  flat = unpack(rows, rows.data.reshape(num_steps * num_envs, num_columns))
  return jax.tree.map(lambda x: x.reshape((num_steps, num_envs) + x.shape[1:]), flat)


def at(x: Array, idx: Int[Array, "M"], flat: bool = False) -> Array:
  """x [T, N, ...] at the flat (t, n) sample indices `idx` (t * N + n) -> [M, ...].

  `flat`: read x as [T * N, ...] and gather by `idx` itself, which XLA:CPU runs faster than the (t, n) gather once
  the batch is out of cache (a 5.4 GB batch: ≈ 45 against ≈ 70 ns per row). Only where the env axis is not split
  over devices: there the reshape would gather the whole batch onto every device.
  """
  if flat:
    return x.reshape((-1,) + x.shape[2:]).at[idx].get(mode="promise_in_bounds")
  num_envs = x.shape[1]
  return x[idx // num_envs, idx % num_envs]


def take(rows: Rows, idx: Int[Array, "M"], flat: bool = False, local_shards: int = 0) -> Float[Array, "M F"]:
  """The rows of the flat (t, n) sample indices `idx` (`flat`: see `at`; `local_shards`: see `at_local`)."""
  if local_shards:
    return at_local(rows.data, idx, local_shards)
  return at(rows.data, idx, flat)


def at_local(x: Array, idx: Int[Array, "M"], shards: int) -> Array:
  """x [T, N, ...] at flat (t, n) indices `idx` whose i-th block of M / shards falls in the i-th block of N / shards
  envs (a local shuffle's, pipeline/sgd.local_indices): gathered as a batch of `shards` gathers, one per block of
  envs, so with the env axis split over that many devices each gathers the rows it holds and none moves."""
  num_steps, num_envs = x.shape[:2]
  per = num_envs // shards
  blocks = x.reshape((num_steps, shards, per) + x.shape[2:])
  idx = idx.reshape(shards, -1)
  t, n = idx // num_envs, idx % per
  out = jax.vmap(lambda b, ti, ni: b[ti, ni], in_axes=(1, 0, 0))(blocks, t, n)  # [shards, M / shards, ...]
  return out.reshape((-1,) + x.shape[2:])


def column_at(rows: Rows, name: str, idx: Int[Array, "M"], flat: bool = False,
              local_shards: int = 0) -> Float[Array, "M"]:
  """The float32 scalar leaf `name` of the flat (t, n) sample indices `idx`: one float read per sample (`flat`: see
  `at`; `local_shards`: see `at_local`)."""
  if local_shards:
    return at_local(rows.data[..., rows.offset(name)], idx, local_shards)
  if flat:
    return rows.data.reshape(-1, rows.data.shape[-1]).at[idx, rows.offset(name)].get(mode="promise_in_bounds")
  num_envs = rows.data.shape[1]
  return rows.data[idx // num_envs, idx % num_envs, rows.offset(name)]


def column(rows: Rows, name: str) -> Float[Array, "T N"]:
  """The float32 scalar leaf `name` over the whole batch [T, N]."""
  return rows.data[..., rows.offset(name)]
