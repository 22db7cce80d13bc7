"""Kinetix through kinetix-env: random levels (filtered, from a reset pool) and a hand-designed level.

kinetix-env requires jax<=0.9.0, so these tests run in .venv-kinetix (bash scripts/test_kinetix.sh, part of CI),
which sets REQUIRE_KINETIX=1 so that a broken install fails instead of skipping. In the main environment they skip.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

if not os.environ.get("REQUIRE_KINETIX"):
  pytest.importorskip("kinetix", reason="kinetix-env needs jax<=0.9.0: runs in .venv-kinetix (scripts/test_kinetix.sh)")

import envs  # pylint: disable=wrong-import-position
from launch.run import programs  # pylint: disable=wrong-import-position
from launch.configs import kinetix as kinetix_config  # pylint: disable=wrong-import-position

NVEC = (3, 3, 3, 3, 2, 2)  # size s: 4 motors (forward, backward, off) and 2 thrusters (on, off)


def test_kinetix_random_levels_train_from_a_reset_pool():
  """The config's debug variant: entity observations and the entity network, from a reset pool."""
  config = kinetix_config.get_config("debug")
  progs = programs.build(config, eval_episodes=0)
  agent = progs.agent
  env = agent.env
  assert env.action_space == envs.MultiDiscrete(NVEC) and env.observation_spec.polygons.shape == (5, 27)
  assert env.max_episode_steps == 256
  # Building one traces kinetix-env's level generator: config validation and the agent share one instance.
  assert envs.make(config.env_name) is env
  state = progs.init(jax.random.PRNGKey(0))
  for _ in range(2):
    state, metrics = progs.update(state)
    for field in ("policy_loss", "value_loss", "entropy", "approx_kl", "param_norm", "episode_return_sum"):
      assert np.isfinite(jax.device_get(getattr(metrics, field))), field
  obs = state.runner.obs
  assert obs.polygons.shape == (config.num_envs, 5, 27) and obs.joint_indexes.dtype == jnp.int32
  assert obs.attention_mask.shape == (config.num_envs, 4, 7, 7) and np.all(np.isfinite(obs.polygons))
  pool = state.runner.reset_pool.obs
  assert pool.circles.shape == (config.reset_pool.size, 2, 19)
  # Random levels differ from one another; the multi-categorical head samples within every action's range.
  assert len({np.asarray(o).tobytes() for o in pool.polygons}) > 1
  head, _ = agent.apply(state.params, obs)
  actions = agent.dist.sample(jax.random.PRNGKey(1), head)
  assert actions.shape == (config.num_envs, len(NVEC))
  assert bool(jnp.all((actions >= 0) & (actions < jnp.asarray(NVEC))))


def test_solve_rates_equal_a_per_level_loop():
  """pipeline/solve_rate.py (all levels of a size in one program) against each level played on its own."""
  from envs import kinetix_adapter  # pylint: disable=import-outside-toplevel
  from learner import distributions, entity_network  # pylint: disable=import-outside-toplevel
  from pipeline import solve_rate  # pylint: disable=import-outside-toplevel
  # An untrained policy sometimes solves h3 and h5 and never h0 (8 attempts each: 3/8, 5/8, 0/8), so the comparison
  # covers solved and unsolved episodes, not only zeros.
  names, attempts = ["s/h0_weak_thrust", "s/h3_point_the_thruster", "s/h5_rotate_fall"], 3
  env, levels = kinetix_adapter.stacked_levels(names, "entity")
  assert kinetix_adapter.stacked_levels(list(names), "entity")[1] is levels  # loaded once per process
  dist = distributions.for_action_space(env.action_space)
  model = entity_network.EntityActorCritic(dist, hidden_sizes=(16,), width=16, layers=1, heads=4, qkv_features=8)
  params = model.init(jax.random.PRNGKey(0), env.reset(jax.random.PRNGKey(0))[1])
  ids = jnp.arange(len(names), dtype=jnp.int32)
  key = jax.random.PRNGKey(3)
  rates = jax.jit(solve_rate.make_solve_rates(env, model.apply, dist, attempts))(params, key, levels, ids)

  @jax.jit
  def one_attempt(level, attempt_key):  # scans every step of the time limit, keeps the first episode's outcome
    def step(carry, t):
      state, done, solved = carry
      act_key, env_key = jax.random.split(jax.random.fold_in(attempt_key, t))
      head, _ = model.apply(params, env._obs(state))  # pylint: disable=protected-access
      res = env.step(env_key, state, dist.sample(act_key, head))
      solved = solved | (~done & env.success(res))
      return (res.state, done | res.terminated | res.truncated, solved), None
    (_, _, solved), _ = jax.lax.scan(step, (level, False, False), jnp.arange(env.max_episode_steps))
    return solved

  for i, name in enumerate(names):
    level = jax.tree.map(lambda x: x[i], levels)
    keys = jax.random.split(jax.random.fold_in(key, i), attempts)
    solved = sum(bool(one_attempt(level, k)) for k in keys)
    assert round(float(rates[i]) * attempts) == solved and float(rates[i]) == pytest.approx(solved / attempts), name
  assert 0 < float(jnp.sum(rates)) and float(rates[0]) == 0, rates
  summary = solve_rate.summarize(dict(zip(names, map(float, rates))))
  assert summary["solve_rate_s"] == summary["solve_rate"] == pytest.approx(float(np.mean(rates)))
  assert "m" in kinetix_adapter.solve_levels("s,m/h0_unicycle") and len(kinetix_adapter.solve_levels("l")["l"]) == 40


