"""The speed-ups keep the algorithm: permutation, chunked gradients, thin dense layers, compile options, config."""
import dataclasses
import functools
import itertools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from launch.config import resolve as config_lib
from launch.run import programs, trainer, xla_options
from launch.configs import debug, default
from launch.report.metrics_file import read_jsonl
from learner import diagnostics, distributions, losses, networks
from pipeline import iteration as iteration_lib
from pipeline import batch_rows, permutation, sgd_chunks


@pytest.mark.parametrize("n", [1, 2, 3, 7, 1000, 4096, 100_003])
def test_permutation_is_a_permutation(n):
  perm = np.asarray(permutation.random_permutation(jax.random.PRNGKey(n), n))
  assert perm.dtype == np.int32 and sorted(perm) == list(range(n))


def _chi2_quantile_999(dof):  # Wilson-Hilferty: the 99.9% quantile of chi-square with `dof` degrees of freedom
  return dof * (1 - 2 / (9 * dof) + 3.0902 * np.sqrt(2 / (9 * dof)))**3


@pytest.mark.parametrize("n", [1024, 1000])
def test_permutation_slice_is_the_permutations_slice(n):
  """SGD computes each minibatch's slice of the permutation on its own (power-of-two sizes: from its indices alone)."""
  key = jax.random.PRNGKey(3)
  whole = np.asarray(permutation.random_permutation(key, n))
  for start in (0, 200, n - 100):
    np.testing.assert_array_equal(permutation.permutation_slice(key, n, jnp.int32(start), 100), whole[start:start + 100])


def test_permutation_is_uniform():
  # All 24 orders of 4 elements, 12,000 draws: each count ~ Binomial(12000, 1/24) = 500 ± 22; chi-square(23).
  draws = jax.vmap(lambda k: permutation.random_permutation(k, 4))(jax.random.split(jax.random.PRNGKey(0), 12000))
  index = {p: i for i, p in enumerate(itertools.permutations(range(4)))}
  counts = np.bincount([index[tuple(d)] for d in np.asarray(draws)], minlength=24)
  chi2 = ((counts - 500.0)**2 / 500.0).sum()
  assert chi2 < 49.7  # the 99.9% quantile of chi-square with 23 degrees of freedom
  # Every element equally likely at every position, for sizes that are and are not powers of two.
  for n, draws in [(3, 6000), (8, 8000), (100, 10000), (1024, 20000)]:
    perms = np.asarray(jax.vmap(lambda k: permutation.random_permutation(k, n))(
        jax.random.split(jax.random.PRNGKey(n), draws)))
    counts = np.zeros((n, n))
    np.add.at(counts, (perms, np.broadcast_to(np.arange(n), perms.shape)), 1)
    chi2 = ((counts - draws / n)**2 / (draws / n)).sum()
    assert chi2 < _chi2_quantile_999((n - 1)**2), n
  # Positions are uncorrelated with the index in a large permutation, and keys differ per call.
  a, b = (np.asarray(permutation.random_permutation(jax.random.PRNGKey(s), 100_000)) for s in (1, 2))
  assert abs(np.corrcoef(a, np.arange(100_000))[0, 1]) < 0.02 and (a != b).mean() > 0.99


