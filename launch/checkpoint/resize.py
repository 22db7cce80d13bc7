"""Reading a checkpoint saved at another num_envs (launch/run/elastic.py): the runner part is read at the saved env
count, replicated on the current mesh (the saved count need not divide its devices), and then rebuilt at this run's
count by `Programs.resize_runner` (pipeline/rollout.py `resize_runner`: kept envs keep their state, added ones start
from resets keyed by their global index). Everything else of the state is read unchanged, bit for bit."""
from __future__ import annotations

from typing import Any

import jax
from jax.sharding import NamedSharding, PartitionSpec as P

from launch.checkpoint import packed_arrays


def at_num_envs(runner: Any, num_envs: int) -> Any:
  """The abstract runner with its per-env leaves at `num_envs` and its shared parts as they are (placed like this
  run's: the packed layout)."""
  per_env = jax.tree.map(lambda x: jax.ShapeDtypeStruct((num_envs, *x.shape[1:]), x.dtype, sharding=x.sharding),
                         runner.per_env())
  return per_env.with_shared(runner)


def _replicated_sharding(x: Any) -> Any:
  return NamedSharding(x.sharding.mesh, P()) if isinstance(x.sharding, NamedSharding) else x.sharding


def replicated(tree: Any) -> Any:
  """The same shapes, fully replicated on their mesh: what the saved runner is read into."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=_replicated_sharding(x)), tree)


def unpacker(target: Any):
  """packed_arrays.unpacker onto `target`'s shapes, replicated."""
  leaf_groups = packed_arrays.groups(target)
  shapes = jax.tree.map(lambda t: jax.ShapeDtypeStruct(t.shape, t.dtype), target)
  return jax.jit(lambda packed: packed_arrays.unpack(packed, shapes, leaf_groups),
                 out_shardings=jax.tree.map(_replicated_sharding, target))
