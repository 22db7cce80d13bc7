"""The training run: build everything from a validated config, then loop the jitted update and feed the sinks.

`train_and_evaluate(config, workdir)` is the whole run; launch/train.py only parses flags and calls it.
"""
from __future__ import annotations

import contextlib
import sys
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from launch import checkpoint
from launch.config import resolve as config_lib
from launch.report import console, metrics_file, sinks, wandb_sink
from launch.run import autoscale, elastic, memory, plateau, preemption, programs
from launch.files import lock as workdir_lock
from launch.files import workdir as workdir_lib
from learner import code_path, diagnostics as diagnostics_lib
from pipeline import dataflow
from pipeline import iteration as iteration_lib
from pipeline import sfl as sfl_lib
from pipeline import solve_rate as solve_rate_lib
from pipeline import updates as updates_lib
from sharding import distributed

PROCESS_START = time.time()

build_agent = programs.build_agent  # the agent of a config (kept here: tests and benchmarks import it)


def summarize(metrics: list[iteration_lib.UpdateMetrics]) -> dict[str, Any]:
  """Reduces the per-update metrics of one log interval (already on the host) to one row's values."""
  stacked = jax.tree.map(lambda *xs: np.stack(xs), *metrics)
  episodes = int(stacked.episode_count.sum())
  row = {
      "episode_return": float(stacked.episode_return_sum.sum() / episodes) if episodes else None,
      "episodes": episodes,
  }
  for key in ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction"):
    row[key] = _finite(getattr(stacked, key).mean())
  row["param_norm"] = _finite(stacked.param_norm[-1])
  if stacked.diagnostics is not None:  # means over the interval's updates, and ratios of those means
    row.update(diagnostics_lib.summarize(stacked.diagnostics))
  if stacked.sfl is not None:  # the level buffer's scores and the interval's share of resets drawn from it
    row.update(sfl_lib.summarize(stacked.sfl))
  return row


def _finite(x) -> float | None:
  """A row's value; None (JSON null) when not finite, e.g. a metric the checkpoint of another version lacked."""
  x = float(x)
  return x if np.isfinite(x) else None


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, fresh: bool = False) -> dict[str, Any]:
  """Trains per `config`, writing metrics, TensorBoard and plots under `workdir`. Returns the last metrics row.

  The config is checked before the workdir is touched; then the run takes the workdir's lock (launch/files/lock.py:
  another run holding it → WorkdirBusy) and refuses metrics rows that no checkpoint resumes unless `fresh`, which
  moves the old files aside (launch/files/workdir.py). A start that fails leaves the workdir as it found it.
  """
  config_lib.resolve(config, num_devices=jax.device_count(), num_processes=jax.process_count())
  existed = jax.process_index() == 0 and workdir_lib.Tidy(workdir).existed[""]
  lock = workdir_lock.acquire(workdir, then=lambda: workdir_lib.check_history(workdir, fresh))
  tidy = workdir_lib.Tidy(workdir) if lock is not None else None
  if tidy is not None:
    tidy.existed[""] = existed  # the lock made the directory
  cleanups = [c for c in (lock and lock.release, tidy and tidy.undo) if c]  # in this order: the lock is a file
  preemption.AT_EXIT_NOW.extend(cleanups)
  # One stop request for the whole process, across its segments: a signal during a hand-over to the next num_envs
  # is kept, and the preemption protocol's step ids go on increasing (they count this process's updates).
  stop = None
  try:
    elastic.check_schedule(config, jax.device_count(), jax.process_count())
    stop = preemption.StopRequest(workdir)
    prebuilt = None  # the next segment's programs, when autoscale compiled them to check that they fit
    while True:  # one segment per num_envs (launch/run/elastic.py): a scheduled change saves, rebuilds, restores
      segment_config, segment = elastic.plan(config, workdir)
      row, handed_over, prebuilt = _train(segment_config, workdir, segment, stop, prebuilt)
      if not handed_over:
        return row
  except BaseException:
    for c in cleanups:
      c()
    raise
  finally:
    if stop is not None:
      stop.close()
    for c in cleanups:
      preemption.AT_EXIT_NOW.remove(c)
    if lock is not None:
      lock.release()


