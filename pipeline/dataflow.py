"""The staged, reactive training pipeline: rollout, advantages, SGD and parameter publishing as concurrent stages.

The stage graph (each arrow a bounded queue; a full queue blocks its producer — backpressure):

    ┌──────────┐ ActorOutput ┌───────────┐ batch (on learner mesh) ┌─────────┐ UpdateResult ┌──────────────┐
    │  act     │────────────►│ advantage │────────────────────────►│  learn  │─────────────►│ host sinks   │
    │ (actors) │             │ + transfer│                         │(learner)│              │ (main thread)│
    └──────────┘             └───────────┘                         └─────────┘              └──────────────┘
         ▲   params v (actor mesh)   ┌─────────┐   params v+1 (learner mesh)   │
         └───────────────────────────│ publish │◄──────────────────────────────┘
                                     └─────────┘

Each stage is a thread that only *dispatches* jitted work (JAX runs it asynchronously on the stage's devices), so
the actors' rollout of batch b+1 overlaps the learner's SGD on batch b whenever the schedule allows it.

The schedule is deterministic, so results do not depend on thread timing: batch b is collected with params version
max(0, b - max_policy_lag). With max_policy_lag=0 (`sync`) every rollout waits for the previous update and the result
equals the fused iteration exactly; with L > 0 (`overlap`) actors run up to L batches ahead and the PPO ratio uses
the stored behaviour log-probs, so stale data stays correct. A batch's policy lag (learner version minus behaviour
version) is measured when the learner consumes it and reported with the update.

A resumable point after update u is a `Snapshot`: the TrainState at u (runner = env state after batch u-1's
rollout) plus the L params versions the in-flight batches u..u+L-1 are collected with. Resuming re-collects those
batches, bit for bit.

An exception in any stage stops every stage and is re-raised, with its own traceback, to the consumer of `run`.
"""
from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
from absl import logging

from pipeline.train_state import TrainState
from pipeline import iteration as iteration_lib

_POLL_S = 0.05  # how often blocked stages look at the stop flag


class _Stopped(Exception):
  """Raised inside a stage when another stage has failed or the consumer has gone."""


@dataclasses.dataclass
class Snapshot:
  """A resumable point between updates (see the module docstring)."""
  state: TrainState
  stale_params: tuple[Any, ...] = ()  # params versions max(0, u-L+i) for i < L, placed like state.params


@dataclasses.dataclass
class UpdateResult:
  """One finished update, handed to the host sinks."""
  update: int  # updates completed, i.e. the learner's params version
  metrics: iteration_lib.UpdateMetrics  # device arrays; pull them when logging
  policy_lag: int  # learner version minus the version that collected this batch
  snapshot: Snapshot  # the resumable point right after this update (references, no copies)


@dataclasses.dataclass(frozen=True)
class PipelineFns:
  """Compiled stage functions bound to their placement (launch/run/programs.py builds them, `bind_stages` binds them)."""
  act: Callable  # (params on actor mesh, runner, key) -> ActorOutput
  advantage: Callable  # (traj rows, last_value) -> minibatch rows on the actor mesh (donates the traj rows)
  to_learner: Callable  # (Minibatch, EpisodeStats) on the actor mesh -> the same on the learner mesh
  learn: Callable  # (params, opt_state, proximal, batch, key) -> (params, opt_state, proximal, aux)
  metrics: Callable  # (aux, params, stats) -> UpdateMetrics
  to_actors: Callable  # learner params -> params on the actor mesh
  split_key: Callable  # key_u -> (key_{u+1}, rollout key, sgd key)
  learner_lock: Any = dataclasses.field(default_factory=threading.Lock)  # see _serialized


def _serialized(lock, fn: Callable) -> Callable:
  """Dispatches `fn` while holding its mesh's lock.

  Programs with collectives that run on the same devices must reach every device in the same order, or XLA's CPU
  collectives deadlock (each device waits in a different rendezvous). Stages run in different threads, so every
  dispatch to one mesh goes through that mesh's lock; actors and learner on separate meshes still run concurrently.
  """
  def call(*args):
    with lock:
      return fn(*args)
  return call


