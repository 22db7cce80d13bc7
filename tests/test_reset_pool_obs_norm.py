"""The reset pool's start states follow the plain reset distribution; running observation normalisation is exact,
lives in the TrainState, and keeps results independent of the device count."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from envs import base, reset_pool
from launch.run import trainer
from launch.configs import debug
from learner import distributions
from pipeline import batch_rows, obs_norm, rollout

pytestmark = pytest.mark.usefixtures("no_plots")  # runs skip their figures: tested elsewhere

MAX_LEN = 8


@struct.dataclass
class LengthState:
  length: jax.Array
  time: jax.Array


class LengthEnv(base.Environment):
  """The start state fixes the episode length L ~ U{1..8} (shown one-hot), so short-episode start states come round
  more often: a pool that reused an env's recent start state would over-represent them."""

  def __hash__(self):
    return hash(type(self))

  def __eq__(self, other):
    return type(other) is type(self)

  observation_shape = property(lambda self: (MAX_LEN,))
  action_space = property(lambda self: base.Discrete(2))
  max_episode_steps = property(lambda self: MAX_LEN)

  def reset(self, key):
    length = jax.random.randint(key, (), 1, MAX_LEN + 1)
    return LengthState(length, jnp.zeros((), jnp.int32)), jax.nn.one_hot(length - 1, MAX_LEN)

  def step(self, key, state, action):
    time = state.time + 1
    return base.StepResult(state=LengthState(state.length, time), obs=jax.nn.one_hot(state.length - 1, MAX_LEN),
                           reward=jnp.ones(()), terminated=time >= state.length, truncated=jnp.zeros((), bool))


def _start_lengths(pool_size, refresh, num_envs=64, num_steps=600, seed=0):
  """Episode start lengths seen in one long rollout (plain reset when pool_size == 0)."""
  env = LengthEnv()
  key_env, key_pool, key_roll = jax.random.split(jax.random.PRNGKey(seed), 3)
  pool = reset_pool.init_pool(env, key_pool, pool_size) if pool_size else None
  zeros = lambda params, obs: (jnp.zeros(obs.shape[:-1] + (2,)), jnp.zeros(obs.shape[:-1]))
  run = jax.jit(lambda runner, pool, key: rollout.rollout(
      None, runner.replace(reset_pool=pool), key, env=env, apply_fn=zeros, value_fn=lambda p, o: zeros(p, o)[1],
      dist=distributions.Categorical(2), num_steps=num_steps, gamma=0.99, pool_refresh=refresh))
  _, rows, *_ = run(rollout.init_runner(env, key_env, num_envs), pool, key_roll)
  traj = batch_rows.unpack_batch(rows)
  done = np.asarray(traj.done[:-1]) > 0
  return np.argmax(np.asarray(traj.obs[1:])[done], axis=-1) + 1


def _chi2_uniform(lengths):
  counts = np.bincount(lengths, minlength=MAX_LEN + 1)[1:]
  expected = len(lengths) / MAX_LEN
  return float(((counts - expected) ** 2 / expected).sum())


CHI2_7DOF_P1E4 = 29.9  # P(chi2 with 7 degrees of freedom > 29.9) = 1e-4


def test_reset_pool_start_states_match_plain_reset():
  plain = _start_lengths(0, 0)
  pooled = _start_lengths(512, 64)
  assert len(plain) > 5000 and len(pooled) > 5000
  assert _chi2_uniform(plain) < CHI2_7DOF_P1E4  # the env itself: episode starts are uniform over L
  assert _chi2_uniform(pooled) < CHI2_7DOF_P1E4
  # Two-sample: the pooled and plain start-length histograms agree (chi-square homogeneity, 7 dof).
  table = np.stack([np.bincount(x, minlength=MAX_LEN + 1)[1:] for x in (plain, pooled)])
  expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
  assert float(((table - expected) ** 2 / expected).sum()) < CHI2_7DOF_P1E4


