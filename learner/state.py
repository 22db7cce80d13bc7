"""The typed training state: everything a run needs to continue, as one pytree."""
from __future__ import annotations

from typing import Any

import jax
import optax
from flax import struct


@struct.dataclass
class TrainState:
  params: Any  # network params (replicated)
  opt_state: optax.OptState  # replicated
  runner: Any  # pipeline.rollout.RunnerState: per-env state, sharded over the env axis
  key: jax.Array  # the run's PRNG key; split once per update
  update: jax.Array  # int32 number of completed updates
  proximal: Any = None  # PPO-EWMA's learner.ewma.EWMAState (replicated); None (an empty subtree) when disabled