def test_permutation_minibatches_are_random_subsets():
  # A [T=16, N=256] batch in 4 minibatches (the SGD's use): over 400 epochs' keys, the time steps in a minibatch are
  # hypergeometric, and neighbours in time or across envs share a minibatch as often as any two samples (≈ 1/4):
  # a Feistel network whose halves (time step, env) did not mix would fail both.
  T, N, K, epochs = 16, 256, 4, 400
  perms = jax.vmap(lambda k: permutation.random_permutation(k, T * N))(jax.random.split(jax.random.PRNGKey(5), epochs))
  minibatch = np.empty((epochs, T * N), np.int64)
  np.put_along_axis(minibatch, np.asarray(perms), np.repeat(np.arange(K), T * N // K)[None], axis=1)
  minibatch = minibatch.reshape(epochs, T, N)
  per_step = np.stack([(minibatch == k).sum(2) for k in range(K)], 1)  # [epochs, K, T]
  expected = N / K
  M = T * N // K  # hypergeometric: M draws from T * N samples, N of them from step t
  var = M * N * (T * N - N) * (T * N - M) / ((T * N)**2 * (T * N - 1))
  chi2 = ((per_step - expected)**2 / var).sum()
  assert chi2 < _chi2_quantile_999(epochs * K * T), chi2
  same = (M - 1) / (T * N - 1)
  for shared in ((minibatch[:, 1:] == minibatch[:, :-1]).mean(), (minibatch[:, :, 1:] == minibatch[:, :, :-1]).mean()):
    assert abs(shared - same) < 0.01, shared


@pytest.mark.parametrize("features,inputs", [(64, 4), (2, 64), (1, 64), (64, 64)])
def test_thin_dense_matches_flax_dense(features, inputs):
  x = jax.random.normal(jax.random.PRNGKey(0), (5, 3, inputs))
  ours, ref = networks.Dense(features), nn.Dense(features)
  params = ours.init(jax.random.PRNGKey(1), x)
  assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, ref.init(jax.random.PRNGKey(1), x))
  np.testing.assert_allclose(ours.apply(params, x), ref.apply(params, x), rtol=1e-5, atol=1e-6)
  # The hand-written backward pass (networks.dense) gives autodiff's gradients for params and inputs, also per
  # example under vmap (the gradient noise diagnostics' reference computation).
  cotangent = jax.random.normal(jax.random.PRNGKey(2), (5, 3, features))
  loss = lambda module: lambda p, x: jnp.sum(jnp.sin(module.apply(p, x)) * cotangent)
  for argnums in (0, 1):
    got, want = (jax.grad(loss(m), argnums)(params, x) for m in (ours, ref))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), got, want)
  per_example = lambda m: jax.vmap(jax.grad(loss(m)), in_axes=(None, 0))(params, x)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), per_example(ours),
               per_example(ref))


@pytest.mark.parametrize("devices", [1, 8])
def test_batch_rows_round_trip_is_exact(devices):
  # Every leaf type a batch can hold, incl. int32 values a float conversion would round (2**24 + 1) or that are
  # denormals as float bits (small ints), on one device and split over 8 along the env axis (there XLA gathers
  # by a masked sum across devices): gathered rows unpack to exactly the leaves' elements at those indices.
  k = jax.random.split(jax.random.PRNGKey(0), 3)
  batch = {"obs": jax.random.normal(k[0], (6, 8, 2, 3)),
           "action": (jnp.arange(48, dtype=jnp.int32).reshape(6, 8) - 3) * (2**24 + 1),
           "small": jnp.arange(48, dtype=jnp.int32).reshape(6, 8) % 3,
           "flag": jax.random.bernoulli(k[1], 0.5, (6, 8, 17)).at[0].set(True),  # 2 columns, one all ones
           "half": jax.random.normal(k[2], (6, 8, 4)).astype(jnp.bfloat16), "u": jnp.full((6, 8), 2**32 - 1, jnp.uint32)}
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:devices]), ("data",))
  split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "data"))
  batch = jax.device_put(batch, split)
  idx = jnp.array([47, 0, 7, 7, 13, 30, 8, 41])
  rows = jax.jit(batch_rows.pack)(batch)
  assert rows.data.shape == (6, 8, 6 + 2 + 2 + 2 + 2 + 2) and rows.data.dtype == jnp.float32  # bf16: 2 a column, bools 16
  got = jax.jit(lambda r, i: batch_rows.unpack(r, batch_rows.take(r, i)))(rows, idx)
  for name, leaf in batch.items():
    want = np.asarray(leaf).reshape((48,) + leaf.shape[2:])[np.asarray(idx)]
    assert got[name].dtype == want.dtype and got[name].shape == want.shape
    np.testing.assert_array_equal(got[name], want, err_msg=name)
  with pytest.raises(TypeError, match="32-bit or narrower"):
    batch_rows.pack({"x": np.zeros((2, 2), np.float64)})