def _train(config: ml_collections.ConfigDict, workdir: str, segment: elastic.Segment,
           stop: preemption.StopRequest, prebuilt: tuple[Any, Any] | None = None
           ) -> tuple[dict[str, Any], bool, tuple[Any, Any] | None]:
  """Runs one segment (launch/run/elastic.py); returns the last row, whether it handed over to the next num_envs,
  and the next segment's (resolved values, programs) where autoscale built them. `prebuilt`: this segment's."""
  resolved = config_lib.resolve(config, num_devices=jax.device_count(), num_processes=jax.process_count(),
                                segment=segment)
  lead = jax.process_index() == 0

  stop.starting(True)  # until the first update a stop has nothing to save: exit at once, also during compilation

  # Mesh, shardings and programs: the init, the fused update or the pipeline's stages, evaluation; compiled ahead
  # of the clock (launch/run/programs.py). The runner lives with the actors, the rest with the learner.
  progs = prebuilt[1] if prebuilt is not None and prebuilt[0] == resolved else programs.build(config, resolved=resolved)
  # Before anything is allocated: a program that cannot fit stops here (exit 2) with what to change.
  fit = memory.check_fits(progs, config)
  distributed.barrier("compiled")  # processes meet before their first collective (restore, first update)
  logging.info("mesh: actors %s, learner %s; %d env steps per update, %d updates, pipeline %s; compiled in %.1fs; "
               "code path %s; %s", dict(progs.actor_layout.mesh.shape), dict(progs.layout.mesh.shape),
               resolved.batch_size, resolved.num_updates, config.pipeline.mode, progs.compile_time,
               code_path.describe(), fit.summary())

  # Train state: own checkpoint, restored onto these shardings whatever mesh wrote it → else created already
  # sharded, with config.restore_from's params if set.
  train_key, eval_key = jax.random.split(jax.random.PRNGKey(config.seed))

  def init():
    state = progs.init(train_key)
    return dataflow.Snapshot(state=state, stale_params=(state.params,) * resolved.max_policy_lag)

  ckpts = checkpoint.RunCheckpoints(workdir, config, stop, segment, progs.resize_runner)
  target = progs.abstract_state
  try:
    snapshot, resume = ckpts.restore_or_init(init, dataflow.Snapshot(
        state=target, stale_params=(target.params,) * resolved.max_policy_lag))
    if resume.update < segment.update:  # planned from a newer step than the one that could be read
      raise config_lib.ConfigError(f"the checkpoint of update {segment.update} could not be read; move it aside "
                                   "and rerun")
  except BaseException:  # e.g. an incompatible checkpoint: stop orbax's threads before the error ends the process
    ckpts.close()
    raise
  stop.starting(False)
  if stop.stopped_before_start():  # while compiling or restoring: no update to run or save
    ckpts.close()
    raise preemption.StoppedBeforeStart(workdir)
  compile_time, evaluate = progs.compile_time, progs.evaluate_state
  state = snapshot.state
  wandb = wandb_sink.WandbSink(config, workdir) if lead and config.wandb.project else None
  if lead:
    console.say(console.start_line(config, resolved, jax.devices(), progs.actor_layout.mesh, progs.layout.mesh,
                                   workdir, ckpts.step_path(resume.update) if resume.update else None, resume.update,
                                   extra=f" | code path {code_path.describe()} | {fit.short()}"
                                         + (f" | {wandb.description}" if wandb else "")))

  # Updates: the fused step, or the staged pipeline; both yield UpdateResults.
  start, end = resume.update, elastic.end_update(config, segment, resolved)  # end: this segment's last update
  if config.pipeline.mode == "fused":
    results = updates_lib.fused_updates(progs.update, snapshot, start, end)
    learner_lock = contextlib.nullcontext()
  else:
    results = dataflow.Pipeline(progs.pipeline, resolved.max_policy_lag).run(snapshot, end)
    learner_lock = progs.pipeline.learner_lock  # evaluation runs on the learner's devices too

  # Train loop (the host sinks). Metrics rows after the restored update are dropped, then appended to.
  out = sinks.MetricsSinks(workdir, resolved.env_steps, resolved.env_steps_at(start), enabled=lead,
                           resume_update=start, extra=(wandb,) if wandb else (),
                           covered_update=start - len(resume.pending))  # the last row written before the save
  for note in out.notes:  # rows the file lacks, lines it dropped: said once here, and in the next row
    console.say(f"warning: {note}")
  watch = plateau.Watch(config, workdir, config.total_env_steps, metrics_file.read_jsonl(out.jsonl_path)) if lead else None
  # Autoscale decides on every process alike, from replicated values, with its state from the checkpoint.
  controller = autoscale.Controller.create(config, resume.autoscale) if config.autoscale.enabled else None
  grown = None  # the next segment's (resolved values, programs) once autoscale decided to grow
  pending: list[iteration_lib.UpdateMetrics] = list(resume.pending)
  lags: list[int] = list(resume.lags)
  run_start = PROCESS_START - resume.wall_time  # wall_time counts the run time of earlier processes too
  last_time, last_steps, first_update_time = time.time(), resolved.env_steps_at(start), None
  row: dict[str, Any] = out.last_row or {}
  stopped = completed = handed_over = False
  newest = resume.update  # the newest checkpoint: a finished run resumed with a smaller total saves none
  level_rates: dict[str, float] = {}
  try:
    for result in results:
      update = result.update
      if first_update_time is None:
        # The first call also pays one-time costs (first touch of its buffers, thread start-up: 2x a steady update
        # at the default config). Timed apart, so that `sps` is the steady rate, as in benchmarks/throughput.py.
        jax.block_until_ready(result.metrics)
        first_update_time = time.time() - last_time
        last_time, last_steps = time.time(), resolved.env_steps_at(update)
        first_row = True
      pending.append(result.metrics)
      lags.append(result.policy_lag)
      is_last = update == resolved.num_updates
      if update % config.log_every == 0 or is_last:
        host_metrics = jax.device_get(pending)
        ckpts.check_finite(host_metrics, update - len(pending) + 1)
        row = {"update": update, "env_steps": resolved.env_steps_at(update), "num_envs": config.num_envs,
               **summarize(host_metrics)}
        row["policy_lag_max"], row["policy_lag_mean"] = max(lags), sum(lags) / len(lags)
        pending, lags = [], []
        eval_seconds = 0.0
        if update % config.eval_every == 0 or is_last:
          eval_start = time.time()
          with learner_lock:
            evaluation = jax.device_get(evaluate(result.snapshot.state, jax.random.fold_in(eval_key, update)))
          row["eval_return"], row["eval_distinct"] = float(evaluation.mean_return), int(evaluation.distinct)
          if progs.solve_rates:  # Kinetix solve rates (config.eval.solve_levels): sampled policy, per level
            with learner_lock:
              level_rates = progs.solve_rates_state(result.snapshot.state, jax.random.fold_in(eval_key, update))
            row.update(solve_rate_lib.summarize(level_rates))
          eval_seconds = time.time() - eval_start
        now = time.time()
        row["wall_time"] = now - run_start
        # Env steps per second of training updates: evaluation and compilation are not training.
        train_seconds = now - last_time - eval_seconds
        row["sps"] = ((row["env_steps"] - last_steps) / max(train_seconds, 1e-9) if row["env_steps"] > last_steps
                      else resolved.batch_size / max(first_update_time, 1e-9))
        if first_row:  # on the first row of each process
          row["compile_time"] = compile_time
          row["first_update_time"] = first_update_time
        last_time, last_steps, first_row = now, row["env_steps"], False
        if result.snapshot.state.outer is not None:  # outer-step control's learning-rate scale for the next update
          row["lr_scale"] = float(jax.device_get(result.snapshot.state.outer.lr_scale))
        can_grow = controller is not None and controller.next_size() is not None
        if can_grow and not is_last:
          grown = _autoscale(controller, config, row, lead)
        # While autoscale can grow the run, it does instead of advising (after its largest size, the advice says more).
        advice = watch and watch.observe(row, advise=not can_grow)
        if advice:
          row["plateau"] = advice
          console.say(plateau.line(advice, row, watch.command()))
        out.write(row)
      # The snapshot is valid until the next result is requested: saves copy it to the host before that.
      stopped = stop.should_stop(update) and not is_last
      # To the schedule's next num_envs, or autoscale's (also on a stop: the saved state holds its decision).
      handed_over = (update == end or grown is not None) and not is_last and not stopped
      saved = ckpts.maybe_save(result.snapshot, update, pending, lags, time.time() - run_start,
                               force=stopped or is_last or handed_over or grown is not None, lock=learner_lock,
                               autoscale=controller.to_json() if controller is not None else None)
      newest = update if saved else newest
      if saved and lead and config.log_checkpoints:
        console.say(console.checkpoint_line(update, ckpts.step_path(update)))
      if stopped or handed_over:
        break
    completed = not stopped and not handed_over
  finally:
    failed = sys.exc_info()[1] is not None
    with contextlib.ExitStack() as closing:  # every one of them, even after an error of another (e.g. a disk full)
      # The learning curves of a completed run; after an error, its message is the last line, not the bar.
      closing.push(lambda _, error, __: out.close(plot=completed, failed=failed or error is not None))
      closing.callback(ckpts.close)  # waits for the save in flight
      if hasattr(results, "close"):
        closing.callback(results.close)  # stops the pipeline's stages
  # A stop that came while the hand-over's checkpoint was saved: that checkpoint is the one to resume from. (With
  # several processes the preemption protocol stops them all after the next segment's first update instead.)
  stopped = stopped or (handed_over and not stop.multiprocess and stop.requested.is_set())
  if stopped:
    raise checkpoint.Preempted(update, ckpts.step_path(update))
  if handed_over:
    return row, True, grown
  if lead:
    for line in console.summary_lines(metrics_file.read_jsonl(out.jsonl_path), start, resolved.env_steps_at(start), {
        "checkpoint": ckpts.step_path(newest), "metrics": out.jsonl_path,
        "plots": f"{out.plot_path} {out.diagnostics_path}", "tensorboard": f"{workdir}/tensorboard"}):
      console.say(line)
    for line in console.solve_rate_table(level_rates):
      console.say(line)
  return row, False, None


