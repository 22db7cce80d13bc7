"""The SFL level sampler (pipeline/sfl.py): learnability and top-k by hand, the share of buffer resets, the `levels` env
whose half-the-time levels SFL must find, exact resume with a stop between re-scorings, and 1 vs 8 devices."""
import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from envs import levels as levels_env, reset_pool
from launch.config import resolve as config_lib
from launch.report import metrics_file
from launch.run import trainer
from launch.configs import debug
from pipeline import batch_rows, rollout, sfl

pytestmark = pytest.mark.usefixtures("no_plots")  # runs skip their figures: tested elsewhere

TIMING = ("wall_time", "sps", "compile_time", "first_update_time")  # differ between runs by nature


def _config(**overrides):
  config = debug.get_config()
  config.update_from_flattened_dict({
      "env_name": "levels", "num_envs": 8, "num_steps": 4, "total_env_steps": 8 * 4 * 10, "log_every": 2,
      "eval_every": 2, "anneal_lr": False, "reset_pool.size": 16, "reset_pool.refresh": 4,
      "level_sampler.kind": "sfl", "level_sampler.batch_size": 16, "level_sampler.num_batches": 2,
      "level_sampler.rollout_steps": 32, "level_sampler.buffer_size": 4, "level_sampler.rescore_every": 4,
      **overrides})
  return config


def test_learnability_and_top_k_by_hand():
  success = jnp.asarray([0.0, 1.0, 0.5, 0.25, 0.75, 0.5])
  # p(1-p) + 0.001 p: 0, .001, .2505, .18775, .18825, .2505 -> levels 2 and 5 (tie: lower index first), then 4.
  buffer = sfl.select({"id": jnp.arange(6)}, jnp.arange(6) * 10, success, 3)
  np.testing.assert_array_equal(buffer.state["id"], [2, 5, 4])
  np.testing.assert_array_equal(buffer.obs, [20, 50, 40])
  np.testing.assert_allclose(buffer.learnability, [0.25, 0.25, 0.1875])
  np.testing.assert_allclose(buffer.success, [0.5, 0.5, 0.75])


def test_success_rates_of_known_levels():
  """Episodes of 2 steps, 32 steps per level: always-solved levels score 1, never-solved 0, the coin flips near 1/2
  (16 episodes each), and the step's level restarts from its own start state."""
  env = levels_env.LevelsEnv()
  state = levels_env.LevelsState(level=jnp.arange(12), time=jnp.zeros((12,), jnp.int32))
  obs = jax.nn.one_hot(jnp.arange(12), 12)
  policy = lambda params, o: (jnp.zeros(o.shape[:-1] + (2,)), jnp.zeros(o.shape[:-1]))
  from learner import distributions  # pylint: disable=import-outside-toplevel
  p = np.asarray(sfl.success_rates(None, state, obs, jax.random.PRNGKey(0), env=env, apply_fn=policy,
                                   dist=distributions.for_action_space(env.action_space), num_steps=32))
  np.testing.assert_array_equal(p[0::3], 1.0)
  np.testing.assert_array_equal(p[1::3], 0.0)
  assert np.all((p[2::3] > 0.1) & (p[2::3] < 0.9)), p
  assert np.all(np.round(p * 16) == p * 16)  # whole episodes: 16 per level


def test_share_of_buffer_resets_matches_the_ratio():
  """Resets drawn from the buffer: their count is Binomial(resets, ratio), and exactly those episodes start from
  the buffer's level (marked by an observation no reset produces)."""
  env, ratio, num_envs, steps = levels_env.LevelsEnv(), 0.3, 256, 64
  key_pool, key_run, key = jax.random.split(jax.random.PRNGKey(3), 3)
  pool = reset_pool.init_pool(env, key_pool, 64)
  marked = levels_env.LevelsState(level=jnp.full((4,), 11), time=jnp.zeros((4,), jnp.int32))
  buffer = sfl.LevelBuffer(state=marked, obs=jnp.full((4, 12), -1.0), learnability=jnp.zeros(4),
                           success=jnp.zeros(4))
  runner = rollout.init_runner(env, key_run, num_envs).replace(reset_pool=pool, level_buffer=buffer)
  from learner import distributions  # pylint: disable=import-outside-toplevel
  zeros = lambda params, o: (jnp.zeros(o.shape[:-1] + (2,)), jnp.zeros(o.shape[:-1]))
  _, traj, _, stats = jax.jit(lambda r, k: rollout.rollout(
      None, r, k, env=env, apply_fn=zeros, value_fn=lambda p, o: zeros(p, o)[1],
      dist=distributions.for_action_space(env.action_space), num_steps=steps, gamma=0.99, pool_refresh=4, buffer_ratio=ratio))(
          runner, key)
  traj = batch_rows.unpack_batch(traj)
  resets, from_buffer = int(stats.count), int(stats.buffer_resets)
  assert resets == num_envs * steps // 2  # 2-step episodes
  sigma = np.sqrt(resets * ratio * (1 - ratio))
  assert abs(from_buffer - resets * ratio) < 4 * sigma, (from_buffer, resets)
  done = np.asarray(traj.done[:-1]) > 0
  started_marked = np.all(np.asarray(traj.obs[1:]) == -1.0, -1)
  assert not np.any(started_marked & ~done)
  last_done = int(np.asarray(traj.done[-1]).sum())  # their next episode starts after the rollout
  assert from_buffer - last_done <= started_marked.sum() <= from_buffer
  np.testing.assert_allclose(started_marked.sum() / done.sum(), ratio, atol=4 * sigma / resets)


