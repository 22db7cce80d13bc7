"""Sources of finished updates for the train loop: the fused iteration, or the staged pipeline (sync / overlap).

Both yield `dataflow.UpdateResult`s, so the loop's host sinks (metrics, evaluation, checkpoints) do not care which
one runs. A result's snapshot is valid until the next result is requested (the fused step donates its state).
"""
from __future__ import annotations

from collections.abc import Iterator

from pipeline import dataflow


def fused_updates(iteration, snapshot: dataflow.Snapshot, start: int, num_updates: int
                  ) -> Iterator[dataflow.UpdateResult]:
  """`iteration`: the compiled fused update TrainState -> (TrainState, UpdateMetrics), donating its input."""
  state = snapshot.state
  for update in range(start + 1, num_updates + 1):
    state, metrics = iteration(state)
    yield dataflow.UpdateResult(update=update, metrics=metrics, policy_lag=0,
                                snapshot=dataflow.Snapshot(state=state))