@pytest.fixture(scope="module")
def cartpole_batch():
  """A real [T=16, N=32] CartPole batch and the agent that collected it."""
  config = default.get_config()
  config.num_envs, config.num_steps = 32, 16
  resolved = config_lib.resolve(config, 1)
  agent = trainer.build_agent(config, resolved)
  state = iteration_lib.init_train_state(agent, jax.random.PRNGKey(0), 32)
  k = jax.random.split(jax.random.PRNGKey(1), 4)
  shape = (16, 32)
  batch = losses.Minibatch(obs=jax.random.normal(k[0], shape + (4,)), action=jax.random.bernoulli(
      k[1], 0.5, shape).astype(jnp.int32), log_prob=jnp.full(shape, -0.7), value=jax.random.normal(k[2], shape),
                           advantage=3.0 + 2.0 * jax.random.normal(k[3], shape), target=jnp.ones(shape))
  loss_fn = functools.partial(losses.ppo_loss, apply_fn=agent.apply, dist=agent.dist, clip_eps=0.2, vf_coef=0.5,
                              ent_coef=0.01)
  return state.params, batch, loss_fn


def test_advantage_stats_by_chunks_equal_the_minibatchs(cartpole_batch):
  """The minibatch's advantage mean and std, merged chunk by chunk, against float64 over the gathered minibatch."""
  _, batch, _ = cartpole_batch
  batch = batch.replace(advantage=1e3 + batch.advantage)  # a large mean: a one-pass E[x²] − E[x]² would lose it
  idx = permutation.random_permutation(jax.random.PRNGKey(2), 16 * 32)[:256]
  want = np.asarray(batch.advantage, np.float64).reshape(-1)[np.asarray(idx)]
  for chunk in (256, 64, 16):
    mean, std = jax.jit(sgd_chunks.advantage_stats)(batch_rows.pack(batch), idx.reshape(-1, chunk))
    np.testing.assert_allclose([mean, std], [want.mean(), want.std()], rtol=1e-5)


def test_chunked_gradient_equals_whole_minibatch_gradient(cartpole_batch):
  params, batch, loss_fn = cartpole_batch
  idx = permutation.random_permutation(jax.random.PRNGKey(2), 16 * 32)[:256]
  mb = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:])[idx], batch)
  (_, ref_aux), ref_grads = jax.value_and_grad(loss_fn, has_aux=True)(params, mb)  # the pre-chunking computation
  with jax.enable_x64(True):  # the loss values in float64: the policy loss, a mean of normalised advantages, is
    # ~1e-4 from cancellation, and float32 sums in any order miss it by a few 1e-7 (the one-pass mean by 2e-7)
    ref_aux = loss_fn(*jax.tree.map(lambda x: jnp.asarray(x, jnp.float64 if x.dtype == np.float32 else x.dtype),
                                    (params, mb)))[1]
  for chunk in (256, 64, 16):
    out = sgd_chunks.minibatch_grad(params, batch_rows.pack(batch), idx, loss_fn=loss_fn,
                                    chunk_size=chunk)
    assert isinstance(out, sgd_chunks.MinibatchGrad) and out.chunk_sq_norm is None
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7), out.grads, ref_grads)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=4e-7), out.aux, ref_aux)
  # With chunk norms: the same named result, the same gradient, plus the mean |chunk gradient|² by hand.
  normed = sgd_chunks.minibatch_grad(params, batch_rows.pack(batch), idx, loss_fn=loss_fn,
                                     chunk_size=16, chunk_sq_norms=True)
  assert type(normed) is type(out)
  jax.tree.map(np.testing.assert_array_equal, normed.grads, out.grads)
  stats = (mb.advantage.mean(), mb.advantage.std())
  chunk_grads = jax.jit(jax.vmap(jax.grad(lambda p, m: loss_fn(p, m, advantage_stats=stats)[0]), (None, 0)))(
      params, jax.tree.map(lambda x: x.reshape(16, 16, *x.shape[1:]), mb))
  sq = sum(np.sum(np.square(np.asarray(g, np.float64)).reshape(16, -1), 1) for g in jax.tree.leaves(chunk_grads))
  np.testing.assert_allclose(normed.chunk_sq_norm.sum(), sq.mean(), rtol=1e-4)  # the groups' sum: the whole
  # Advantages are normalised over the whole minibatch: a per-chunk normalisation would give another gradient.
  per_chunk = jax.tree.map(lambda x: x.reshape(16, 16, *x.shape[1:]), mb)
  wrong = jax.tree.map(lambda *g: sum(g) / 16, *[jax.grad(lambda p, m: loss_fn(p, m)[0])(
      params, jax.tree.map(lambda x, i=i: x[i], per_chunk)) for i in range(16)])
  assert not np.allclose(wrong["params"]["actor"]["Dense_1"]["kernel"],
                         ref_grads["params"]["actor"]["Dense_1"]["kernel"], rtol=1e-3)


