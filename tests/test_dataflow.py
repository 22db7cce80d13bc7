"""The staged pipeline: sync equals the fused iteration bit for bit; overlap respects its lag bound; failures surface."""
import dataclasses
import functools
import gc
import os
import threading
import time
import weakref

import jax
import numpy as np
import pytest

from launch.run import programs, trainer
from launch.configs import debug, default
from launch.report.metrics_file import read_jsonl
from pipeline import dataflow

NUM_UPDATES = 4


@functools.lru_cache(maxsize=None)
def _programs(mode: str = "fused", devices: int = 1, actor_devices: int = 0) -> programs.Programs:
  """The trainer's programs for the debug config on `devices` devices (the first `actor_devices` of them act)."""
  config = debug.get_config()
  config.pipeline.mode, config.mesh.data, config.pipeline.actor_devices = mode, devices, actor_devices
  return programs.build(config)


def _fused(num_updates, devices=1):
  progs = _programs("fused", devices)
  state, out = progs.init(jax.random.PRNGKey(0)), []
  for _ in range(num_updates):
    state, metrics = progs.update(state)
    out.append(metrics)
  return state, out


def _pipeline(lag, num_updates, actor_devices=0, wrap=None, start=None, devices=None):
  return list(_pipeline_iter(lag, num_updates, actor_devices, wrap, start, devices))


def _pipeline_iter(lag, num_updates, actor_devices=0, wrap=None, start=None, devices=None):
  progs = _programs("sync", devices or (8 if actor_devices else 1), actor_devices)
  fns = wrap(progs.pipeline) if wrap else progs.pipeline
  if start is None:
    state = progs.init(jax.random.PRNGKey(0))
    start = dataflow.Snapshot(state=state, stale_params=(state.params,) * lag)
  return dataflow.Pipeline(fns, max_policy_lag=lag).run(start, num_updates)


def _assert_trees_equal(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


@pytest.mark.parametrize("devices", [1, 8])
def test_sync_pipeline_equals_fused_iteration_bit_for_bit(devices):
  state, metrics = _fused(NUM_UPDATES, devices)
  results = _pipeline(0, NUM_UPDATES, devices=devices)
  assert [r.update for r in results] == list(range(1, NUM_UPDATES + 1))
  assert all(r.policy_lag == 0 for r in results)
  _assert_trees_equal(results[-1].snapshot.state, state)
  for r, m in zip(results, metrics):
    _assert_trees_equal(r.metrics, m)


@pytest.mark.parametrize("lag", [1, 2])
def test_overlap_lag_is_bounded_and_resume_is_exact(lag):
  results = _pipeline(lag, 6)
  assert [r.policy_lag for r in results] == [min(b, lag) for b in range(6)]
  # Resuming from the snapshot after update 3 re-collects the in-flight batches and finishes identically.
  resumed = _pipeline(lag, 6, start=results[2].snapshot)
  assert [r.update for r in resumed] == [4, 5, 6]
  _assert_trees_equal(resumed[-1].snapshot.state, results[-1].snapshot.state)


def _assert_trees_close(a, b):
  """Equal up to float order: integers (env state, counters, keys) exactly, floats at rtol 1e-4."""
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6), a, b)


def test_split_submeshes_give_the_fused_result():
  state, metrics = _fused(NUM_UPDATES)
  results = _pipeline(0, NUM_UPDATES, actor_devices=4)
  # 4 actor and 4 learner devices: placement changes only float order, in every leaf and every update's metrics.
  _assert_trees_close(results[-1].snapshot.state, state)
  for r, m in zip(results, metrics):
    _assert_trees_close(r.metrics, m)


def test_a_long_run_holds_a_bounded_number_of_keys():
  """The key schedule drops the keys the stages have read: the keys alive do not grow with the run's length."""
  made = []

  def wrap(fns):
    def split_key(key):
      out = fns.split_key(key)
      made.extend(weakref.ref(k) for k in out)
      return out
    return dataclasses.replace(fns, split_key=split_key)

  alive = {}
  for r in _pipeline_iter(1, 80, wrap=wrap):  # results are dropped as they come, as the trainer does
    if r.update in (20, 80):
      gc.collect()
      alive[r.update] = sum(k() is not None for k in made)
  assert len(made) >= 3 * 80
  # A few updates' worth (the queues, the results: how many depends on where the stages' threads are), not 3 per
  # update (240 by update 80).
  assert alive[20] < 20 and alive[80] < 20, alive


class Injected(RuntimeError):
  pass


@pytest.mark.parametrize("stage", ["act", "advantage", "to_learner", "learn", "to_actors"])
def test_an_exception_in_any_stage_ends_the_run_with_it(stage):
  calls = {"n": 0, "raised_at": None}

  def wrap(fns):
    original = getattr(fns, stage)

    def failing(*args):
      calls["n"] += 1
      if calls["n"] == 3:
        calls["raised_at"] = time.monotonic()
        raise Injected(stage)
      return original(*args)
    return dataclasses.replace(fns, **{stage: failing})

  with pytest.raises(Injected) as e:
    _pipeline(1, 50, wrap=wrap)
  assert time.monotonic() - calls["raised_at"] < 10
  assert f"raised in pipeline stage" in "".join(getattr(e.value, "__notes__", []))
  assert not [t for t in threading.enumerate() if t.name.startswith("pipeline-")]


def test_an_exception_in_the_host_sink_stops_every_stage():
  progs = _programs("sync")
  state = progs.init(jax.random.PRNGKey(0))
  results = dataflow.Pipeline(progs.pipeline, max_policy_lag=1).run(dataflow.Snapshot(state, (state.params,)), 50)
  with pytest.raises(Injected):
    for r in results:
      if r.update == 2:
        t0 = time.monotonic()
        raise Injected("sink")
  results.close()
  assert time.monotonic() - t0 < 10
  assert not [t for t in threading.enumerate() if t.name.startswith("pipeline-")]


def test_overlap_on_eight_devices_solves_cartpole_within_its_lag_bound(workdir):
  """Acceptance: overlap, max_policy_lag=1, 8 virtual devices (4 actors, 4 learner) still reaches 475: an
  evaluation at or above it, and it ends there by the final evaluation or by the last interval's training episodes.
  (Not by one of them alone: a solved policy can fail an episode of one deterministic evaluation — seed 0 of the
  default config once ended at 457.5 after evaluating 500.0 from update 50 on — and a 5-update last interval of
  sampled-action episodes can dip — 472.9 after 489.8, with the final evaluation at 500.0, once float order changed.)"""
  config = default.get_config()
  config.pipeline.mode = "overlap"
  config.pipeline.max_policy_lag = 1
  config.pipeline.actor_devices = 4
  config.mesh.data = 8
  trainer.train_and_evaluate(config, workdir)
  rows = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  assert max(r["eval_return"] for r in rows if r.get("eval_return") is not None) >= 475
  assert (rows[-1].get("eval_return") or 0) >= 475 or rows[-1]["episode_return"] >= 475, rows[-1]
  assert max(r["policy_lag_max"] for r in rows) == 1
  assert all(0 <= r["policy_lag_mean"] <= 1 for r in rows)
