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


def test_sticky_actions_repeat_the_previous_action_with_their_probability():
  """envs/sticky.py: after a reset the previous action is the no-op (0); each step executes it instead of the agent's
  with probability p (20,000 envs, p = 0.25: within 5 standard errors); 0 leaves the env unwrapped."""
  assert type(envs.make("CartPole-v1", 0.0)) is cartpole.CartPole
  env = envs.make("CartPole-v1", 0.25)
  n = 20_000
  state, obs = jax.vmap(env.reset)(jax.random.split(jax.random.PRNGKey(0), n))
  assert obs.shape == (n, 4) and np.all(np.asarray(state.last_action) == 0)
  res = jax.vmap(env.step)(jax.random.split(jax.random.PRNGKey(1), n), state, jnp.ones((n,), jnp.int32))
  kept = float(np.mean(np.asarray(res.state.last_action) == 0))
  assert abs(kept - 0.25) < 5 * np.sqrt(0.25 * 0.75 / n), kept
  # What was executed is what the wrapped env stepped with: same key split, same inner state.
  step_keys = jax.vmap(lambda k: jax.random.split(k)[1])(jax.random.split(jax.random.PRNGKey(1), n))
  inner = jax.vmap(env.env.step)(step_keys, state.inner, res.state.last_action)
  np.testing.assert_array_equal(np.asarray(inner.obs), np.asarray(res.obs))
  with pytest.raises(ValueError, match="must be in"):
    envs.make("CartPole-v1", 1.0)


def test_sticky_actions_keep_what_the_env_offers():
  """SFL's `success` is the wrapped env's, on its own state; other attributes pass through."""
  plain, env = envs.make("levels"), envs.make("levels", 0.1)
  assert env.max_episode_steps == plain.max_episode_steps and env.num_levels == plain.num_levels
  state, _ = env.reset(jax.random.PRNGKey(0))
  res = env.step(jax.random.PRNGKey(1), state, jnp.int32(1))
  assert bool(env.success(res)) == bool(plain.success(res.replace(state=res.state.inner)))
  assert not hasattr(envs.make("CartPole-v1", 0.1), "success")
