"""Counters at the end of a run of 10^12 transitions: a train state forged at the last update of such a run, past
2^31 optimizer steps, takes that update through the trainer's program; and the anneal against optax's own schedule
where optax's int32 count suffices."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from launch.config import resolve as config_lib
from launch.config.schedule import Segment
from launch.run import programs
from learner import optimizer as optimizer_lib
from tests.test_train import _debug_config

TRILLION = 10**12
INT32_MAX = 2**31 - 1
MOMENT = 1e3  # Adam's forged first moment (second: its square): the gradients (clipped to norm 0.5) barely move them


def _trillion_config():
  """8 envs x 64 steps: 1,953,125,000 updates (< 2^31) of 2 epochs x 2 minibatches, 7.8e9 optimizer steps; every
  option that keeps a count or a sum on: obs_norm, reset pool, SFL (re-scoring before every update), PPO-EWMA,
  outer-step control (with diagnostics)."""
  return _debug_config(**{
      "env_name": "levels", "num_steps": 64, "total_env_steps": TRILLION, "scaling.rule": "recipe",
      "obs_norm": True, "reset_pool.size": 16, "reset_pool.refresh": 4, "level_sampler.kind": "sfl",
      "level_sampler.batch_size": 16, "level_sampler.num_batches": 2, "level_sampler.rollout_steps": 8,
      "level_sampler.buffer_size": 4, "level_sampler.rescore_every": 1, "ewma.enabled": True,
      "outer_step.mode": "samples_per_kl"})


def _forged(state, last: int, decay: float):
  """`state` as it would be before update `last` of the run: the update counter and the anneal's there, Adam's count
  saturated (optax's safe_increment stops at 2^31 - 1), EWMA's weight at its limit 1 / (1 - decay), the observation
  statistics' count at 10^12. Params zero and Adam's moments large and equal, so each optimizer step moves every
  param by -lr x a known factor, which a zero param shows exactly."""
  values = {"count": INT32_MAX, "update": last, "step": 0, "mu": MOMENT, "nu": MOMENT**2}  # by state field

  def opt_leaf(path, x):
    field = next(k.name for k in path if getattr(k, "name", None) in values)
    return jnp.full_like(x, values[field])

  zeros = lambda: jax.tree.map(jnp.zeros_like, state.params)  # two trees: the update donates every buffer
  runner = state.runner
  return state.replace(
      params=zeros(), opt_state=jax.tree_util.tree_map_with_path(opt_leaf, state.opt_state), update=jnp.int32(last),
      proximal=state.proximal.replace(params=zeros(), total_weight=jnp.float32(1 / (1 - decay))),
      runner=runner.replace(obs_norm=runner.obs_norm.replace(count=jnp.float32(TRILLION))))


def test_last_update_of_a_trillion_transition_run():
  config = _trillion_config()
  resolved = config_lib.resolve(config, 1)
  n, steps = resolved.num_updates, config.update_epochs * resolved.ppo.num_minibatches
  assert n == TRILLION // (8 * 64) < INT32_MAX < n * steps  # the optimizer steps do not fit in int32
  progs = programs.build(config, resolved=resolved, eval_episodes=0)
  state = jax.device_put(_forged(progs.init(jax.random.PRNGKey(0)), n - 1, resolved.ppo.ewma_decay),
                         progs.state_shardings)
  state, metrics = progs.update(state)
  state, metrics = jax.device_get((state, metrics))

  # Counters advanced without wrapping: the update counter and the anneal's to the end, Adam's stays saturated.
  assert int(state.update) == n
  counts = {jax.tree_util.keystr(p).rsplit(".", 1)[-1]: int(x)
            for p, x in jax.tree_util.tree_leaves_with_path(state.opt_state) if np.ndim(x) == 0}
  assert counts == {"count": INT32_MAX, "update": n, "step": 0}

  # The learning rate at optimizer step k of the last update is lr * (1 - k / steps) / n (1 / (steps * n) of it at
  # the last step, 0 after). Step k moves every param by -lr_k * m / sqrt(v), and with the forged moments m / sqrt(v)
  # = (0.9 / sqrt(0.999))^(k + 1) up to the gradients' share (< 1e-4).
  lr = [config.learning_rate * (steps - k) / (steps * n) for k in range(steps)]
  assert all(0 < x < 1e-11 for x in lr)
  expected = -sum(x * (0.9 / 0.999**0.5)**(k + 1) for k, x in enumerate(lr))
  for leaf in jax.tree.leaves(state.params):
    np.testing.assert_allclose(leaf, expected, rtol=1e-3)

  # Metrics and the other counted state finite; the interval's counts exact.
  for name in ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction", "param_norm",
               "episode_return_sum"):
    assert np.isfinite(getattr(metrics, name)), name
  for name in ("kl_mean", "update_norm", "samples", "explained_variance"):
    assert np.isfinite(getattr(metrics.diagnostics, name)), name
  assert 0 < int(metrics.episode_count) <= 8 * 64 and metrics.episode_count.dtype == np.int32
  assert 0 <= int(metrics.sfl.buffer_resets) <= int(metrics.sfl.resets) == int(metrics.episode_count)
  assert np.isfinite(state.outer.lr_scale) and np.isfinite(state.proximal.total_weight)
  stats = state.runner.obs_norm
  assert stats.count >= np.float32(TRILLION) and np.all(np.isfinite(stats.mean)) and np.all(stats.var > 0)
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state.proximal.params))


def test_anneal_is_optax_linear_schedule_where_int32_suffices():
  """The same rates as optax.linear_schedule over the same optimizer steps (3 updates of 4 steps, from update 1)."""
  steps, updates, first, lr = 4, 4, 1, 0.5
  anneal = optimizer_lib.scale_by_linear_anneal(lr, steps, updates, first)
  schedule = optax.linear_schedule(lr, 0.0, (updates - first) * steps, transition_begin=first * steps)
  state = optimizer_lib.AnnealState(update=jnp.int32(first), step=jnp.int32(0))
  for count in range(first * steps, updates * steps + 2):  # two steps past the end: the rate stays 0
    g, state = anneal.update({"w": jnp.ones(())}, state)
    np.testing.assert_allclose(-g["w"], schedule(count), rtol=1e-6, atol=1e-9)
    assert (int(state.update), int(state.step)) == divmod(count + 1, steps)


def test_counts_past_int32_are_config_errors():
  """The anneal's int32 counts hold a run's updates and an update's optimizer steps; more of either is refused."""
  config = _debug_config(num_envs=2**20, num_steps=1024, num_minibatches=0, minibatch_size=1, update_epochs=4,
                         total_env_steps=2**30)
  with pytest.raises(config_lib.ConfigError, match=r"update_epochs=4: 4,294,967,296 optimizer steps per update"):
    config_lib.resolve(config, 1)
  config = _debug_config(total_env_steps=TRILLION // 4)  # 1.95e9 updates of 128 env steps: within int32
  config_lib.resolve(config, 1)
  # ... but not after 2^30 smaller updates done before (64 env steps each: e.g. at num_steps=8).
  with pytest.raises(config_lib.ConfigError, match=r"the most the int32 update counter holds"):
    config_lib.resolve(config, 1, segment=Segment(update=2**30, env_steps=2**30 * 64, num_envs=8))