def _autoscale(controller: autoscale.Controller, config: ml_collections.ConfigDict, row: dict[str, Any],
               lead: bool) -> tuple[Any, Any] | None:
  """Autoscale's decision at `row` (launch/run/autoscale.py). On a noise-limited verdict the next size's programs
  are compiled and checked against device memory on every process: fitting everywhere, the growth is recorded in the
  row and said, and (resolved values, programs) returned for the next segment; else the size is said once and never
  tried again. None when the run does not grow here."""
  assessment = controller.observe(row)
  if assessment is None:
    return None
  size = controller.next_size()
  grown_config = elastic.config_at(config, size)
  segment = elastic.Segment(update=row["update"], env_steps=row["env_steps"], num_envs=size)
  resolved = config_lib.resolve(grown_config, num_devices=jax.device_count(), num_processes=jax.process_count(),
                                segment=segment)
  progs = programs.build(grown_config, resolved=resolved)
  report = memory.analyse(progs)
  fits = distributed.all_processes_agree(report.fits)
  if not fits:
    controller.refuse(size)
    if lead:
      console.say(autoscale.too_large_line(size, controller.num_envs, memory.gib(report.needed),
                                           memory.gib(report.limit) if report.limit else "?"))
    return None
  record = controller.grow(row, assessment)
  row["autoscale"] = record
  if lead:
    console.say(autoscale.line(record))
  return resolved, progs
