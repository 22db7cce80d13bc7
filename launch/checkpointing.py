"""Full-state checkpoints of a run under WORKDIR/checkpoints (an orbax CheckpointManager): async saves, resume from the
newest readable step onto whatever mesh is current, fall back past corrupt steps, or start from another run's params.

A step is a pipeline.dataflow.Snapshot plus host state, in two items written together and renamed into place only
once complete (orbax's atomic rename, so a kill -9 mid-save leaves only a temporary directory, removed on the next
start):
  arrays  learner: the network params (first, all that `config.restore_from` reads), the rest of the TrainState but
          the runner — optimizer state (with the anneal's step count), PRNG key, update counter, PPO-EWMA's params —
          and (pipeline.mode=overlap) the params versions the in-flight batches are collected with; runner: env
          states, last observations, episode-return accumulators, and the observation statistics and reset pool
  host    JSON: the run's config (checked for compatibility before any array is read), the per-update metrics and
          policy lags of the unfinished log interval (so the next metrics.jsonl row equals the uninterrupted run's),
          the wall time so far, the layout of the packed arrays, and their fingerprints (catch corrupted bytes that
          still decode)
Each part is stored packed (launch/packed_arrays.py: a few arrays instead of ~45; orbax's per-save work grows with
the number of arrays and items, hardly with their bytes), without OCDBT (for so few arrays a plain zarr file each is
cheaper), and restored onto the current shardings, whatever mesh wrote it. The runner is packed only when it shares
the learner's devices: the pipeline's act stage may be dispatching on separate actor devices, and only the learner's
lock is ours to take, so there it is saved array by array. The loop only dispatches the packing; a writer thread does
the rest of a save (see `RunCheckpoints.maybe_save`).
Saves may fall on any update; metrics rows are written before the save of the same update.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from launch import config_lib
from launch import packed_arrays
from launch import workdir as workdir_lib
from learner import diagnostics
from pipeline.dataflow import Snapshot
from pipeline.iteration import UpdateMetrics

# Keys a resumed run must share with its checkpoint, and why. Other changed keys only log a warning (the run goes on,
# but is no longer the uninterrupted run); those in FREE_KEYS do not change the trajectory at all.
MUST_MATCH = {
    "env_name": "the saved env states and observations belong to that env",
    "num_envs": "there is one saved env state per env",
    "network.hidden_sizes": "the saved params have these shapes",
    "network.activation": "the saved params were trained for it",
    "network.shared_trunk": "the saved params have this structure",
    "anneal_lr": "the saved optimizer state has the schedule's step count only when annealing",
    "seed": "the saved PRNG key continues that seed's run",
    "ewma.enabled": "the saved state holds PPO-EWMA's proximal params only when it is on",
    "obs_norm": "the saved runner holds observation statistics only when it is on",
    "reset_pool.size": "the saved runner holds a reset pool of this size",
}
# pipeline.mode / max_policy_lag: fused and sync give identical results; only the overlap lag shapes the saved state
# (stale params versions) and the run, so that is what must match (see `_policy_lag`).
FREE_KEYS = ("log_every", "eval_every", "eval_episodes", "checkpoint_every", "keep_checkpoints", "restore_from",
             "mesh.data", "pipeline.actor_devices", "pipeline.mode", "pipeline.max_policy_lag", "log_checkpoints",
             "wandb.project", "wandb.entity", "wandb.name", "wandb.mode")
CHECKED_METRICS = ("policy_loss", "value_loss", "param_norm")

# Test-only hook (tests/test_checkpoint.py): hold the async save of this update just before its atomic rename until
# a stop is requested, writing WORKDIR/test_holding_save_<update> first, so a test can signal or kill -9 the run
# while that save is in flight. Unset in real runs.
TEST_HOLD_ENV = "PPO_TEST_HOLD_SAVE_AT_UPDATE"
TEST_WAIT_S = 300.0


def _drop_orbax_info(record) -> bool:  # levelno is the std library's (30 = WARNING), not absl's
  return record.levelno >= 30 or f"{os.sep}orbax{os.sep}" not in record.pathname


# Orbax logs ~25 INFO lines per save; keep its warnings and errors only.
logging.get_absl_logger().addFilter(_drop_orbax_info)


class NonFiniteError(FloatingPointError):
  """A loss or the params became NaN/inf; the poisoned state was not saved."""


class Preempted(Exception):
  """The run stopped on request after saving; rerunning the same command resumes it."""

  def __init__(self, update: int, path: str):
    super().__init__(f"stopped on request after update {update}; saved {path}. Rerun the same command to resume.")
    self.update, self.path = update, path


@dataclasses.dataclass(frozen=True)
class Resume:
  """Where the loop starts: update 0 for a new run."""
  update: int = 0
  pending: tuple[UpdateMetrics, ...] = ()  # host metrics of the updates since the last metrics row
  lags: tuple[int, ...] = ()  # and their policy lags
  wall_time: float = 0.0  # run time before this process (summed over earlier processes)


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = tuple(v) if isinstance(v, list) else v
  return out


def config_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
  return json.loads(json.dumps(config.to_dict()))  # tuples → lists, as they come back from the checkpoint


def _policy_lag(flat: dict[str, Any]) -> int:
  return flat.get("pipeline.max_policy_lag", 0) if flat.get("pipeline.mode") == "overlap" else 0


def check_compatible(config: ml_collections.ConfigDict, saved: dict[str, Any], where: str) -> None:
  """Raises ConfigError naming every MUST_MATCH key that differs; warns about other changed keys."""
  now, then = _flat(config_json(config)), _flat(saved)
  errors = [f"config.{k}={now.get(k)!r} does not match {then.get(k)!r} in the checkpoint ({why})"
            for k, why in MUST_MATCH.items() if now.get(k) != then.get(k)]
  if _policy_lag(now) != _policy_lag(then):
    errors.append(f"config.pipeline.mode={now.get('pipeline.mode')!r} with max_policy_lag="
                  f"{now.get('pipeline.max_policy_lag')!r} gives policy lag {_policy_lag(now)}, the checkpoint's "
                  f"is {_policy_lag(then)} (it holds that many in-flight params versions)")
  if errors:
    raise config_lib.ConfigError(
        f"cannot resume from {where}:\n  " + "\n  ".join(errors) +
        "\n  use a new --workdir (with --config.restore_from=<this run's workdir> to start from its params)")
  changed = [f"{k}: {then.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(now) | set(then))
             if k not in FREE_KEYS and now.get(k) != then.get(k)]
  if changed:
    logging.warning("resuming %s with changed config keys, so this is no longer the uninterrupted run: %s", where,
                    "; ".join(changed))


def _layout_diff(saved: list[list[Any]], want: list[list[Any]]) -> list[str]:
  """'path: <there> there, <here> here' per leaf that differs between two packed_arrays.layouts (its shape, else its
  dtype, else its placement)."""
  have = {path: (tuple(shape), dtype, group) for path, shape, dtype, group in saved}
  need = {path: (tuple(shape), dtype, group) for path, shape, dtype, group in want}
  out = []
  for k in sorted(set(have) | set(need)):
    a, b = have.get(k), need.get(k)
    if a != b:
      i = 0 if a is None or b is None or a[0] != b[0] else 1 if a[1] != b[1] else 2
      out.append(f"{k}: {'absent' if a is None else a[i]} there, {'absent' if b is None else b[i]} here")
  return out


def check_layout(parts: dict[str, Any], saved: dict[str, Any], where: str) -> None:
  """Raises ConfigError when the saved arrays are not the ones `parts` (the target) expect: a change of code (e.g. an
  env's state) that the config check cannot see. Not a corrupt step, so it is not quarantined."""
  diff = [f"{name}{d}" for name, tree in parts.items() for d in _layout_diff(saved[name], packed_arrays.layout(tree))]
  if diff:
    raise config_lib.ConfigError(f"cannot resume from {where}: its arrays do not fit this run's state:\n  " +
                                 "\n  ".join(diff[:8]))


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


@jax.jit
def fingerprint(tree) -> jax.Array:
  """uint32 per leaf of `tree`: a position-weighted sum of the bit patterns."""
  return jnp.stack([_leaf_fingerprint(x) for x in jax.tree.leaves(tree)])


def _parts(snapshot: Snapshot) -> dict[str, Any]:
  """The snapshot's arrays as the checkpoint's parts, each packed on its own: the learner's (params first, so that
  `read_params` finds them at the start of the packed words; the rest of the TrainState; the in-flight params
  versions) and the runner's, which may live on other devices."""
  state = snapshot.state
  return {"learner": (state.params, state.replace(params=None, runner=None), list(snapshot.stale_params)),
          "runner": state.runner}


def _runner_shares_learner(snapshot: Snapshot) -> bool:
  learner_devices = snapshot.state.key.sharding.device_set
  return all(x.sharding.device_set == learner_devices for x in jax.tree.leaves(snapshot.state.runner))


def _pack_and_fingerprint(example: dict[str, Any]):
  """jit: the parts packed, and a fingerprint per packed array, in one dispatch on the learner's devices."""
  leaf_groups = {name: packed_arrays.groups(tree) for name, tree in example.items()}
  out = {name: {k: v.sharding for k, v in packed_arrays.packed_shapes(tree).items()} for name, tree in example.items()}
  key_sharding = example["learner"][1].key.sharding  # replicated on the learner's devices
  replicated = (jax.sharding.NamedSharding(key_sharding.mesh, jax.sharding.PartitionSpec())
                if isinstance(key_sharding, jax.sharding.NamedSharding) else key_sharding)

  def fn(parts):
    packed = {name: packed_arrays.pack(tree, leaf_groups[name]) for name, tree in parts.items()}
    return packed, jax.tree.map(_leaf_fingerprint, packed)
  return jax.jit(fn, out_shardings=(out, jax.tree.map(lambda _: replicated, out)))


def _signature(tree: Any) -> tuple[Any, ...]:
  return (jax.tree.structure(tree),) + tuple((x.shape, x.dtype, x.sharding) for x in jax.tree.leaves(tree))


def _metric_fields(m: UpdateMetrics) -> dict[str, Any]:
  """The per-update scalars by name, the diagnostics' (if on) as `diagnostics.<name>`."""
  out = {f.name: getattr(m, f.name) for f in dataclasses.fields(UpdateMetrics) if f.name != "diagnostics"}
  if m.diagnostics is not None:
    out.update({f"diagnostics.{k}": v for k, v in dataclasses.asdict(m.diagnostics).items()})
  return out


def _metrics_to_json(metrics: list[UpdateMetrics]) -> dict[str, Any]:
  # .item() gives Python floats holding the float32 values exactly; JSON writes them with round-trip precision.
  rows = [_metric_fields(m) for m in metrics]
  return {name: {"dtype": str(np.asarray(value).dtype), "values": [np.asarray(r[name]).item() for r in rows]}
          for name, value in (rows[0].items() if rows else ())}


def _metrics_from_json(data: dict[str, Any]) -> tuple[UpdateMetrics, ...]:
  count = len(next(iter(data.values()))["values"]) if data else 0
  out = []
  for i in range(count):
    values = {name: np.asarray(d["values"][i], d["dtype"]) for name, d in data.items()}
    diag = {k.split(".", 1)[1]: values.pop(k) for k in list(values) if k.startswith("diagnostics.")}
    out.append(UpdateMetrics(**values, diagnostics=diagnostics.Diagnostics(**diag) if diag else None))
  return tuple(out)


def _first_line(error: BaseException, limit: int = 300) -> str:
  text = f"{type(error).__name__}: {error}".strip().splitlines()[0]
  return text if len(text) <= limit else text[:limit] + "…"


class _CheckpointManager(ocp.CheckpointManager):
  """Never asks JAX's preemption sync point: launch/preemption.py must be its only caller. Orbax asks it with the
  step of each save, also from its finalize thread once the loop is further on, which would move this host's protocol
  counter back and could leave the hosts stopping at different updates."""

  def reached_preemption(self, step: int) -> bool:
    del step
    return False


class _Writer:
  """One thread that runs the loop's save jobs in order, so that the loop only waits for a job to be queued.

  A job (see RunCheckpoints.maybe_save) pulls the update's metrics and fingerprints to the host, which waits for the
  update to finish, and then runs orbax's synchronous part of the save: thread start-ups, directory creation and the
  device-to-host copy, ~10-20 ms that would otherwise keep the loop from dispatching the next update. One job waits
  in the queue at most, so the loop cannot run ahead of the saves. The first error is kept and re-raised to the loop;
  later jobs are dropped."""

  def __init__(self):
    self._jobs: queue.Queue = queue.Queue(maxsize=1)
    self._error: BaseException | None = None
    self._thread = threading.Thread(target=self._run, name="checkpoint-writer", daemon=True)
    self._thread.start()

  def _run(self) -> None:
    while True:
      job = self._jobs.get()
      try:
        if job is None:
          return
        if self._error is None:
          job()
      except BaseException as e:  # pylint: disable=broad-except  (re-raised in the loop's thread)
        self._error = e
      finally:
        self._jobs.task_done()

  def _raise(self) -> None:
    if self._error is not None:
      error, self._error = self._error, None
      raise error

  def is_current_thread(self) -> bool:
    return threading.current_thread() is self._thread

  def submit(self, job: Callable[[], None]) -> None:
    self._raise()
    self._jobs.put(job)

  def drain(self) -> None:
    """Waits until every queued job has run; raises the first error."""
    self._jobs.join()
    self._raise()

  def close(self) -> None:
    self._jobs.put(None)
    self._thread.join()


class RunCheckpoints:
  """The run's checkpoints: `restore_or_init` once, `maybe_save` after every update, `close` at the end."""

  def __init__(self, workdir: str, config: ml_collections.ConfigDict, stop: Any = None):
    self.directory = workdir_lib.absolute(os.path.join(workdir, "checkpoints"))  # local or gs://...
    self._workdir = workdir
    self._config = config
    self._config_json = config_json(config)
    self._stop = stop  # preemption.StopRequest; only the test hold hook waits on it
    hold = os.environ.get(TEST_HOLD_ENV)
    self._test_hold_at = int(hold) if hold else None
    self._in_flight = collections.deque()  # test hook only: updates of the saves started, popped as each finalizes
    self._packer = None  # (signature of the parts it was built for, jitted pack + fingerprint, their layout)
    self._writer: _Writer | None = None  # started by the first save, with one process only (see maybe_save)
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocp.checkpoint_managers.LatestN(config.keep_checkpoints),
        enable_async_checkpointing=True, cleanup_tmp_directories=True,
        async_options=ocp.AsyncOptions(post_finalization_callback=self._test_hold if hold else None))
    # Without OCDBT: for a few small arrays, its per-save database work costs more CPU than a plain zarr file each.
    handlers = ocp.handlers.DefaultCheckpointHandlerRegistry()
    arrays, host = ocp.StandardCheckpointHandler(use_ocdbt=False), ocp.JsonCheckpointHandler()
    for args, handler in ((ocp.args.StandardSave, arrays), (ocp.args.StandardRestore, arrays),
                          (ocp.args.JsonSave, host), (ocp.args.JsonRestore, host)):
      handlers.add("arrays" if handler is arrays else "host", args, handler)
    self._manager = _CheckpointManager(self.directory, options=options, handler_registry=handlers)

  def step_path(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  # Restore.

  def restore_or_init(self, init: Callable[[], Snapshot], target: Snapshot) -> tuple[Snapshot, Resume]:
    """Own newest readable checkpoint → `config.restore_from` params → `init()`.

    `target` is the Snapshot of jax.ShapeDtypeStructs carrying the current meshes' shardings; arrays are restored
    straight into them, whatever mesh they were saved from.
    """
    failed = []
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        snapshot, host = self._restore_step(step, target)
      except config_lib.ConfigError:
        raise
      except Exception as e:  # pylint: disable=broad-except  (an unreadable step is skipped, never trusted)
        failed.append((step, e))
        continue
      for bad, error in failed:
        self._quarantine(bad, error)
      logging.info("resuming from %s", self.step_path(step))
      return snapshot, Resume(update=step, pending=_metrics_from_json(host["pending_metrics"]),
                              lags=tuple(host["pending_lags"]), wall_time=float(host["wall_time"]))
    if failed:
      raise config_lib.ConfigError(
          f"--workdir: no readable checkpoint in {self.directory}:\n  " +
          "\n  ".join(f"step {s}: {_first_line(e)}" for s, e in failed) +
          f"\n  move {self.directory} aside to start the run over")
    snapshot = init()
    if self._config.restore_from:
      params = read_params(self._config.restore_from, target.state.params)
      proximal = snapshot.state.proximal  # PPO-EWMA's average starts at them too (fresh weight 1)
      proximal = None if proximal is None else proximal.replace(params=params)
      snapshot = Snapshot(state=snapshot.state.replace(params=params, proximal=proximal),
                          stale_params=(params,) * len(target.stale_params))
      logging.info("new run from the params of %s", self._config.restore_from)
    return snapshot, Resume()

  def _restore_step(self, step: int, target: Snapshot) -> tuple[Snapshot, dict[str, Any]]:
    where = self.step_path(step)
    host = self._manager.restore(step, args=ocp.args.Composite(host=ocp.args.JsonRestore()))["host"]
    if "layout" not in host:
      raise config_lib.ConfigError(f"cannot resume from {where}: it was written by an earlier version of this code "
                                   "(arrays not packed); resume it with that version, or use a new --workdir")
    check_compatible(self._config, host["config"], where)
    parts = _parts(target)
    packed_runner = host["layout"]["runner"] is not None
    check_layout({k: v for k, v in parts.items() if k != "runner" or packed_runner}, host["layout"], where)
    shapes = {name: packed_arrays.packed_shapes(tree) for name, tree in parts.items()}
    arrays = dict(shapes, **({} if packed_runner else {"runner": parts["runner"]}))
    packed = self._manager.restore(step, args=ocp.args.Composite(arrays=ocp.args.StandardRestore(arrays)))["arrays"]
    got = {name: None if name == "runner" and not packed_runner else
           jax.tree.map(int, jax.device_get(jax.jit(lambda p: jax.tree.map(_leaf_fingerprint, p))(packed[name])))
           for name in parts}
    if got != host["fingerprint"] | ({} if packed_runner else {"runner": None}):
      raise ValueError("the restored arrays do not match the fingerprint saved with them (corrupted bytes)")
    unpacked = {name: packed_arrays.unpacker(tree)(packed[name]) if name != "runner" or packed_runner
                else packed[name] for name, tree in parts.items()}
    params, rest, stale = unpacked["learner"]
    state = rest.replace(params=params, runner=unpacked["runner"])
    if int(state.update) != step or host["update"] != step:
      raise ValueError(f"holds update {int(state.update)}, not {step}")
    return Snapshot(state=state, stale_params=tuple(stale)), host

  def _quarantine(self, step: int, error: BaseException) -> None:
    """Moves an unreadable step out of the way (not deleted: it may still be of use to a person)."""
    dst = os.path.join(os.path.dirname(self.directory), "checkpoints_corrupt", f"{step}-{int(time.time())}")
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(dst), exist_ok=True)
      shutil.move(self.step_path(step), dst)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"quarantine_{step}")
    logging.warning("checkpoint %s is unreadable (%s); moved it to %s and fell back to the previous checkpoint",
                    self.step_path(step), _first_line(error), dst)
    self._manager.reload()

  # Save.

  def maybe_save(self, snapshot: Snapshot, update: int, pending: list[UpdateMetrics], lags: list[int],
                 wall_time: float, force: bool = False, lock: Any = contextlib.nullcontext()) -> bool:
    """Starts an async save every `checkpoint_every` updates (or when forced); never saves a non-finite state.

    Packs the arrays into new ones on the devices (one dispatch under `lock`, which serialises our device work with
    the pipeline's learner stage: pipeline.dataflow.PipelineFns.learner_lock) and returns; the caller may then donate
    or overwrite the snapshot. The rest (pulling metrics and fingerprints, the finite check, orbax's save) runs in
    the writer thread (see below for when it runs here instead); an error of a queued save is raised by the next call
    or by `close`.
    """
    if update % self._config.checkpoint_every and not force:
      return False
    parts = _parts(snapshot)
    raw_runner = None if _runner_shares_learner(snapshot) else parts.pop("runner")
    signature = _signature(parts)
    if self._packer is None or self._packer[0] != signature:
      layout = {name: packed_arrays.layout(tree) for name, tree in parts.items()}
      layout["runner"] = layout.get("runner")  # None: saved array by array
      self._packer = signature, _pack_and_fingerprint(parts), layout
    _, pack, layout = self._packer
    with lock:
      packed, fingerprints = pack(parts)  # new arrays: the caller may donate the snapshot's once this is dispatched
    arrays = dict(packed, **({} if raw_runner is None else {"runner": raw_runner}))
    pending, lags = list(pending), [int(x) for x in lags]  # the caller appends to its lists

    def job():
      host_pending = jax.device_get(pending)
      self.check_finite(host_pending, update - len(pending) + 1)
      host = {"update": update, "config": self._config_json, "wall_time": wall_time,
              "pending_metrics": _metrics_to_json(host_pending), "pending_lags": lags, "layout": layout,
              "fingerprint": jax.tree.map(int, jax.device_get(fingerprints))}
      if self._test_hold_at is not None:
        self._in_flight.append(update)
      self._manager.save(update, force=True, args=ocp.args.Composite(arrays=ocp.args.StandardSave(arrays),
                                                                      host=ocp.args.JsonSave(host)))

    # The job runs here (after the queued ones) with several processes: orbax's synchronous part meets the other
    # processes at barriers that are device collectives, which must not race the loop's own device programs. Also
    # for an unpacked runner, the snapshot's own arrays, which must be copied before the caller goes on; and for a
    # forced save (the last one, or on a stop), so that its errors reach the caller from this call.
    if force or jax.process_count() > 1 or raw_runner is not None:
      if self._writer is not None:
        self._writer.drain()
      job()
    else:
      self._writer = self._writer or _Writer()
      self._writer.submit(job)
    return True

  def check_finite(self, host_metrics: list[UpdateMetrics], first_update: int) -> None:
    """Raises NonFiniteError naming the first update whose losses or param norm are not finite."""
    for i, m in enumerate(host_metrics):
      values = {k: float(getattr(m, k)) for k in CHECKED_METRICS}
      if all(np.isfinite(v) for v in values.values()):
        continue
      if self._writer is not None and not self._writer.is_current_thread():
        self._writer.drain()  # queued saves hold earlier, checked states
      self._manager.wait_until_finished()  # a save in flight holds an earlier, checked state: let it complete
      last = self._manager.latest_step()
      good = (f"the last good checkpoint is {self.step_path(last)} (update {last}); rerunning resumes from it, so "
              "change the config first (e.g. a lower --config.learning_rate)" if last is not None
              else "no checkpoint was saved before it")
      shown = ", ".join(f"{k}={v}" for k, v in values.items())
      raise NonFiniteError(f"non-finite loss or params at update {first_update + i} ({shown}); stopped without "
                           f"saving that state; {good}")

  def _test_hold(self) -> None:
    """Runs in orbax's background thread once per save, in order, just before the save's atomic rename."""
    update = self._in_flight.popleft()
    if update != self._test_hold_at:
      return
    open(os.path.join(self._workdir, f"test_holding_save_{update}"), "w", encoding="utf-8").close()
    if self._stop is not None:
      self._stop.requested.wait(TEST_WAIT_S)

  def close(self) -> None:
    """Waits for the saves queued and in flight (raising the first error, if any) and releases the manager."""
    try:
      if self._writer is not None:
        self._writer.drain()
      self._manager.wait_until_finished()
    finally:
      if self._writer is not None:
        self._writer.close()
      self._manager.close()


