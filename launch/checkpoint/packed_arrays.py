"""A pytree of arrays as a few flat arrays (one per placement and bit width), and back: the form checkpoints take.

Orbax's work per save grows with the number of arrays (a tensorstore write, metadata and futures for each), hardly
with their bytes, and the training state is ~45 small arrays; packed, the default CartPole state is 2.

A leaf is placed by its sharding's spec, which the mesh Layout derives from the state's structure and never from the
device count, so the packing is the same on any mesh:
  flat  fully replicated leaves: their bits, concatenated into one replicated vector per bit width
  env   leaves split over their leading (env) axis: [N, bits] rows, concatenated along the second axis, so the packed
        array is split over N like its leaves. Packing moves no data between devices or processes, and orbax
        restores the packed array onto any number of devices like any sharded array.
1-byte types (bool, int8, uint8) go to uint8 words, 2-byte to uint16, 4-byte to uint32, 8-byte to two uint32, typed
PRNG keys to their key data: nothing is widened, and every bit pattern comes back unchanged.
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

Packed = dict[str, jax.Array]  # '<group>_<word dtype>' (e.g. 'env_uint32') → packed array
_WORDS = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}


def _group(sharding: Any, where: str) -> str:
  spec = tuple(sharding.spec) if isinstance(sharding, NamedSharding) else ()
  if all(s is None for s in spec):
    if not sharding.is_fully_replicated:
      raise ValueError(f"{where}: cannot pack an array placed by {sharding} (not a NamedSharding, not replicated)")
    return "flat"
  if spec[0] is not None and all(s is None for s in spec[1:]):
    return "env"
  raise ValueError(f"{where}: cannot pack an array with sharding spec {spec} (only replicated or split over the "
                   "first axis)")


def groups(tree: Any) -> list[str]:
  """'flat' or 'env' per leaf of a pytree of arrays or ShapeDtypeStructs with shardings."""
  return [_group(x.sharding, jax.tree_util.keystr(p)) for p, x in jax.tree_util.tree_leaves_with_path(tree)]


def layout(tree: Any) -> list[list[Any]]:
  """[path, shape, dtype, group] per leaf: JSON-able, saved next to the packed arrays so that a restore into another
  structure is caught by name instead of reading garbage."""
  return [[jax.tree_util.keystr(p), list(x.shape), str(x.dtype), g]
          for (p, x), g in zip(jax.tree_util.tree_leaves_with_path(tree), groups(tree))]


def _storage(dtype) -> tuple[Any, int]:
  """(word dtype, words per element)."""
  if jnp.issubdtype(dtype, jax.dtypes.prng_key):
    return jnp.uint32, math.prod(dtype._impl.key_shape)  # pylint: disable=protected-access
  itemsize = np.dtype(dtype).itemsize
  if itemsize not in _WORDS:
    raise TypeError(f"cannot pack dtype {dtype}")
  return _WORDS[itemsize], 2 if itemsize == 8 else 1


def _name(group: str, word) -> str:
  return f"{group}_{np.dtype(word).name}"


def _size(shape: tuple[int, ...], dtype, group: str) -> tuple[str, int]:
  """(packed array, words per row of it) of one leaf: per env for `env`, in all for `flat`."""
  word, per = _storage(dtype)
  return _name(group, word), per * math.prod(shape[1:] if group == "env" else shape)


def pack(tree: Any, leaf_groups: list[str]) -> Packed:
  """The leaves' bits, concatenated per group and word; traceable (`leaf_groups` from `groups`, outside jit)."""
  parts: dict[str, list[jax.Array]] = {}
  for x, group in zip(jax.tree.leaves(tree), leaf_groups):
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
      x = jax.random.key_data(x)
    word, _ = _storage(x.dtype)
    bits = jax.lax.bitcast_convert_type(x.astype(jnp.uint8) if x.dtype == jnp.bool_ else x, word)
    parts.setdefault(_name(group, word), []).append(
        bits.reshape(x.shape[0], -1) if group == "env" else bits.reshape(-1))
  return {k: jnp.concatenate(v, axis=1 if k.startswith("env") else 0) for k, v in parts.items()}


def unpack(packed: Packed, target: Any, leaf_groups: list[str]) -> Any:
  """Inverse of `pack`: a pytree shaped like `target` (arrays or ShapeDtypeStructs); traceable."""
  offsets = dict.fromkeys(packed, 0)
  leaves = []
  for t, group in zip(jax.tree.leaves(target), leaf_groups):
    name, n = _size(t.shape, t.dtype, group)
    start = offsets[name]
    offsets[name] = start + n
    bits = packed[name][:, start:start + n] if group == "env" else packed[name][start:start + n]
    if jnp.issubdtype(t.dtype, jax.dtypes.prng_key):
      leaves.append(jax.random.wrap_key_data(bits.reshape(*t.shape, -1), impl=t.dtype._impl))  # pylint: disable=protected-access
    elif t.dtype == jnp.bool_:
      leaves.append(bits.reshape(t.shape) != 0)
    else:
      wide = np.dtype(t.dtype).itemsize == 8
      leaves.append(jax.lax.bitcast_convert_type(bits.reshape(*t.shape, 2) if wide else bits.reshape(t.shape),
                                                 t.dtype))
  return jax.tree.unflatten(jax.tree.structure(target), leaves)


def packed_shapes(target: Any) -> dict[str, jax.ShapeDtypeStruct]:
  """The packed arrays of `target` (a pytree with shardings, all on one mesh), with their shardings."""
  sizes: dict[str, int] = {}
  rows, shardings = set(), {}
  leaves = jax.tree.leaves(target)
  # Replicated words go wherever the mesh's leaves are: a stray single-device leaf (e.g. a counter made outside jit)
  # must not pull the packed vector off the mesh.
  meshes = [x.sharding.mesh for x in leaves if isinstance(x.sharding, NamedSharding)]
  for x, group in zip(leaves, groups(target)):
    name, n = _size(x.shape, x.dtype, group)
    sizes[name] = sizes.get(name, 0) + n
    if group == "env":
      rows.add(x.shape[0])
      shardings[name] = NamedSharding(x.sharding.mesh, P(x.sharding.spec[0], None))
    else:
      shardings[name] = NamedSharding(meshes[0], P()) if meshes else x.sharding
  if len(rows) > 1:
    raise ValueError(f"the env-split leaves disagree on the env axis: {sorted(rows)}")
  return {k: jax.ShapeDtypeStruct((*rows, n) if k.startswith("env") else (n,), jnp.dtype(k.split("_", 1)[1]),
                                  sharding=shardings[k]) for k, n in sizes.items()}


def unpacker(target: Any):
  """jit(unpack) onto `target`'s shapes, dtypes and shardings."""
  leaf_groups = groups(target)
  shapes = jax.tree.map(lambda t: jax.ShapeDtypeStruct(t.shape, t.dtype), target)
  return jax.jit(lambda packed: unpack(packed, shapes, leaf_groups),
                 out_shardings=jax.tree.map(lambda t: t.sharding, target))
