"""Env suites through their real libraries (Brax, Craftax), and the missing-extra error. Kinetix needs jax <= 0.9.0
and is tested in its own virtual environment (tests/test_kinetix.py, scripts/test_kinetix.sh)."""
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from launch.config import resolve as config_lib
from launch.run import programs
from launch.configs import brax as brax_config
from launch.configs import craftax as craftax_config
from launch.configs import default
from learner import distributions
from sharding import make_mesh


@pytest.mark.parametrize("env_name, module, extra", [
    ("brax:inverted_pendulum", "brax", "brax"),
    ("craftax:Craftax-Symbolic-v1", "craftax.craftax_env", "craftax"),
    ("kinetix:s", "kinetix", "kinetix"),
    ("gymnax:CartPole-v1", "gymnax", "gymnax"),
])
def test_missing_extra_names_the_install_command(monkeypatch, env_name, module, extra):
  monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError, as when not installed
  with pytest.raises(envs.MissingExtraError) as e:
    envs.make(env_name)
  assert f'pip install -e ".[{extra}]"' in str(e.value)
  assert e.value.__cause__ is None and e.value.__suppress_context__  # one message, not a chained traceback
  config = default.get_config()
  config.env_name = env_name
  (msg,) = config_lib.check(config, 1)
  assert msg.startswith(f"config.env_name={env_name!r}: env_name \"{env_name.split(':')[0]}:...\" needs the {extra}")
  assert f'pip install -e ".[{extra}]"' in msg


def test_unknown_names_within_a_suite_list_the_alternatives():
  with pytest.raises(envs.UnknownEnvError, match="inverted_pendulum"):
    envs.make("brax:no_such_task")
  with pytest.raises(envs.UnknownEnvError, match="spring"):
    envs.make("brax:inverted_pendulum@warp_speed")
  with pytest.raises(envs.UnknownEnvError, match="Craftax-Classic-Symbolic-v1"):
    envs.make("craftax:Craftax-Nope-v1")


def _train_a_few_updates(config, updates):
  """Builds the trainer's programs for `config` (on one device) and runs `updates` PPO updates; returns (agent,
  state, per-update metrics)."""
  progs = programs.build(config, make_mesh(1), eval_episodes=0)
  state = progs.init(jax.random.PRNGKey(0))
  metrics = []
  for _ in range(updates):
    state, m = progs.update(state)
    metrics.append(jax.device_get(m))
  return progs.agent, state, metrics


def _assert_finite(metrics):
  for m in metrics:
    for field in ("policy_loss", "value_loss", "entropy", "approx_kl", "param_norm", "episode_return_sum"):
      assert np.isfinite(getattr(m, field)), field


def test_brax_inverted_pendulum_trains():
  config = brax_config.get_config()  # the learning config (benchmarks/brax_learning.py), for 20 updates
  updates = 20
  agent, state, metrics = _train_a_few_updates(config, updates)
  env = agent.env
  assert env.observation_shape == (4,) and isinstance(agent.dist, distributions.DiagGaussian)
  assert env.action_space == envs.Box(low=(-3.0,), high=(3.0,), shape=(1,))  # the actuator's ctrl_range
  assert state.runner.obs.shape == (config.num_envs, 4)
  _assert_finite(metrics)
  # +1 per step until the pole falls or 1000 steps pass. The untrained policy's episodes last ~30 steps; measured
  # (2026-12-07, 2 CPU cores, learning_rate 1e-3) this run's episodes in updates 11-20 average 187 steps.
  mean_return = lambda ms: sum(float(m.episode_return_sum) for m in ms) / sum(int(m.episode_count) for m in ms)
  assert mean_return(metrics[:1]) < 60 and mean_return(metrics[10:]) >= 90
  # Running observation statistics were updated with every observation of the rollouts.
  assert float(state.runner.obs_norm.count) == config.num_envs * (1 + updates * config.num_steps)
  assert np.all(np.asarray(state.runner.obs_norm.var) > 0)
  # Action bounds: an out-of-range action is clipped to the bound, and the policy's samples are what the env gets.
  s0 = jax.tree.map(lambda x: x[0], state.runner.env_state)
  both = jax.jit(jax.vmap(env.step, in_axes=(None, None, 0)))(None, s0, jnp.array([[100.0], [3.0]]))
  np.testing.assert_allclose(both.obs[0], both.obs[1])
  head, _ = agent.apply(state.params, state.runner.obs)
  assert agent.dist.sample(jax.random.PRNGKey(0), head).shape == (config.num_envs, 1)


def test_craftax_trains_with_a_reset_pool():
  config = craftax_config.get_config("debug")
  agent, state, metrics = _train_a_few_updates(config, 2)
  env = agent.env
  assert env.observation_shape == (1345,) and env.action_space == envs.Discrete(17)
  assert state.runner.obs.shape == (config.num_envs, 1345)
  assert state.runner.reset_pool.obs.shape == (config.reset_pool.size, 1345)
  _assert_finite(metrics)
  # Actions come from a 17-way categorical.
  head, _ = agent.apply(state.params, state.runner.obs)
  actions = agent.dist.sample(jax.random.PRNGKey(0), head)
  assert actions.shape == (config.num_envs,) and bool(jnp.all((actions >= 0) & (actions < 17)))
