"""The minibatches' advantage statistics streamed in one pass (pipeline/advantage_stats.py) are the gathered ones;
the flat row gather (batch_rows.at) reads the same rows and is used exactly where the env axis is not split."""
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from launch.config import resolve as config_lib
from launch.run import programs, trainer
from launch.configs import debug, default
from learner import losses
from pipeline import advantage_stats, batch_rows, iteration as iteration_lib, permutation, sgd


def test_positions_invert_the_permutation():
  key = jax.random.PRNGKey(5)
  for n in (1, 2, 1024, 2**17):
    perm = permutation.random_permutation(key, n)
    np.testing.assert_array_equal(permutation.positions(key, n, perm), np.arange(n))
  with pytest.raises(ValueError, match="power-of-two"):
    permutation.positions(key, 1000, jnp.arange(10))


def _batch(shape, seed=0):
  k = jax.random.split(jax.random.PRNGKey(seed), 4)
  return losses.Minibatch(obs=jax.random.normal(k[0], shape + (4,)),
                          action=jax.random.bernoulli(k[1], 0.5, shape).astype(jnp.int32),
                          log_prob=jnp.full(shape, -0.7), value=jax.random.normal(k[2], shape),
                          # a large mean: sums of squares not taken around a centre would lose the variance
                          advantage=1e3 + 2.0 * jax.random.normal(k[3], shape), target=jnp.ones(shape))


@pytest.mark.parametrize("devices", [1, 8])
def test_streamed_stats_equal_each_minibatchs_own(devices):
  """Against float64 over each minibatch's samples, as the SGD slices them from the epoch's permutation; the env
  axis split over `devices`."""
  num_steps, num_envs, num_minibatches = 16, 32, 4
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:devices]), ("data",))
  split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "data"))
  batch = jax.device_put(_batch((num_steps, num_envs)), split)
  rows = jax.jit(batch_rows.pack)(batch)
  keys = jax.random.split(jax.random.PRNGKey(7), 3)
  mean, std = jax.jit(advantage_stats.streamed, static_argnums=2)(rows, keys, num_minibatches)
  assert mean.shape == std.shape == (3, num_minibatches)
  n = num_steps * num_envs
  size = n // num_minibatches
  flat = np.asarray(batch.advantage, np.float64).reshape(-1)
  for e, key in enumerate(keys):
    for b in range(num_minibatches):
      want = flat[np.asarray(permutation.permutation_slice(key, n, jnp.int32(b * size), size))]
      np.testing.assert_allclose([mean[e, b], std[e, b]], [want.mean(), want.std()], rtol=1e-5)
  # Minibatches of different contents get different statistics (a mix-up of bins would still pass on average).
  assert len(np.unique(np.asarray(std))) == std.size


def test_streamed_stats_refuse_other_batch_sizes():
  rows = batch_rows.pack(_batch((3, 8)))
  assert not advantage_stats.supported(24) and advantage_stats.supported(32)
  with pytest.raises(ValueError, match="power-of-two"):
    advantage_stats.streamed(rows, jax.random.split(jax.random.PRNGKey(0), 2), 4)


@pytest.mark.parametrize("shape", [(16, 32), (12, 16)])  # a power-of-two batch streams; 192 samples gather
def test_sgd_with_streamed_stats_equals_sgd_with_gathered(shape):
  config = default.get_config()
  resolved = config_lib.resolve(config, 1)
  agent = trainer.build_agent(config, resolved)
  state = iteration_lib.init_train_state(agent, jax.random.PRNGKey(0), 32)
  loss_fn = functools.partial(losses.ppo_loss, apply_fn=agent.apply, dist=agent.dist, clip_eps=0.2, vf_coef=0.5,
                              ent_coef=0.01)
  rows = batch_rows.pack(_batch(shape, seed=1).replace(advantage=_batch(shape, seed=1).advantage - 1e3))

  @functools.partial(jax.jit, static_argnums=0)
  def run(streamed, rows):
    return sgd.sgd_epochs(state.params, state.opt_state, rows, jax.random.PRNGKey(3), loss_fn=loss_fn,
                          optimizer=agent.optimizer, update_epochs=2, num_minibatches=4, chunk_size=16,
                          streamed_stats=streamed)

  streamed, gathered = run(True, rows), run(False, rows)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), streamed.params,
               gathered.params)
  np.testing.assert_allclose(streamed.loss.policy_loss, gathered.loss.policy_loss, rtol=1e-4, atol=1e-7)
  moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), streamed.params, state.params)
  assert max(jax.tree.leaves(moved)) > 1e-5  # the SGD did move the params


def test_flat_gather_reads_the_same_rows():
  rows = jax.jit(batch_rows.pack)(_batch((8, 16)))
  idx = jnp.array([127, 0, 17, 17, 64, 3])
  np.testing.assert_array_equal(batch_rows.take(rows, idx, flat=True), batch_rows.take(rows, idx))
  np.testing.assert_array_equal(batch_rows.column_at(rows, ".advantage", idx, flat=True),
                                batch_rows.column_at(rows, ".advantage", idx))


@pytest.mark.parametrize("devices", [1, 8])
def test_update_gathers_rows_flat_only_on_one_device(devices):
  """One device: the minibatch rows are gathered from the batch read as [T * N, F] (batch_rows.at's `flat`); split
  over devices, by (t, n), which needs no reshape of the split env axis."""
  config = debug.get_config()
  config.num_envs, config.num_steps, config.num_minibatches, config.sgd_chunk_size = 16, 16, 2, 16
  config.mesh.data = devices
  progs = programs.build(config, resolved=config_lib.resolve(config, devices), eval_episodes=0)
  hlo = progs.compiled["update"].as_text()
  flat_rows = re.findall(r" gather\(.*start_index_map=\{0\}, index_vector_dim=1, slice_sizes=\{1,\d+\}", hlo)
  assert bool(flat_rows) == (devices == 1)