def test_kinetix_named_level_starts_every_episode_from_it():
  env = envs.make("kinetix:s/h0_weak_thrust")
  (s1, o1), (s2, o2) = env.reset(jax.random.PRNGKey(0)), env.reset(jax.random.PRNGKey(1))
  np.testing.assert_array_equal(o1, o2)
  assert o1.shape == env.observation_shape == (140,)
  res = jax.jit(env.step)(jax.random.PRNGKey(2), s1, jnp.zeros((len(NVEC),), jnp.int32))
  assert res.obs.shape == (140,) and np.isfinite(float(res.reward)) and not bool(res.truncated)
  with pytest.raises(envs.UnknownEnvError, match="s/h0_weak_thrust"):
    envs.make("kinetix:s/no_such_level")


def test_kinetix_renders_frames_and_reports_success():
  """launch.evaluate's video and success measure on Kinetix: its pixel renderer, and `success` on a goal step."""
  from envs import render  # pylint: disable=import-outside-toplevel
  env = envs.make("kinetix:s/h0_weak_thrust")
  state, _ = env.reset(jax.random.PRNGKey(0))
  res = jax.jit(env.step)(jax.random.PRNGKey(1), state, jnp.zeros((len(NVEC),), jnp.int32))
  images = render.frames(env, [state, res.state])
  assert len(images) == 2 and images[0].ndim == 3 and images[0].shape[2] == 3 and images[0].dtype == np.uint8
  assert images[0].std() > 0  # not a blank image
  goal = res.replace(terminated=jnp.asarray(True), reward=jnp.asarray(1.0))
  assert bool(env.success(goal)) and not bool(env.success(goal.replace(reward=jnp.asarray(-1.0))))
  # `success` is also what SFL's level sampler scores levels by (pipeline/sfl.py): Kinetix configs accept it.
  from launch.config import resolve as config_lib  # pylint: disable=import-outside-toplevel
  config = kinetix_config.get_config("debug")
  config.level_sampler.kind = "sfl"
  assert config_lib.check(config, num_devices=1) == []
  assert config_lib.resolve(config, num_devices=1).ppo.sfl.buffer_size == 1024



def test_kinetix_programs_lower_for_cuda_and_tpu():
  """The paper's config (entity observations, solve rates) lowered for GPU and TPU on an 8-device mesh
  (launch/run/portability.py): everything lowers; nothing of this project's is flagged (jax2d's float scatter-adds
  are notes, left to the GPU's deterministic-ops option). Solve rates on one level of size s: kinetix-env loads a
  level in ~2 s of eager JAX ops, and the program over the 74 (stacked per size) differs only in its level axis."""
  import json  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run([sys.executable, "-m", "launch.train", "--dry_run", "--nodry_run_memory",
                         "--dry_run_platforms=cuda,tpu", "--config=launch/configs/kinetix.py",
                         "--config.eval.solve_levels=s/h0_weak_thrust"], cwd=repo,
                        capture_output=True, text=True, timeout=1500)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lowering = json.loads(proc.stdout)["lowering"]
  names = {p["program"] for p in lowering["programs"]}
  assert names == {"init", "resize_runner", "update", "evaluate", "solve_rates_0"} and lowering["devices"] == 8
  assert all(p["lowered"] and not p["flags"] for p in lowering["programs"])
  assert any("jax2d" in note for p in lowering["programs"] for note in p["notes"])
