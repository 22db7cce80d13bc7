"""Built-in CartPole-v1 with the classic (Barto, Sutton & Anderson; Gym) dynamics: the default task.

Euler integration at tau=0.02, +1 reward per step, terminated when the pole passes ±12° or the cart ±2.4, truncated
at 500 steps. Matches gymnax's CartPole-v1 step for step (tested), without needing any env library.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import struct

from envs import base

GRAVITY = 9.8
MASS_CART = 1.0
MASS_POLE = 0.1
TOTAL_MASS = MASS_CART + MASS_POLE
HALF_LENGTH = 0.5
POLE_MASS_LENGTH = MASS_POLE * HALF_LENGTH
FORCE_MAG = 10.0
TAU = 0.02
THETA_THRESHOLD = 12 * 2 * math.pi / 360
X_THRESHOLD = 2.4


def _euler(physics: jax.Array, force: jax.Array, tau: float) -> jax.Array:
  x, x_dot, theta, theta_dot = physics
  cos, sin = jnp.cos(theta), jnp.sin(theta)
  temp = (force + POLE_MASS_LENGTH * theta_dot**2 * sin) / TOTAL_MASS
  theta_acc = (GRAVITY * sin - cos * temp) / (HALF_LENGTH * (4.0 / 3.0 - MASS_POLE * cos**2 / TOTAL_MASS))
  x_acc = temp - POLE_MASS_LENGTH * theta_acc * cos / TOTAL_MASS
  return jnp.stack([
      x + tau * x_dot,
      x_dot + tau * x_acc,
      theta + tau * theta_dot,
      theta_dot + tau * theta_acc,
  ]).astype(jnp.float32)


@struct.dataclass
class CartPoleState:
  physics: jax.Array  # float32[4]: x, x_dot, theta, theta_dot
  time: jax.Array  # int32 steps taken in this episode


class CartPole(base.Environment[CartPoleState]):
  """CartPole-v1: balance a pole on a cart by pushing left (0) or right (1)."""

  def __init__(self, max_episode_steps: int = 500, substeps: int = 1):
    """`substeps` > 1 integrates each 0.02 s step in that many Euler substeps: a costlier, finer simulation that
    benchmarks use as a stand-in for expensive envs (1 = the classic dynamics)."""
    self._max_episode_steps = max_episode_steps
    self.substeps = substeps

  def __hash__(self):
    return hash((type(self), self._max_episode_steps, self.substeps))

  def __eq__(self, other):
    return type(other) is type(self) and (other._max_episode_steps, other.substeps) == (
        self._max_episode_steps, self.substeps)

  @property
  def observation_shape(self):
    return (4,)

  @property
  def action_space(self):
    return base.Discrete(2)

  @property
  def max_episode_steps(self):
    return self._max_episode_steps

  def reset(self, key):
    physics = jax.random.uniform(key, minval=-0.05, maxval=0.05, shape=(4,))
    return CartPoleState(physics=physics, time=jnp.zeros((), jnp.int32)), physics

  def step(self, key, state, action):
    del key  # deterministic dynamics
    force = FORCE_MAG * action - FORCE_MAG * (1 - action)
    if self.substeps == 1:
      physics = _euler(state.physics, force, TAU)
    else:
      physics = jax.lax.fori_loop(0, self.substeps, lambda _, p: _euler(p, force, TAU / self.substeps),
                                  state.physics)
    time = state.time + 1
    terminated = (jnp.abs(physics[0]) > X_THRESHOLD) | (jnp.abs(physics[2]) > THETA_THRESHOLD)
    truncated = time >= self._max_episode_steps
    return base.StepResult(
        state=CartPoleState(physics=physics, time=time),
        obs=physics,
        reward=jnp.ones((), jnp.float32),
        terminated=terminated,
        truncated=truncated,
    )
