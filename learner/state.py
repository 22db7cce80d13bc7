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
  obs_norm: Any = None  # pipeline.obs_norm.RunningMeanStd when config.obs_norm, else None (replicated)
  reset_pool: Any = None  # envs.reset_pool.ResetPool when config.reset_pool.size > 0, else None (replicated)
