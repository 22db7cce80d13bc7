"""The run's checkpoints under WORKDIR/checkpoints (an orbax CheckpointManager): async saves through a writer thread,
resume from the newest step every process can read onto whatever mesh is current, corrupt steps moved aside (the
only reader that moves anything: these are the run's own), or a new run from another run's params. What a step
holds: launch/checkpoint/format.py; the checks every reader makes: launch/checkpoint/reader.py; which read failures
make a step corrupt, which are retried and which are bugs: launch/checkpoint/read_errors.py.

Saves may fall on any update; metrics rows are written before the save of the same update.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from launch.checkpoint import packed_arrays
from launch.config import resolve as config_lib
from launch.files import fs_errors as errors, workdir as workdir_lib
from launch.checkpoint import agree, compat, format as format_lib, manager, params as params_lib, read_errors, reader, resize
from launch.checkpoint.writer import Writer
from pipeline.dataflow import Snapshot
from pipeline.iteration import UpdateMetrics

CHECKED_METRICS = ("policy_loss", "value_loss", "param_norm")  # the non-finite guard's

# Test-only hook (tests/test_checkpoint.py): hold the async save of this update just before its atomic rename until
# a stop is requested, writing WORKDIR/test_holding_save_<update> first, so a test can signal or kill -9 the run
# while that save is in flight. Unset in real runs.
TEST_HOLD_ENV = "PPO_TEST_HOLD_SAVE_AT_UPDATE"
TEST_WAIT_S = 300.0


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
  autoscale: dict[str, Any] | None = None  # the autoscale controller's state (launch/run/autoscale.py)


def _signature(tree: Any) -> tuple[Any, ...]:
  return (jax.tree.structure(tree),) + tuple((x.shape, x.dtype, x.sharding) for x in jax.tree.leaves(tree))


def _runner_shares_learner(snapshot: Snapshot) -> bool:
  learner_devices = snapshot.state.key.sharding.device_set
  return all(x.sharding.device_set == learner_devices for x in jax.tree.leaves(snapshot.state.runner))


class RunCheckpoints:
  """The run's checkpoints: `restore_or_init` once, `maybe_save` after every update, `close` at the end."""

  def __init__(self, workdir: str, config: ml_collections.ConfigDict, stop: Any = None, segment: Any = None,
               resize_runner: Callable | None = None):
    """`segment` (launch/elastic.Segment) is saved with every step; `resize_runner(runner, key)` rebuilds the runner of
    a step saved at another num_envs (Programs.resize_runner)."""
    self._segment, self._resize_runner = segment, resize_runner
    self.directory = workdir_lib.absolute(os.path.join(workdir, "checkpoints"))  # local or gs://...
    self._workdir = workdir
    self._config = config
    self._config_json = compat.config_json(config)
    self._stop = stop  # preemption.StopRequest; only the test hold hook waits on it
    hold = os.environ.get(TEST_HOLD_ENV)
    self._test_hold_at = int(hold) if hold else None
    self._in_flight = collections.deque()  # test hook only: updates of the saves started, popped as each finalizes
    self._packer = None  # (signature of the items it was built for, jitted pack + fingerprint, host description)
    self._writer: Writer | None = None  # started by the first save, with one process only (see maybe_save)
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocp.checkpoint_managers.LatestN(config.keep_checkpoints),
        enable_async_checkpointing=True, cleanup_tmp_directories=True,
        async_options=ocp.AsyncOptions(post_finalization_callback=self._test_hold if hold else None))
    # Without OCDBT: for a few small arrays, its per-save database work costs more CPU than a plain zarr file each.
    self._arrays, self._host = ocp.StandardCheckpointHandler(use_ocdbt=False), ocp.JsonCheckpointHandler()
    handlers = ocp.handlers.DefaultCheckpointHandlerRegistry()
    handlers.add("arrays", ocp.args.StandardSave, self._arrays)
    handlers.add("host", ocp.args.JsonSave, self._host)
    self._manager = manager.CheckpointManager(self.directory, options=options, handler_registry=handlers)

  def step_path(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  # Restore.

  def restore_or_init(self, init: Callable[[], Snapshot], target: Snapshot) -> tuple[Snapshot, Resume]:
    """Own newest checkpoint that every process can read → `config.restore_from` params → `init()`.

    `target` is the Snapshot of jax.ShapeDtypeStructs carrying the current meshes' shardings; arrays are restored
    straight into them, whatever mesh they were saved from. With several processes each step is tried by all of them
    and used only if all could read it, so they resume from the same step.
    """
    failed = []
    for step in agree.steps(self._manager.all_steps()):
      status, error, read = agree.READABLE, None, None
      try:
        with errors.stderr_kept_if_failed():  # TensorStore's tracebacks of a failed read: reported below, in one line
          read = self._read_step(step, target)  # this process's files only: no collective inside
      except config_lib.ConfigError as e:
        status, error = agree.INCOMPATIBLE, e
      except read_errors.CorruptStep as e:  # the step's own bytes: skipped, never trusted
        status, error = agree.UNREADABLE, e
      except read_errors.StorageUnavailable as e:  # retried already; not the step's fault: nothing is moved
        status, error = agree.STORAGE, e
      except Exception as e:  # pylint: disable=broad-except  (a bug: raised below, once every process knows)
        status, error = agree.FAILED, e
      statuses = agree.statuses(status)
      others = [i for i, s in enumerate(statuses) if s != agree.READABLE and i != jax.process_index()]
      for kind, cls in ((agree.FAILED, RuntimeError), (agree.STORAGE, read_errors.StorageUnavailable),
                        (agree.INCOMPATIBLE, config_lib.ConfigError)):
        if kind in statuses:
          raise error if status == kind else cls(
              f"cannot resume from {self.step_path(step)}: process {others[0]} could not read it (see its log)")
      if agree.UNREADABLE not in statuses:
        try:
          snapshot, resume = self._use_step(step, *read)  # the same collectives and outcome on every process
        except read_errors.CorruptStep as e:  # anything else is a bug: it propagates, and nothing is moved
          error = e
        else:
          *_, resized = read
          if resized:  # saved at another num_envs. Outside the try: the bytes are checked by now, so a failure here
            # is the code's, not the checkpoint's, and propagates with its traceback instead of reading as corruption.
            snapshot = self._resized(snapshot)
          for bad, why in failed:
            self._quarantine(bad, why)
          logging.info("resuming from %s", self.step_path(step))
          return snapshot, resume
      failed.append((step, error or RuntimeError(f"unreadable by process {others} (see its log)")))
    if failed:
      raise config_lib.ConfigError(
          f"--workdir: no readable checkpoint in {self.directory}:\n  " +
          "\n  ".join(f"step {s}: {compat.first_line(e)}" for s, e in failed) +
          f"\n  move {self.directory} aside to start the run over")
    if self._config.restore_from:
      return params_lib.start_from(self._config, init, target), Resume()
    return init(), Resume()

  def _read_step(self, step: int, target: Snapshot):
    """The step's host record (checked: format, config, layout) and its arrays as this process reads them."""
    where, directory = self.step_path(step), epath.Path(self.step_path(step))
    host = reader.read_host(directory, where)
    format_lib.check_format(host, where)
    compat.check_compatible(self._config, host["config"], where)
    items = format_lib.parts(target)
    resized = host["config"]["num_envs"] != self._config.num_envs  # allowed by the check above: launch/run/elastic.py
    if resized and self._resize_runner is None:
      raise config_lib.ConfigError(f"cannot resume from {where} at another num_envs here (no resize_runner)")
    if resized:
      items[format_lib.RUNNER] = {"runner": resize.at_num_envs(target.state.runner, host["config"]["num_envs"])}
    packed_runner = host["layout"][format_lib.RUNNER] is not None
    compat.check_layout({k: v for k, v in items.items() if k != format_lib.RUNNER or packed_runner}, host["layout"],
                        where)
    shapes = {name: packed_arrays.packed_shapes(tree) for name, tree in items.items()}
    if not packed_runner:
      shapes[format_lib.RUNNER] = items[format_lib.RUNNER]
    if resized:
      shapes[format_lib.RUNNER] = resize.replicated(shapes[format_lib.RUNNER])
    arrays = read_errors.read(
        lambda: self._arrays.restore(directory / "arrays", args=ocp.args.StandardRestore(shapes)), where)
    return host, arrays, items, packed_runner, resized

  def _use_step(self, step: int, host: dict[str, Any], arrays: dict[str, Any], items: dict[str, Any],
                packed_runner: bool, resized: bool) -> tuple[Snapshot, Resume]:
    """The restored state and host state, once checked against the saved fingerprints and update."""
    packed = {k: v for k, v in arrays.items() if k != format_lib.RUNNER or packed_runner}
    reader.check_fingerprints(jax.tree.map(int, jax.device_get(format_lib.check_fingerprints(packed))), host,
                              self.step_path(step))
    unpacker = lambda name: resize.unpacker if resized and name == format_lib.RUNNER else packed_arrays.unpacker
    unpacked = {name: unpacker(name)(tree)(arrays[name]) if name in packed else arrays[name]
                for name, tree in items.items()}
    snapshot = format_lib.snapshot(unpacked)
    if int(snapshot.state.update) != step or host["update"] != step:
      raise read_errors.CorruptStep(f"holds update {int(snapshot.state.update)}, not {step}")
    pending = format_lib.metrics_from_json(host["pending_metrics"], self._config.diagnostics.enabled, CHECKED_METRICS,
                                           with_sfl=self._config.level_sampler.kind == "sfl")
    lags = tuple(int(x) for x in host["pending_lags"])
    if pending is None:  # the non-finite guard needs them: the next row covers the updates from here on only
      logging.warning("%s: the unfinished log interval's metrics lack %s; not carried on", self.step_path(step),
                      "/".join(CHECKED_METRICS))
      pending, lags = (), ()
    return snapshot, Resume(update=step, pending=pending, lags=lags, wall_time=float(host["wall_time"]),
                            autoscale=host.get("autoscale"))

  def _resized(self, snapshot: Snapshot) -> Snapshot:
    """The envs at this run's num_envs; nothing else changes."""
    state = snapshot.state
    return dataclasses.replace(snapshot, state=state.replace(runner=self._resize_runner(state.runner, state.key)))

  def _quarantine(self, step: int, error: BaseException) -> None:
    """Moves an unreadable step out of the way (not deleted: it may still be of use to a person)."""
    stamp = int(time.time())  # on every process process 0's, for one name in the messages
    stamp = int(multihost_utils.broadcast_one_to_all(np.int32(stamp))) if jax.process_count() > 1 else stamp
    dst = os.path.join(os.path.dirname(self.directory), "checkpoints_corrupt", f"{step}-{stamp}")
    if jax.process_index() == 0:
      workdir_lib.move_tree(epath.Path(self.step_path(step)), epath.Path(dst))
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"quarantine_{step}")
    logging.warning("checkpoint %s is unreadable (%s); moved it to %s and fell back to the previous checkpoint",
                    self.step_path(step), compat.first_line(error), dst)
    self._manager.reload()

  # Save.

  def maybe_save(self, snapshot: Snapshot, update: int, pending: list[UpdateMetrics], lags: list[int],
                 wall_time: float, force: bool = False, lock: Any = contextlib.nullcontext(),
                 autoscale: dict[str, Any] | None = None) -> bool:
    """Starts an async save every `checkpoint_every` updates (or when forced); never saves a non-finite state.

    Packs the arrays into new ones on the devices (one dispatch under `lock`, which serialises our device work with
    the pipeline's learner stage: pipeline.dataflow.PipelineFns.learner_lock) and returns; the caller may then donate
    or overwrite the snapshot. The rest (pulling metrics and fingerprints, the finite check, orbax's save) runs in
    the writer thread (see below for when it runs here instead); an error of a queued save is raised by the next call
    or by `close`.
    """
    if update % self._config.checkpoint_every and not force:
      return False
    items = format_lib.parts(snapshot)
    # The runner is packed only when it shares the learner's devices: the pipeline's act stage may be dispatching on
    # separate actor devices, and only the learner's lock is ours to take, so there it is saved array by array.
    raw_runner = None if _runner_shares_learner(snapshot) else items.pop(format_lib.RUNNER)
    signature = _signature(items)
    if self._packer is None or self._packer[0] != signature:
      described = {"layout": dict.fromkeys(format_lib.parts(snapshot)) | format_lib.layouts(items),  # None: unpacked
                   "spans": {name: format_lib.spans(tree) for name, tree in items.items()}}
      self._packer = signature, format_lib.make_packer(items), described
    _, pack, described = self._packer
    with lock:
      packed, fingerprints = pack(items)  # new arrays: the caller may donate the snapshot's once this is dispatched
    arrays = dict(packed, **({} if raw_runner is None else {format_lib.RUNNER: raw_runner}))
    pending, lags = list(pending), [int(x) for x in lags]  # the caller appends to its lists

    def job():
      host_pending = jax.device_get(pending)
      self.check_finite(host_pending, update - len(pending) + 1)
      host = format_lib.seal({
          "format": format_lib.FORMAT, "update": update, "config": self._config_json, "wall_time": wall_time,
          "pending_metrics": format_lib.metrics_to_json(host_pending), "pending_lags": lags, **described,
          **({"segment": self._segment.to_json()} if self._segment is not None else {}),
          **({"autoscale": autoscale} if autoscale is not None else {}),
          "fingerprint": dict.fromkeys(described["layout"]) | jax.tree.map(int, jax.device_get(fingerprints))})
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
      self._writer = self._writer or Writer()
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