class _Channel:
  """A bounded queue whose blocking calls give up when the pipeline stops."""

  def __init__(self, stop: threading.Event, maxsize: int):
    self._q: queue.Queue = queue.Queue(maxsize)
    self._stop = stop

  def put(self, item) -> None:
    while True:
      if self._stop.is_set():
        raise _Stopped
      try:
        self._q.put(item, timeout=_POLL_S)
        return
      except queue.Full:
        pass

  def get(self):
    while True:
      if self._stop.is_set():
        raise _Stopped
      try:
        return self._q.get(timeout=_POLL_S)
      except queue.Empty:
        pass


class _Versions:
  """Params versions published for the actors; `get(v)` blocks until version v exists."""

  def __init__(self, stop: threading.Event):
    self._stop = stop
    self._cond = threading.Condition()
    self._params: dict[int, Any] = {}

  def put(self, version: int, params) -> None:
    with self._cond:
      self._params[version] = params
      self._cond.notify_all()

  def get(self, version: int):
    with self._cond:
      while version not in self._params:
        if self._stop.is_set():
          raise _Stopped
        self._cond.wait(_POLL_S)
      return self._params[version]

  def drop_below(self, version: int) -> None:
    with self._cond:
      for v in [v for v in self._params if v < version]:
        del self._params[v]


class _KeySchedule:
  """key_u for every update, computed on demand in order (shared by the act and learn stages).

  Each stage reads its keys in increasing update order, so a read drops that kind's keys of earlier updates: the
  schedule holds only the keys between the learner and the actors (at most the lag plus the queues apart), however
  long the run."""

  def __init__(self, split_key: Callable, key, start: int):
    self._split = split_key
    self._lock = threading.Lock()
    self._next = start  # the first update whose key is not split yet
    self._keys = {start: key}  # update -> key_u
    self._rollout: dict[int, Any] = {}  # update -> rollout key
    self._sgd: dict[int, Any] = {}  # update -> sgd key

  def _read(self, table: dict[int, Any], update: int):
    with self._lock:
      while self._next <= update:
        next_key, self._rollout[self._next], self._sgd[self._next] = self._split(self._keys[self._next])
        self._next += 1
        self._keys[self._next] = next_key
      for u in [u for u in table if u < update]:
        del table[u]
      return table[update]

  def rollout_key(self, update: int):
    return self._read(self._rollout, update)

  def sgd_key(self, update: int):
    return self._read(self._sgd, update)

  def key(self, update: int):
    return self._read(self._keys, update)


