"""What one checkpoint step holds on disk: the run's state as named parts, packed into a few arrays, and the host
record that describes them (layout, where each part lies in the packed words, fingerprints, pending metrics).

A step has two orbax items, written together and renamed into place only once complete:
  arrays  two packed items, one per device group:
            learner  {"params": the network params (all that `config.restore_from` reads),
                      "train_state": the rest of the TrainState but the runner (optimizer state with the anneal's
                                     step count, PRNG key, update counter, PPO-EWMA's params),
                      "stale_params": the params versions the in-flight batches are collected with (overlap mode)}
            runner   {"runner": env states, last observations, episode-return accumulators, observation statistics
                                and reset pool}
          each packed by launch/checkpoint/packed_arrays.py (a few arrays instead of ~45: orbax's per-save work grows with the
          number of arrays, hardly with their bytes). The runner is packed only when it shares the learner's devices;
          otherwise it is saved array by array (its layout is then None).
  host    JSON: FORMAT, the update, the run's config, the per-update metrics and policy lags of the unfinished log
          interval, the wall time so far, per item the packed layout (path, shape, dtype, placement per leaf), the
          span of each part in each packed array, a fingerprint per packed array (catches corrupted bytes that
          still decode), and the record's own checksum (`seal`: a flipped bit in the record is caught, not read as
          another config).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from launch.config import resolve as config_lib
from launch.checkpoint import packed_arrays
from launch.checkpoint.read_errors import CorruptStep
from learner import diagnostics
from pipeline import sfl
from pipeline.dataflow import Snapshot
from pipeline.iteration import UpdateMetrics

FORMAT = 2  # version of this layout; steps without it (or with another) were written by an earlier version
LEARNER, RUNNER = "learner", "runner"  # the packed items: the learner's devices, the actors'
# Metrics a saved interval may lack (written by a version without them) that count something: absent means none
# counted. Any other absent metric is NaN ("unknown") in the restored interval.
COUNTS = {"episode_count": np.int32(0), "episode_return_sum": np.float32(0), "sfl.buffer_resets": np.int32(0),
          "sfl.resets": np.int32(0)}
_GROUPS = ("diagnostics", "sfl")  # UpdateMetrics' optional parts, saved as `<group>.<name>`


CHECKSUM = "checksum"


def _digest(host: dict[str, Any]) -> str:
  body = {k: v for k, v in host.items() if k != CHECKSUM}
  return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def seal(host: dict[str, Any]) -> dict[str, Any]:
  """The host record with the checksum of the rest of it, as it will read back (JSON turns int keys into strings)."""
  return {**host, CHECKSUM: _digest(json.loads(json.dumps(host)))}


def check_seal(host: dict[str, Any], where: str) -> None:
  """Raises CorruptStep when the record does not match its checksum (a record without one is taken as it is)."""
  if CHECKSUM in host and host[CHECKSUM] != _digest(host):
    raise CorruptStep(f"{where}: its host record does not match its checksum (corrupted bytes)")


def parts(snapshot: Snapshot) -> dict[str, dict[str, Any]]:
  """The snapshot as the checkpoint's named parts, grouped by packed item."""
  state = snapshot.state
  return {LEARNER: {"params": state.params, "train_state": state.replace(params=None, runner=None),
                    "stale_params": list(snapshot.stale_params)},
          RUNNER: {"runner": state.runner}}


def snapshot(unpacked: dict[str, dict[str, Any]]) -> Snapshot:
  """Inverse of `parts`."""
  learner = unpacked[LEARNER]
  state = learner["train_state"].replace(params=learner["params"], runner=unpacked[RUNNER]["runner"])
  return Snapshot(state=state, stale_params=tuple(learner["stale_params"]))


def check_format(host: dict[str, Any], where: str) -> None:
  if host.get("format") != FORMAT:
    raise config_lib.ConfigError(f"cannot resume from {where}: it was written by an earlier version of this code "
                                 "(another checkpoint format); resume it with that version, or use a new --workdir")


def layouts(items: dict[str, Any]) -> dict[str, list[list[Any]]]:
  return {name: packed_arrays.layout(tree) for name, tree in items.items()}


def spans(item: dict[str, Any]) -> dict[str, dict[str, list[int]]]:
  """Where each part of a packed item lies: part → packed array → [start, stop) along its last axis. Parts are packed
  one after the other (in pytree order), so each is one contiguous span of every packed array it has leaves in."""
  out, offsets = {}, {}
  for name in sorted(item):  # the order jax flattens a dict in, which is the order `pack` concatenates
    out[name] = {}
    for array, shape in packed_arrays.packed_shapes(item[name]).items():
      start = offsets.get(array, 0)
      offsets[array] = start + shape.shape[-1]
      out[name][array] = [start, offsets[array]]
  return out