def test_config_errors_name_the_key():
  def errors(**overrides):
    return "\n".join(config_lib.check(_config(**overrides), num_devices=8))
  assert "config.level_sampler.buffer_size=64: must be at most the 32 levels" in errors(
      **{"level_sampler.buffer_size": 64})
  assert "config.level_sampler.buffer_ratio=1.5" in errors(**{"level_sampler.buffer_ratio": 1.5})
  assert "config.level_sampler.kind='sfl': sfl needs an env" in errors(env_name="cue")
  assert "config.level_sampler.kind='sfl': sfl draws its generator levels from the reset pool" in errors(
      **{"reset_pool.size": 0})
  assert "config.level_sampler.batch_size=12: must be a multiple of the 8 devices" in errors(
      **{"level_sampler.batch_size": 12, "mesh.data": -1})
  assert errors() == ""
  from launch.run import programs  # pylint: disable=import-outside-toplevel
  with pytest.raises(ValueError, match="num_seeds and updates_per_call with level_sampler.kind='sfl'"):
    programs.build(_config(), eval_episodes=0, num_seeds=2)  # refused before anything is compiled


def test_buffer_holds_the_half_the_time_levels():
  """The `levels` env's levels are always, never or half the time solved whatever the policy does: after the first
  re-scoring every buffer level is a coin-flip one, with a success rate strictly between 0 and 1."""
  from launch.run import programs  # pylint: disable=import-outside-toplevel
  progs = programs.build(_config(), eval_episodes=0)
  state, metrics = progs.update(progs.init(jax.random.PRNGKey(0)))
  buffer = jax.device_get(state.runner.level_buffer)
  np.testing.assert_array_equal(buffer.state.level % 3, 2)
  assert np.all((buffer.success > 0) & (buffer.success < 1)), buffer.success
  np.testing.assert_allclose(buffer.learnability, buffer.success * (1 - buffer.success))
  assert float(metrics.sfl.learnability_min) > 0.1
  assert 0 < int(metrics.sfl.buffer_resets) < int(metrics.sfl.resets)
  # The re-scoring is a program of its own, run before updates 1, 5, 9 (rescore_every = 4), and only then.
  assert "rescore" in progs.compiled and progs.update.update is progs.compiled["update"]
  calls = []
  counting = dataclasses.replace(progs.update, rescore=lambda s: calls.append(int(s.update)) or progs.rescore(s))
  for _ in range(8):
    state, _ = counting(state)
  assert calls == [4, 8]


def _rows(workdir):
  return [{k: v for k, v in r.items() if k not in TIMING}
          for r in metrics_file.read_jsonl(os.path.join(workdir, "metrics.jsonl"))]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("sfl") / "run")
  trainer.train_and_evaluate(_config(), workdir)
  return workdir


def test_resume_between_rescorings_is_exact(uninterrupted, tmp_path):
  """Re-scorings before updates 1, 5, 9; the run stops after update 6 (a checkpoint, the buffer of update 5's
  re-scoring in it) and resumes to 10: every metrics row == the uninterrupted run's."""
  workdir = str(tmp_path / "run")
  trainer.train_and_evaluate(_config(total_env_steps=8 * 4 * 6), workdir)
  trainer.train_and_evaluate(_config(), workdir)
  rows, expected = _rows(workdir), _rows(uninterrupted)
  assert [r["update"] for r in expected] == [2, 4, 6, 8, 10]
  assert "sfl_learnability_mean" in expected[-1] and expected[-1]["sfl_buffer_share"] is not None
  assert rows == expected


def test_sfl_does_not_depend_on_device_count(uninterrupted, tmp_path):
  row8 = trainer.train_and_evaluate(_config(**{"mesh.data": 8}), str(tmp_path / "8"))
  row1 = _rows(uninterrupted)[-1]
  for key in ("param_norm", "value_loss", "entropy", "sfl_learnability_mean", "sfl_success_mean",
              "sfl_buffer_share", "eval_return"):
    np.testing.assert_allclose(row1[key], row8[key], rtol=1e-4, err_msg=key)
