"""Solve rates (pipeline/solve_rate.py, built by launch/run/programs.py) in the main suite, without kinetix-env: a
fake level env whose outcome the policy decides from the sign of what it observes, so raw and normalised observations
give opposite rates. tests/test_kinetix.py checks them on Kinetix's own levels."""
import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from envs import base
from launch.configs import debug
from launch.run import programs
from pipeline import obs_norm

RAW = 3.0  # every observation's value; the statistics below move it to (RAW - 5) / 1 = -2 < 0


@struct.dataclass
class SignState:
  level: jax.Array


class SignEnv(base.Environment):
  """One-step levels, solved by action 1 (reward +1, else -1); every observation is RAW, `levels`'s shape."""
  observation_shape = property(lambda self: (12,))
  action_space = property(lambda self: base.Discrete(2))
  max_episode_steps = property(lambda self: 1)

  def _obs(self, state):
    return jnp.full((12,), RAW) + 0.0 * state.level

  def reset(self, key):
    return SignState(jnp.zeros((), jnp.int32)), jnp.full((12,), RAW)

  def step(self, key, state, action):
    return base.StepResult(state=state, obs=self._obs(state), reward=jnp.where(action == 1, 1.0, -1.0),
                           terminated=jnp.ones((), bool), truncated=jnp.zeros((), bool))

  def success(self, result):
    return result.terminated & (result.reward > 0)


class SignModel:
  """Action 0 when the first observation is positive, 1 when negative (logits ±50: sampling is deterministic)."""

  def apply(self, params, obs):
    del params
    x = 50.0 * obs[..., 0]
    return jnp.stack([x, -x], axis=-1), jnp.zeros(obs.shape[:-1])


def test_solve_rates_see_the_runs_normalised_observations():
  """A run with obs_norm: the solve-rate program feeds the policy what training and evaluation feed it."""
  config = debug.get_config()
  config.update_from_flattened_dict({"env_name": "levels", "obs_norm": True})
  progs = programs.build(config, compile_update=False, eval_episodes=0)
  agent = dataclasses.replace(progs.agent, model=SignModel())
  group = programs.LevelGroup(["s/a", "s/b"], SignEnv(), SignState(jnp.arange(2)), jnp.arange(2, dtype=jnp.int32))
  progs = dataclasses.replace(progs, solve_rates=programs.solve_rate_program(agent, [group], 4, progs))
  state = progs.init(jax.random.PRNGKey(0))

  def rates(mean):
    stats = obs_norm.RunningMeanStd(mean=jnp.full((12,), mean), var=jnp.ones((12,)), count=jnp.ones(()))
    runner = state.runner.replace(obs_norm=jax.device_put(stats, progs.state_shardings.runner.obs_norm))
    return progs.solve_rates_state(state.replace(runner=runner), jax.random.PRNGKey(1))

  assert rates(0.0) == {"s/a": 0.0, "s/b": 0.0}  # the statistics leave RAW > 0: action 0, never solved
  assert rates(5.0) == {"s/a": 1.0, "s/b": 1.0}  # normalised to -2: action 1, always solved
