"""Built-in envs: CartPole against gymnax's CartPole-v1, the `cue` env's optimum, auto-reset, the gymnax adapter."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from envs import base, cartpole, cue


def test_cartpole_matches_gymnax_trajectories():
  gymnax = pytest.importorskip("gymnax")  # a test dependency: `pip install -e .[test]` installs it
  genv, gparams = gymnax.make("CartPole-v1")
  env = cartpole.CartPole()
  rng = np.random.default_rng(0)
  for episode in range(5):
    key = jax.random.PRNGKey(episode)
    state, obs = env.reset(key)
    gobs, gstate = genv.reset_env(key, gparams)
    np.testing.assert_array_equal(obs, gobs)
    steps = 0
    for t in range(600):
      action = jnp.int32(rng.integers(2) if episode < 3 else (t % 2))  # random, then a long alternating episode
      res = env.step(key, state, action)
      gobs, gstate, greward, gterm, _ = genv.step_env(key, gstate, action, gparams)
      gtrunc = genv.is_truncated(gstate, gparams)
      np.testing.assert_allclose(res.obs, gobs, rtol=1e-6, atol=1e-7)
      assert float(res.reward) == float(greward)
      assert bool(res.terminated) == bool(gterm) and bool(res.truncated) == bool(gtrunc)
      state, steps = res.state, steps + 1
      if res.terminated or res.truncated:
        break
    assert steps < 600


def test_cartpole_truncates_at_500():
  env = cartpole.CartPole()
  state, _ = env.reset(jax.random.PRNGKey(0))
  state = state.replace(time=jnp.int32(499))
  assert bool(env.step(None, state, jnp.int32(0)).truncated)


def test_cue_env_optimal_and_wrong_actions():
  env = cue.CueEnv(length=5, num_actions=3)
  state, obs = env.reset(jax.random.PRNGKey(0))
  total = 0.0
  for t in range(5):
    res = env.step(None, state, jnp.argmax(obs).astype(jnp.int32))
    total += float(res.reward)
    assert not bool(res.terminated)
    assert bool(res.truncated) == (t == 4)
    state, obs = res.state, res.obs
  assert total == env.optimal_return == 5.0
  state, obs = env.reset(jax.random.PRNGKey(0))
  res = env.step(None, state, (jnp.argmax(obs) + 1).astype(jnp.int32))
  assert bool(res.terminated) and float(res.reward) == 0.0


def test_auto_reset_keeps_final_obs_and_resets_state():
  env = cue.CueEnv(length=2, num_actions=2)
  state, obs = env.reset(jax.random.PRNGKey(0))
  out = base.auto_reset_step(env, jax.random.PRNGKey(1), state, jnp.int32(0))
  assert not bool(out.truncated) and int(out.state.time) == 1
  out = base.auto_reset_step(env, jax.random.PRNGKey(1), out.state, jnp.int32(1))
  assert bool(out.truncated) and not bool(out.terminated)
  np.testing.assert_array_equal(out.final_obs, env._obs(jnp.int32(2)))  # pylint: disable=protected-access
  assert int(out.state.time) == 0  # already the next episode
  np.testing.assert_array_equal(out.obs, env.reset(None)[1])


def test_registry_errors_name_the_alternatives():
  with pytest.raises(envs.UnknownEnvError, match="CartPole-v1"):
    envs.make("NoSuchEnv")
  with pytest.raises(envs.UnknownEnvError, match="not a gymnax environment"):
    envs.make("gymnax:NoSuchEnv-v0")


def test_gymnax_adapter_continuous_actions_are_clipped():
  pytest.importorskip("gymnax")
  env = envs.make("gymnax:Pendulum-v1")
  assert isinstance(env.action_space, envs.Box) and env.action_space.shape == (1,)
  assert env.action_space.low == (-2.0,) and env.action_space.high == (2.0,)
  state, obs = env.reset(jax.random.PRNGKey(0))
  assert obs.shape == env.observation_shape == (3,)
  big = env.step(jax.random.PRNGKey(1), state, jnp.array([100.0]))
  clipped = env.step(jax.random.PRNGKey(1), state, jnp.array([2.0]))
  np.testing.assert_allclose(big.obs, clipped.obs)
  assert env.max_episode_steps == 200


def test_cartpole_substeps_refines_the_same_dynamics():
  coarse, fine = cartpole.CartPole(), envs.make("cartpole_substeps:20")
  state, _ = coarse.reset(jax.random.PRNGKey(3))
  a = coarse.step(None, state, jnp.int32(1)).obs
  b = fine.step(None, state, jnp.int32(1)).obs
  assert not np.array_equal(a, b)  # really integrates differently ...
  np.testing.assert_allclose(a, b, atol=5e-3)  # ... but the same physics over one 0.02 s step
  with pytest.raises(envs.UnknownEnvError):
    envs.make("cartpole_substeps:zero")