class Pipeline:
  """Runs updates [snapshot.update, num_updates) through the stage graph."""

  def __init__(self, fns: PipelineFns, max_policy_lag: int, queue_size: int = 1, results_queue_size: int = 8):
    if max_policy_lag < 0:
      raise ValueError("max_policy_lag must be >= 0")
    self.fns = fns
    self.lag = max_policy_lag
    self.queue_size = queue_size
    self.results_queue_size = results_queue_size

  def behaviour_version(self, batch: int) -> int:
    return max(0, batch - self.lag)

  def run(self, snapshot: Snapshot, num_updates: int) -> Iterator[UpdateResult]:
    """Yields one UpdateResult per update, in order. Stops all stages when the consumer stops iterating."""
    fns, lag = self.fns, self.lag
    start = int(jax.device_get(snapshot.state.update))
    if len(snapshot.stale_params) != lag:
      raise ValueError(f"snapshot holds {len(snapshot.stale_params)} stale params versions, the lag is {lag}")
    stop = threading.Event()
    errors: list[tuple[str, BaseException]] = []
    to_advantage = _Channel(stop, self.queue_size)
    to_learn = _Channel(stop, self.queue_size)
    to_publish = _Channel(stop, self.queue_size)
    results = _Channel(stop, self.results_queue_size)
    versions = _Versions(stop)
    keys = _KeySchedule(fns.split_key, snapshot.state.key, start)
    runners = {start: snapshot.state.runner}  # update u -> env state before batch u (the act stage runs ahead)
    runners_lock = threading.Lock()
    # Learner-side params of versions start-L .. start (clamped at 0): what snapshots and the actors need.
    history = {max(0, start - lag + i): p for i, p in enumerate(snapshot.stale_params)}
    history[start] = snapshot.state.params
    for version, params in history.items():
      versions.put(version, fns.to_actors(params))

    def act_stage():
      runner = snapshot.state.runner
      for b in range(start, num_updates):
        version = self.behaviour_version(b)
        out = fns.act(versions.get(version), runner, fns.to_actors(keys.rollout_key(b)))
        runner = out.runner
        with runners_lock:
          runners[b + 1] = runner
        to_advantage.put((b, version, out))

    def advantage_stage():
      for _ in range(start, num_updates):
        b, version, out = to_advantage.get()
        batch, stats = fns.to_learner(fns.advantage(out.traj, out.last_value), out.stats)
        to_learn.put((b, version, batch, stats))

    def learn_stage():
      params, opt_state, proximal = snapshot.state.params, snapshot.state.opt_state, snapshot.state.proximal
      for _ in range(start, num_updates):
        b, version, batch, stats = to_learn.get()
        params, opt_state, proximal, aux = fns.learn(params, opt_state, proximal, batch, keys.sgd_key(b))
        u = b + 1
        to_publish.put((u, params))
        history[u] = params
        for v in [v for v in history if v < u - lag]:
          del history[v]
        with runners_lock:
          runner = runners.pop(u)
          for k in [k for k in runners if k < u]:
            del runners[k]
        key = keys.key(u)  # the counter is placed like the key: replicated on the learner's mesh
        state = TrainState(params=params, opt_state=opt_state, runner=runner, key=key,
                           update=jax.device_put(np.int32(u), key.sharding), proximal=proximal)
        stale = tuple(history[max(0, u - lag + i)] for i in range(lag))
        results.put(UpdateResult(update=u, metrics=fns.metrics(aux, params, stats), policy_lag=b - version,
                                 snapshot=Snapshot(state=state, stale_params=stale)))

    def publish_stage():
      for _ in range(start, num_updates):
        version, params = to_publish.get()
        versions.put(version, fns.to_actors(params))
        versions.drop_below(version - lag)  # the act stage never goes back further

    def guarded(name, fn):
      def body():
        try:
          fn()
        except _Stopped:
          pass
        except BaseException as e:  # pylint: disable=broad-except  (re-raised to the consumer)
          errors.append((name, e))
          stop.set()
      return threading.Thread(target=body, name=f"pipeline-{name}", daemon=True)

    threads = [guarded("act", act_stage), guarded("advantage", advantage_stage), guarded("learn", learn_stage),
               guarded("publish", publish_stage)]
    for t in threads:
      t.start()
    try:
      for _ in range(start, num_updates):
        yield results.get()  # raises _Stopped as soon as a stage has failed
    except _Stopped:
      pass
    finally:
      stop.set()
      for t in threads:
        t.join(timeout=30)
        if t.is_alive():
          logging.warning("pipeline stage %s did not stop within 30 s", t.name)
    if errors:
      name, error = errors[0]
      error.add_note(f"(raised in pipeline stage '{name}')")
      raise error


def bind_stages(act: Callable, advantage: Callable, learn: Callable, metrics: Callable, split_key: Callable,
                actor_layout, learner_layout) -> PipelineFns:
  """The stage programs (compiled by launch/run/programs.py) bound to their meshes: each dispatch holds its mesh's lock,
  and the transfers between the meshes are sharding-aware device_puts (the batch keeps its env axis split over the
  destination's `data` axis; with one shared mesh they are no-ops)."""
  a_rep, l_rep = actor_layout.replicated, learner_layout.replicated

  def to_learner(batch, stats):
    return (jax.device_put(batch, learner_layout.env_shardings(batch, axis=1)), jax.device_put(stats, l_rep))

  def to_actors(tree):
    return jax.device_put(tree, a_rep)

  actor_lock = threading.Lock()
  learner_lock = actor_lock if actor_layout.mesh is learner_layout.mesh else threading.Lock()
  return PipelineFns(act=_serialized(actor_lock, act), advantage=_serialized(actor_lock, advantage),
                     to_learner=to_learner, learn=_serialized(learner_lock, learn),
                     metrics=_serialized(learner_lock, metrics), to_actors=to_actors,
                     split_key=_serialized(learner_lock, split_key), learner_lock=learner_lock)