def _one_update(chunk):
  config = debug.get_config()
  config.num_envs, config.num_steps, config.num_minibatches, config.sgd_chunk_size = 16, 16, 2, chunk
  progs = programs.build(config, resolved=config_lib.resolve(config, 1), eval_episodes=0)
  return progs.update(progs.init(jax.random.PRNGKey(0)))


def test_chunked_update_equals_unchunked_update():
  (whole, whole_metrics), (chunked, chunked_metrics) = _one_update(128), _one_update(16)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), chunked.params, whole.params)
  # The gradient noise diagnostics depend on the chunk size by design (it is their small batch); nothing else does.
  noise_keys = [f.name for f in dataclasses.fields(diagnostics.Diagnostics) if f.name.startswith("grad_")]
  strip = lambda m: m.replace(diagnostics=m.diagnostics.replace(**{k: 0.0 for k in noise_keys}))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), strip(chunked_metrics),
               strip(whole_metrics))


def test_cpu_update_compiles_without_ynnpack_fusions():
  x = jnp.ones((256, 4))
  params = networks.ActorCritic(distributions.Categorical(2)).init(jax.random.PRNGKey(0), x)
  f = jax.jit(lambda p, x: networks.ActorCritic(distributions.Categorical(2)).apply(p, x)[1].sum())
  assert "__ynn_fusion" in f.lower(params, x).compile().as_text()  # jaxlib's default; drop this line if it changes
  assert "__ynn_fusion" not in f.lower(params, x).compile(
      compiler_options=xla_options.compiler_options("cpu")).as_text()
  gpu = xla_options.compiler_options("gpu")
  assert gpu == {"xla_gpu_deterministic_ops": True} and xla_options.compiler_options("tpu") == {}
  f.lower(params, x).compile(compiler_options=gpu)  # XLA's debug options are shared: this jaxlib knows the name


def test_sgd_chunk_size_rules():
  config = default.get_config()  # 32 envs × 128 steps / 4 minibatches = 1024 samples per minibatch
  for value, expected in ((0, "must be a positive integer"), (3, "must divide the minibatch size 1024")):
    config.sgd_chunk_size = value
    assert config_lib.check(config, 1) == [f"config.sgd_chunk_size={value!r}: {expected}" + (
        " (or be at least as large)" if value == 3 else "")]
  config.sgd_chunk_size = 1 << 20  # larger than a minibatch: one chunk per minibatch ...
  config.diagnostics.enabled = False
  assert config_lib.resolve(config, 1).ppo.sgd_chunk_size == 1024
  config.diagnostics.enabled = True  # ... or two, for the gradient noise scale, when they still split over devices
  assert config_lib.resolve(config, 8).ppo.sgd_chunk_size == 512
  config.num_envs, config.num_minibatches = 8, 128  # minibatches of 8 samples on 8 devices: halves would not split
  assert config_lib.resolve(config, 8).ppo.sgd_chunk_size == 8
  config.sgd_chunk_size = 4
  assert config_lib.check(config, 8) == ["config.sgd_chunk_size=4: must be divisible by the 8 devices of the "
                                         "data axis"]


def test_first_metrics_line_times_the_first_update_apart(workdir):
  config = debug.get_config()
  config.log_every, config.eval_every = 1, 100
  config.total_env_steps = 3 * 8 * 16
  trainer.train_and_evaluate(config, workdir)
  rows = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  assert [r["update"] for r in rows] == [1, 2, 3]
  first = rows[0]
  assert first["compile_time"] > 0 and first["first_update_time"] > 0
  assert first["sps"] == pytest.approx(8 * 16 / first["first_update_time"])  # a line with only the first update
  assert all("compile_time" not in r and "first_update_time" not in r and r["sps"] > 0 for r in rows[1:])