def test_the_distribution_check_catches_a_biased_pool():
  """Control: envs that always restart from 'their own' slot (index = env id) reuse short-episode starts; the same
  check must reject that, or the test above would prove nothing."""
  env = LengthEnv()

  def sticky_step(env, pool, key, state, action, slot):
    res = env.step(key, state, action)
    done = res.terminated | res.truncated
    return (base.tree_select(done, jax.tree.map(lambda x: x[slot], pool.state), res.state),
            jnp.where(done, pool.obs[slot], res.obs), done)

  num_envs, num_steps = 64, 600
  pool = reset_pool.init_pool(env, jax.random.PRNGKey(1), 512)
  state, obs = jax.vmap(env.reset)(jax.random.split(jax.random.PRNGKey(2), num_envs))

  def body(carry, key):
    state, obs, pool = carry
    pool = reset_pool.refresh(env, pool, key, 64)
    state, new_obs, done = jax.vmap(sticky_step, in_axes=(None, None, None, 0, None, 0))(
        env, pool, key, state, jnp.int32(0), jnp.arange(num_envs))
    return (state, new_obs, pool), (new_obs, done)

  _, (obs_seq, done) = jax.lax.scan(body, (state, obs, pool), jax.random.split(jax.random.PRNGKey(3), num_steps))
  lengths = np.argmax(np.asarray(obs_seq)[np.asarray(done)], axis=-1) + 1
  assert _chi2_uniform(lengths) > 10 * CHI2_7DOF_P1E4


def test_running_moments_match_numpy():
  rng = np.random.default_rng(0)
  batches = [rng.normal(loc=3.0, scale=2.0, size=(n, 3)).astype(np.float32) for n in (5, 17, 64)]
  stats = obs_norm.init((3,))
  np.testing.assert_allclose(obs_norm.normalize(stats, jnp.asarray(batches[0])), batches[0], rtol=1e-6)
  for b in batches:
    stats = obs_norm.update(stats, jnp.asarray(b))
  everything = np.concatenate(batches)
  np.testing.assert_allclose(stats.mean, everything.mean(0), rtol=1e-5)
  np.testing.assert_allclose(stats.var, everything.var(0), rtol=1e-4)
  assert float(stats.count) == len(everything)
  z = obs_norm.normalize(stats, jnp.asarray(everything))
  np.testing.assert_allclose(np.mean(z, 0), 0.0, atol=1e-4)
  np.testing.assert_allclose(np.std(z, 0), 1.0, rtol=1e-3)
  assert float(jnp.max(obs_norm.normalize(stats, jnp.full((1, 3), 1e6)))) == obs_norm.CLIP


def _debug(**overrides):
  config = debug.get_config()
  config.update_from_flattened_dict(overrides)  # "a.b" keys, type-checked as assignments
  return config


def test_obs_norm_and_reset_pool_do_not_depend_on_device_count(tmp_path):
  """Both features on: a run on 1 device and on a mesh of 8 give the same result (statistics and pool are
  replicated and drawn from global keys)."""
  rows = {}
  for devices in (1, 8):
    config = _debug(obs_norm=True, log_every=10, **{"mesh.data": devices, "reset_pool.size": 32,
                                                     "reset_pool.refresh": 8})
    rows[devices] = trainer.train_and_evaluate(config, str(tmp_path / str(devices)))
  for key in ("param_norm", "value_loss", "entropy", "approx_kl", "eval_return"):
    np.testing.assert_allclose(rows[1][key], rows[8][key], rtol=1e-4, err_msg=key)
  np.testing.assert_allclose(rows[1]["policy_loss"], rows[8]["policy_loss"], rtol=1e-4, atol=1e-6)


def test_train_state_carries_statistics_and_pool():
  config = _debug(obs_norm=True, **{"reset_pool.size": 16, "reset_pool.refresh": 4})
  from launch.run import programs  # pylint: disable=import-outside-toplevel
  from pipeline import iteration as iteration_lib  # pylint: disable=import-outside-toplevel
  progs = programs.build(config, eval_episodes=0)
  state = progs.init(jax.random.PRNGKey(0))
  assert float(state.runner.obs_norm.count) == config.num_envs and state.runner.reset_pool.obs.shape == (16, 4)
  initial_mean = np.asarray(state.runner.obs_norm.mean)  # the update donates its input
  new_state, _ = progs.update(state)
  assert float(new_state.runner.obs_norm.count) == config.num_envs * (1 + config.num_steps)
  assert int(new_state.runner.reset_pool.cursor) == (config.num_steps * 4) % 16
  assert not np.allclose(new_state.runner.obs_norm.mean, initial_mean)
  off = iteration_lib.init_train_state(progs.agent, jax.random.PRNGKey(0), config.num_envs)
  assert off.runner.obs_norm is None and off.runner.reset_pool is None  # nothing to carry or checkpoint when off