def part_words(packed: packed_arrays.Packed, part_spans: dict[str, list[int]]) -> packed_arrays.Packed:
  """One part's packed arrays (as `packed_arrays.pack` packs that part alone) cut out of its item's."""
  return {array: packed[array][..., start:stop] for array, (start, stop) in part_spans.items()}


def _leaf_fingerprint(x: jax.Array) -> jax.Array:
  if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    bits = x.astype(jnp.uint32)
  elif x.dtype.itemsize >= 4:
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32)  # 8-byte types gain a trailing axis of two halves
  else:
    bits = jax.lax.bitcast_convert_type(x, jnp.dtype(f"uint{8 * x.dtype.itemsize}")).astype(jnp.uint32)
  bits = bits.ravel()
  # Odd weights: flipping any single bit changes the sum mod 2^32. Integer sums are exact in any order, so the
  # fingerprint does not depend on how the array is sharded.
  return jnp.sum(bits * (2 * jnp.arange(bits.size, dtype=jnp.uint32) + 1), dtype=jnp.uint32)


def fingerprints(packed: Any) -> Any:
  """uint32 per packed array (a position-weighted sum of its bit patterns); traceable."""
  return jax.tree.map(_leaf_fingerprint, packed)


check_fingerprints = jax.jit(fingerprints)  # after a restore, on the restored arrays


def _replicated(sharding: jax.sharding.Sharding) -> jax.sharding.Sharding:
  if isinstance(sharding, jax.sharding.NamedSharding):
    return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
  return sharding


def make_packer(example: dict[str, Any]):
  """jit: items (name → pytree, placed like `example`) → (packed arrays per item, placed like their leaves; their
  fingerprints, replicated), in one dispatch."""
  leaf_groups = {name: packed_arrays.groups(tree) for name, tree in example.items()}
  out = {name: {k: v.sharding for k, v in packed_arrays.packed_shapes(tree).items()} for name, tree in example.items()}

  def fn(items):
    packed = {name: packed_arrays.pack(tree, leaf_groups[name]) for name, tree in items.items()}
    return packed, fingerprints(packed)
  return jax.jit(fn, out_shardings=(out, jax.tree.map(_replicated, out)))


# The unfinished interval's metrics, as JSON: name → {"dtype", "values" (one per update)}.


def _metric_fields(m: UpdateMetrics) -> dict[str, Any]:
  """The per-update scalars by name, the diagnostics' and SFL's (if on) as `diagnostics.<name>` / `sfl.<name>`."""
  out = {f.name: getattr(m, f.name) for f in dataclasses.fields(UpdateMetrics) if f.name not in _GROUPS}
  for group in _GROUPS:
    if getattr(m, group) is not None:
      out.update({f"{group}.{k}": v for k, v in dataclasses.asdict(getattr(m, group)).items()})
  return out


def metrics_to_json(metrics: list[UpdateMetrics]) -> dict[str, Any]:
  # .item() gives Python floats holding the float32 values exactly; JSON writes them with round-trip precision.
  rows = [_metric_fields(m) for m in metrics]
  return {name: {"dtype": str(np.asarray(value).dtype), "values": [np.asarray(r[name]).item() for r in rows]}
          for name, value in (rows[0].items() if rows else ())}


def metrics_from_json(data: dict[str, Any], with_diagnostics: bool, required: tuple[str, ...] = (),
                      with_sfl: bool = False) -> tuple[UpdateMetrics, ...] | None:
  """The saved metrics as this version's UpdateMetrics (with diagnostics when this run has them on), whatever
  version saved them: a metric saved but no longer computed is dropped; one not saved is NaN, or 0 for COUNTS.
  None if one of `required` was not saved."""
  count = len(next(iter(data.values()))["values"]) if data else 0
  if count and any(k not in data for k in required):
    return None
  names = [f.name for f in dataclasses.fields(UpdateMetrics) if f.name not in _GROUPS]
  diag_names = [f.name for f in dataclasses.fields(diagnostics.Diagnostics)] if with_diagnostics else []
  sfl_names = [f.name for f in dataclasses.fields(sfl.SFLMetrics)] if with_sfl else []

  def value(name: str, i: int) -> np.ndarray:
    if name in data:
      return np.asarray(data[name]["values"][i], data[name]["dtype"])
    return COUNTS.get(name, np.float32(np.nan))

  out = []
  for i in range(count):
    diag = diagnostics.Diagnostics(**{k: value(f"diagnostics.{k}", i) for k in diag_names}) if diag_names else None
    sfl_metrics = sfl.SFLMetrics(**{k: value(f"sfl.{k}", i) for k in sfl_names}) if sfl_names else None
    out.append(UpdateMetrics(**{k: value(k, i) for k in names}, diagnostics=diag, sfl=sfl_metrics))
  return tuple(out)
