"""Adapter for Craftax (`env_name="craftax:<id>"`, e.g. `craftax:Craftax-Symbolic-v1`): discrete actions.

Craftax's `done` mixes death (and, in full Craftax, beating the final boss) with its time limit; the adapter splits
them by asking the game whether the new state would be over with the clock reset, so only the time limit
bootstraps. Observations are flattened to float32 (the symbolic ids are flat already). World generation makes
resets expensive: pair this suite with the reset pool (`config.reset_pool.size`).
"""
from __future__ import annotations

import math

import jax.numpy as jnp

from envs import base, extras

ENV_IDS = ("Craftax-Symbolic-v1", "Craftax-Pixels-v1", "Craftax-Classic-Symbolic-v1", "Craftax-Classic-Pixels-v1")


def import_craftax_env():
  return extras.require("craftax.craftax_env", "craftax", "craftax")


class CraftaxEnv(base.Environment):
  """One Craftax game with its default parameters, without Craftax's own auto-reset."""

  def __init__(self, env_id: str):
    craftax_env = import_craftax_env()
    self.env_id = env_id
    self._env = craftax_env.make_craftax_env_from_name(env_id, auto_reset=False)
    self._params = self._env.default_params
    self._obs_shape = (int(math.prod(self._env.observation_space(self._params).shape)),)

  def __hash__(self):
    return hash((type(self), self.env_id))

  def __eq__(self, other):
    return type(other) is type(self) and other.env_id == self.env_id

  @property
  def observation_shape(self):
    return self._obs_shape

  @property
  def action_space(self):
    return base.Discrete(int(self._env.num_actions))

  @property
  def max_episode_steps(self):
    return int(self._params.max_timesteps)

  def reset(self, key):
    obs, state = self._env.reset_env(key, self._params)
    return state, jnp.asarray(obs, jnp.float32).reshape(-1)

  def step(self, key, state, action):
    obs, new_state, reward, _, _ = self._env.step_env(key, state, action, self._params)
    terminated = self._env.is_terminal(new_state.replace(timestep=jnp.zeros_like(new_state.timestep)), self._params)
    return base.StepResult(
        state=new_state,
        obs=jnp.asarray(obs, jnp.float32).reshape(-1),
        reward=jnp.asarray(reward, jnp.float32),
        terminated=jnp.asarray(terminated, bool),
        truncated=new_state.timestep >= self._params.max_timesteps,
    )