def read_params(path: str, target: Any) -> Any:
  """The params of the newest checkpoint under `path` (a run's workdir, its checkpoints/ or one step directory),
  placed with `target`'s shardings. Raises ConfigError if there are none or they do not fit `target`."""
  path = workdir_lib.absolute(path)  # local or gs://...: file checks through etils.epath, as orbax's
  root = epath.Path(path)
  if (root / "checkpoints").is_dir():
    directory, step = root / "checkpoints", None
  elif root.name.isdigit():
    directory, step = root.parent, int(root.name)
  else:
    directory, step = root, None
  prefix = f"config.restore_from={path!r}"
  if not directory.is_dir():
    raise config_lib.ConfigError(f"{prefix}: no such directory")
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True, create=False))
  step = manager.latest_step() if step is None else step
  if step is None:
    raise config_lib.ConfigError(f"{prefix}: holds no checkpoint")
  try:
    host = manager.restore(step, args=ocp.args.Composite(host=ocp.args.JsonRestore()))["host"]
    if "layout" not in host:
      raise ValueError("written by an earlier version of this code (arrays not packed)")
    saved = [[leaf[len("[0]"):], *rest] for leaf, *rest in host["layout"]["learner"] if leaf.startswith("[0]")]
    diff = _layout_diff(saved, packed_arrays.layout(target))
    if diff:
      raise config_lib.ConfigError(f"{prefix}: its params do not fit this network:\n  " + "\n  ".join(diff[:8]))
    # The learner's packed words as they are (params come first in each), onto the devices of `target`.
    replicated = next(iter(packed_arrays.packed_shapes(target).values())).sharding
    placed = {name: ocp.ArrayRestoreArgs(sharding=replicated) for name in host["fingerprint"]["learner"]}
    packed = manager.restore(step, args=ocp.args.Composite(arrays=ocp.args.PyTreeRestore(
        {"learner": placed}, restore_args={"learner": placed}, partial_restore=True)))["arrays"]["learner"]
  except config_lib.ConfigError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise config_lib.ConfigError(f"{prefix}: could not read params of step {step}: {_first_line(e)}") from e
  finally:
    manager.close()
  return packed_arrays.unpacker(target)(packed)
