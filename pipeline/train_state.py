"""The typed training state: everything a run needs to continue, as one pytree."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax
import optax
from flax import struct

from learner import ewma, outer_step

if TYPE_CHECKING:  # the runner is the pipeline's state; learner/ does not import pipeline/ at runtime
  from pipeline.rollout import RunnerState


@struct.dataclass
class TrainState:
  params: Any  # network params: a flax params pytree (replicated)
  opt_state: optax.OptState  # replicated
  runner: RunnerState  # per-env state, sharded over the env axis, plus the actors' shared statistics (replicated)
  key: jax.Array  # the run's PRNG key; split once per update
  update: jax.Array  # int32 number of completed updates
  proximal: ewma.EWMAState | None = None  # PPO-EWMA's proximal params (replicated); None (an empty subtree) when off
  outer: outer_step.OuterState | None = None  # the learning-rate scale of outer-step control; None when off
