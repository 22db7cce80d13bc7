"""Each outer-loop diagnostic against a brute-force computation on a small batch; PPO-EWMA's weights and loss."""
import dataclasses
import functools
import glob
import itertools
import json
import os
import re
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import envs
from launch.checkpoint import format as format_lib
from launch.report import plots as plot
from launch.run import trainer
from launch.configs import debug
from launch.report.metrics_file import read_jsonl
from learner import diagnostics, distributions, entity_network, ewma, losses, networks
from pipeline.train_state import TrainState
from pipeline import batch_rows, iteration, permutation, rollout, sgd, sgd_chunks



def _linear(params, obs):
  """A linear 'network': logits = obs @ W, value = obs @ v."""
  return obs @ params["W"], obs @ params["v"]


def test_categorical_kl_by_explicit_sums():
  rng = np.random.default_rng(0)
  p_logits, q_logits = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
  p = np.exp(p_logits) / np.exp(p_logits).sum(-1, keepdims=True)
  q = np.exp(q_logits) / np.exp(q_logits).sum(-1, keepdims=True)
  brute = [sum(p[i, a] * np.log(p[i, a] / q[i, a]) for a in range(4)) for i in range(5)]
  np.testing.assert_allclose(distributions.Categorical(4).kl(p_logits, q_logits), brute, rtol=1e-5)
  # Independent parts: KL over the joint (explicit sum over all 2 x 3 action pairs) = the sum of the parts' KLs.
  pl, ql = rng.normal(size=5), rng.normal(size=5)
  sm = lambda x: np.exp(x) / np.exp(x).sum()
  pj = [sm(pl[:2])[a] * sm(pl[2:])[b] for a, b in itertools.product(range(2), range(3))]
  qj = [sm(ql[:2])[a] * sm(ql[2:])[b] for a, b in itertools.product(range(2), range(3))]
  brute = sum(x * np.log(x / y) for x, y in zip(pj, qj))
  np.testing.assert_allclose(distributions.MultiCategorical((2, 3)).kl(pl, ql), brute, rtol=1e-5)


def test_gaussian_kl_by_numerical_integration():
  p, q = jnp.array([0.3, np.log(0.7)]), jnp.array([-0.5, np.log(1.6)])
  x = np.linspace(-12, 12, 200001)
  dens = lambda m, s: np.exp(-0.5 * ((x - m) / s)**2) / (s * np.sqrt(2 * np.pi))
  fp, fq = dens(0.3, 0.7), dens(-0.5, 1.6)
  brute = np.sum(fp * np.log(fp / fq)) * (x[1] - x[0])
  np.testing.assert_allclose(distributions.DiagGaussian(1).kl(p, q), brute, rtol=1e-4)


def test_update_diagnostics_against_brute_force():
  rng = np.random.default_rng(1)
  T, N, D, A = 3, 4, 5, 3
  obs = jnp.asarray(rng.normal(size=(T, N, D)), jnp.float32)
  old = {"W": jnp.asarray(rng.normal(size=(D, A)), jnp.float32), "v": jnp.asarray(rng.normal(size=D), jnp.float32)}
  new = jax.tree.map(lambda x: x + 0.3 * jnp.asarray(rng.normal(size=x.shape), jnp.float32), old)
  target = jnp.asarray(rng.normal(size=(T, N)), jnp.float32)
  behaviour_head, value = _linear(old, obs)
  # Per parameter group (policy, value, shared): squared norms of chunk (4 samples) and minibatch (12) gradients.
  noise = diagnostics.GradNoiseStats(mean_small_sq=jnp.array([1.0, 2.0, 0.0]), big_sq=jnp.array([0.5, 0.5, 0.0]),
                                     b_small=4, b_big=12)
  d = diagnostics.compute(old, new, (obs, behaviour_head), value, target, noise, apply_fn=_linear,
                          dist=distributions.Categorical(A), kl_quantile=0.9, key=jax.random.PRNGKey(0))

  o, W0, W1 = np.asarray(obs, np.float64), np.asarray(old["W"], np.float64), np.asarray(new["W"], np.float64)
  kls = []
  for t, n in itertools.product(range(T), range(N)):
    lp, lq = o[t, n] @ W0, o[t, n] @ W1
    p, q = np.exp(lp) / np.exp(lp).sum(), np.exp(lq) / np.exp(lq).sum()
    kls.append(sum(p[a] * np.log(p[a] / q[a]) for a in range(A)))
  np.testing.assert_allclose(d.kl_mean, np.mean(kls), rtol=1e-4)
  np.testing.assert_allclose(d.kl_quantile, np.quantile(kls, 0.9), rtol=1e-4)
  assert d.samples == T * N
  delta = np.concatenate([(np.asarray(new[k]) - np.asarray(old[k])).ravel() for k in ("W", "v")])
  np.testing.assert_allclose(d.update_norm, np.sqrt((delta**2).sum()), rtol=1e-5)
  v, y = np.asarray(value, np.float64).ravel(), np.asarray(target, np.float64).ravel()
  np.testing.assert_allclose(d.explained_variance, 1 - np.var(y - v) / np.var(y), rtol=1e-4)
  # |G|² = (12 big − 4 small)/8, tr Σ = (small − big)/(1/4 − 1/12): the hand-worked two-batch-size equations, per
  # group (policy 0.25 and 3, value −0.25 and 9) and for the whole gradient (their sums: 0 and 12).
  np.testing.assert_allclose([d.grad_sq_norm_policy, d.grad_trace_cov_policy], [0.25, 3.0], rtol=1e-6)
  np.testing.assert_allclose([d.grad_sq_norm_value, d.grad_trace_cov_value], [-0.25, 9.0], rtol=1e-6)
  np.testing.assert_allclose(d.grad_sq_norm, 0.0, atol=1e-6)
  np.testing.assert_allclose(d.grad_trace_cov, 12.0, rtol=1e-6)


def test_kl_quantile_exact_up_to_its_sample_size_and_close_beyond():
  rng, key = np.random.default_rng(0), jax.random.PRNGKey(0)
  x = rng.lognormal(size=4096).astype(np.float32)
  for n in (4096, 1000):  # no larger than the sample: the batch's own quantile
    np.testing.assert_allclose(diagnostics.sampled_quantile(jnp.asarray(x[:n]), 0.9, key, num_samples=4096),
                               np.quantile(x[:n], 0.9), rtol=1e-6)
  # 2^20 values, the default 65,536-sample estimate: its rank in the batch is 0.9 ± 0.0012 (one standard deviation).
  big = rng.lognormal(size=(64, 16384)).astype(np.float32)
  estimate = float(diagnostics.sampled_quantile(jnp.asarray(big), 0.9, key))
  assert abs(np.mean(big < estimate) - 0.9) < 0.005
  assert abs(estimate / np.quantile(big, 0.9) - 1) < 0.02
  # The draw is over the global index: the same states, so the same value, with the batch split over 8 devices.
  sharded = jax.device_put(big, NamedSharding(Mesh(jax.devices(), ("data",)), P(None, "data")))
  assert float(jax.jit(lambda x, k: diagnostics.sampled_quantile(x, 0.9, k))(sharded, key)) == estimate


def test_kl_quantile_cost_is_bounded_at_a_million_envs():
  """Lowered for 1,048,576 envs × 128 steps (shapes only): no sort of more than 65,536 values (the default sample)."""
  T, N, D, A = 128, 2**20, 5, 3
  f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
  params = {"W": f32(D, A), "v": f32(D)}
  noise = diagnostics.GradNoiseStats(mean_small_sq=f32(3), big_sq=f32(3), b_small=4, b_big=12)

  def fn(old, new, obs, head, value, target, noise, key):
    return diagnostics.compute(old, new, (obs, head), value, target, noise, apply_fn=_linear,
                               dist=distributions.Categorical(A), kl_quantile=0.9, key=key)

  text = jax.jit(fn).lower(params, params, f32(T, N, D), f32(T, N, A), f32(T, N), f32(T, N), noise,
                           jax.eval_shape(jax.random.PRNGKey, 0)).as_text()
  sorted_shapes = re.findall(r'"stablehlo\.sort"\(.*?\}\) : \(tensor<([0-9x]+)x', text, re.S)
  assert sorted_shapes, "the quantile should sort its sample"
  assert all(np.prod([int(d) for d in s.split("x")]) <= 65536 for s in sorted_shapes), sorted_shapes


def _regression_batch(T=4, N=8, D=3, seed=0):
  rng = np.random.default_rng(seed)
  z = lambda *s: jnp.zeros(s, jnp.float32)
  return losses.Minibatch(obs=jnp.asarray(rng.normal(size=(T, N, D)), jnp.float32), action=z(T, N), log_prob=z(T, N),
                          value=z(T, N), advantage=jnp.asarray(rng.normal(size=(T, N)) + 1.0, jnp.float32),
                          target=z(T, N))


def _example_loss(w, obs, y):
  return 0.5 * (obs @ w - y)**2


def _mean_loss(w, mb, **_):
  return jnp.mean(_example_loss(w, mb.obs, mb.advantage)), ()


def _grad_noise(batch, key, num_minibatches, chunk_size):
  """The SGD stage's B_simple inputs with the params held fixed (a zero optimizer)."""
  w = jnp.array([0.5, -1.0, 0.25], jnp.float32)
  result = sgd.sgd_epochs(w, optax.set_to_zero().init(w), batch_rows.pack(batch), key, loss_fn=_mean_loss,
                          optimizer=optax.set_to_zero(), update_epochs=2, num_minibatches=num_minibatches,
                          chunk_size=chunk_size, track_grad_noise=True)
  return w, result.grad_noise


def test_grad_noise_scale_from_explicit_per_example_gradients():
  batch, key, K, C = _regression_batch(), jax.random.PRNGKey(3), 4, 2  # 32 samples: 4 minibatches × 2 chunks of 4
  w, noise = _grad_noise(batch, key, K, 32 // K // C)
  T, N, D = batch.obs.shape
  per_example = np.asarray(jax.vmap(jax.grad(_example_loss), in_axes=(None, 0, 0))(
      w, batch.obs.reshape(T * N, D), batch.advantage.reshape(-1)), np.float64)
  # The first epoch's minibatches, each cut into consecutive chunks, as the SGD stage draws them.
  perm = np.asarray(permutation.random_permutation(jax.random.split(key, 2)[0], T * N)).reshape(K, C, -1)
  small = np.mean([np.sum(per_example[chunk].mean(0)**2) for minibatch in perm for chunk in minibatch])
  big = np.mean([np.sum(per_example[minibatch.reshape(-1)].mean(0)**2) for minibatch in perm])
  b_small, b_big = T * N // K // C, T * N // K
  assert (noise.b_small, noise.b_big) == (b_small, b_big)
  g_sq = (b_big * big - b_small * small) / (b_big - b_small)
  trace = (small - big) / (1 / b_small - 1 / b_big)
  got = [x.sum() for x in diagnostics.noise_estimates(noise)]  # a bare array: one group (shared)
  np.testing.assert_allclose(got, [g_sq, trace], rtol=1e-4)
  # Over random minibatch partitions the estimates are unbiased for the batch's own gradient statistics:
  # E[tr Σ] = the unbiased per-example covariance trace, E[|G|²] = |mean g|² − tr Σ / batch.
  keys = jax.random.split(jax.random.PRNGKey(7), 400)
  sqs, traces = jax.vmap(lambda k: [x.sum() for x in diagnostics.noise_estimates(_grad_noise(batch, k, K, b_small)[1])]
                         )(keys)
  cov_trace = np.trace(np.cov(per_example.T, ddof=1))
  np.testing.assert_allclose(np.mean(traces), cov_trace, rtol=0.03)
  full = np.sum(per_example.mean(0)**2)
  np.testing.assert_allclose(np.mean(sqs), full - cov_trace / (T * N), rtol=0.03)


def test_sgd_results_are_named_whatever_the_options():
  """The SGD stage and a minibatch's gradient return one named pytree each, the same type whether or not the
  gradient noise is measured (not positional tuples whose length depends on a flag)."""
  w, batch = jnp.array([0.5, -1.0, 0.25], jnp.float32), _regression_batch()
  for track in (False, True):
    result = sgd.sgd_epochs(w, optax.set_to_zero().init(w), batch_rows.pack(batch), jax.random.PRNGKey(0), loss_fn=_mean_loss,
                            optimizer=optax.set_to_zero(), update_epochs=1, num_minibatches=2, chunk_size=8,
                            track_grad_noise=track)
    assert type(result) is sgd.SGDResult
    assert [f.name for f in dataclasses.fields(result)] == ["params", "opt_state", "loss", "proximal", "grad_noise"]
    assert result.proximal is None and (type(result.grad_noise) is diagnostics.GradNoiseStats) == track
    out = sgd_chunks.minibatch_grad(w, batch_rows.pack(batch), jnp.arange(16), loss_fn=_mean_loss,
                                    chunk_size=8, chunk_sq_norms=track)
    assert type(out) is sgd_chunks.MinibatchGrad and (out.chunk_sq_norm is None) != track
  # The state's and the metrics' optional parts are typed as what they hold (resolvable annotations, no Any).
  hint = lambda cls, name, **names: eval(cls.__annotations__[name], vars(sys.modules[cls.__module__]), names)  # pylint: disable=eval-used
  assert hint(TrainState, "runner", RunnerState=rollout.RunnerState) is rollout.RunnerState
  assert hint(TrainState, "proximal") == hint(sgd.SGDResult, "proximal") == ewma.EWMAState | None
  for cls in (iteration.UpdateMetrics, iteration.LearnAux):
    assert hint(cls, "diagnostics") == diagnostics.Diagnostics | None
  assert hint(sgd.SGDResult, "grad_noise") == diagnostics.GradNoiseStats | None


def test_grad_noise_undefined_with_one_chunk():
  _, noise = _grad_noise(_regression_batch(), jax.random.PRNGKey(0), 4, None)
  assert np.all(np.isnan(diagnostics.noise_estimates(noise)))


def _ppo_batch(T=4, N=8, seed=0):
  rng = np.random.default_rng(seed)
  f = lambda x: jnp.asarray(x, jnp.float32)
  return losses.Minibatch(obs=f(rng.normal(size=(T, N, 4))), action=jnp.asarray(rng.integers(0, 2, (T, N)), jnp.int32),
                          log_prob=f(np.log(rng.uniform(0.3, 0.7, (T, N)))), value=f(rng.normal(size=(T, N))),
                          advantage=f(rng.normal(size=(T, N)) + 0.5), target=f(rng.normal(size=(T, N))))


def test_policy_and_value_noise_from_per_example_gradients():
  """The SGD stage splits the total loss's chunk and minibatch gradients by parameter group; the policy's and the
  critic's estimates equal the two-batch-size estimates from explicit per-example gradients of the policy objective
  alone (surrogate + entropy bonus) and of the value loss alone."""
  dist, vf_coef, ent_coef = distributions.Categorical(2), 0.5, 0.01
  model = networks.ActorCritic(dist, (8, 8))
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4)))
  loss_fn = functools.partial(losses.ppo_loss, apply_fn=model.apply, dist=dist, clip_eps=0.2, vf_coef=vf_coef,
                              ent_coef=ent_coef)
  batch, key, K, C = _ppo_batch(), jax.random.PRNGKey(5), 2, 4  # 32 samples: 2 minibatches × 4 chunks of 4
  result = sgd.sgd_epochs(params, optax.set_to_zero().init(params), batch_rows.pack(batch), key, loss_fn=loss_fn,
                          optimizer=optax.set_to_zero(), update_epochs=1, num_minibatches=K, chunk_size=32 // K // C,
                          track_grad_noise=True)
  g_sq, trace = (np.asarray(x, np.float64) for x in diagnostics.noise_estimates(result.grad_noise))

  flat = jax.tree.map(lambda x: x.reshape((32,) + x.shape[2:]), batch)
  objectives = {"policy": lambda aux: aux.policy_loss - ent_coef * aux.entropy,
                "value": lambda aux: vf_coef * aux.value_loss}

  def per_example(objective, idx, stats):  # [M, all params]: each sample's gradient with its minibatch's statistics
    one = jax.tree.map(lambda x: x[idx][:, None], flat)
    grads = jax.vmap(lambda ex: jax.grad(lambda p: objective(loss_fn(p, ex, advantage_stats=stats)[1]))(params))(one)
    return np.concatenate([np.asarray(g, np.float64).reshape(len(idx), -1) for g in jax.tree.leaves(grads)], 1)

  perm = np.asarray(permutation.random_permutation(jax.random.split(key, 1)[0], 32)).reshape(K, C, -1)
  b_small, b_big = 32 // K // C, 32 // K
  for group, objective in objectives.items():
    small, big = [], []
    for minibatch in perm:
      adv = flat.advantage[minibatch.reshape(-1)]
      g = per_example(objective, minibatch.reshape(-1), (adv.mean(), adv.std())).reshape(C, b_small, -1)
      small += [np.sum(chunk.mean(0)**2) for chunk in g]
      big.append(np.sum(g.reshape(b_big, -1).mean(0)**2))
    small, big = np.mean(small), np.mean(big)
    want = [(b_big * big - b_small * small) / (b_big - b_small), (small - big) / (1 / b_small - 1 / b_big)]
    i = networks.PARAM_GROUPS.index(group)
    np.testing.assert_allclose([g_sq[i], trace[i]], want, rtol=2e-3, atol=1e-4 * small, err_msg=group)
    assert want[1] > 0
  assert g_sq[2] == trace[2] == 0  # separate trunks: no shared params


def test_param_groups_follow_what_each_output_depends_on():
  """A leaf is a policy param when only the policy head depends on it, a value param when only the value does, and
  shared when both do (a shared trunk, the entity encoder): per leaf, by the gradients of each output alone."""
  obs = jax.random.normal(jax.random.PRNGKey(0), (6, 4))
  env = envs.make("cue_entities")
  entity_obs = jax.vmap(env.reset)(jax.random.split(jax.random.PRNGKey(0), 6))[1]
  cases = [(networks.ActorCritic(distributions.Categorical(2), (8, 8)), obs, {0, 1}),
           (networks.ActorCritic(distributions.DiagGaussian(2), (8,)), obs, {0, 1}),  # + log_std
           (networks.ActorCritic(distributions.Categorical(2), (8, 8), shared_trunk=True), obs, {0, 1, 2}),
           (entity_network.EntityActorCritic(distributions.for_action_space(env.action_space), hidden_sizes=(8,),
                                             width=8, layers=1, heads=2, qkv_features=4), entity_obs, {0, 1, 2})]
  for model, x, groups_present in cases:
    params = model.init(jax.random.PRNGKey(1), x)
    head, value = (jax.grad(lambda p, i=i: model.apply(p, x)[i].sum())(params) for i in (0, 1))
    groups = networks.param_groups(params)
    assert set(groups) == groups_present, type(model).__name__
    for group, h, v in zip(groups, jax.tree.leaves(head), jax.tree.leaves(value)):
      uses = (bool(np.any(h != 0)), bool(np.any(v != 0)))
      assert uses in ({0: (True, False), 1: (False, True), 2: (True, True)}[group], (False, False)), (group, uses)


def _interval(**fields):
  """The per-update Diagnostics of a hand-made interval (host arrays): the given fields, every other one 1."""
  n = len(next(iter(fields.values())))
  return diagnostics.Diagnostics(**{f.name: np.asarray(fields.get(f.name, [1.0] * n), np.float32)
                                    for f in dataclasses.fields(diagnostics.Diagnostics)})


def test_metrics_row_takes_ratios_of_the_intervals_means():
  # Late in a run the |G|² estimates of single updates straddle 0; the mean of their ratios is then a negative
  # "noise scale" (how the default CartPole run once ended at grad_noise_scale = -4443); the ratio of means is not.
  g_sq, trace = [0.003, -0.0005, 0.002], [9.0, 6.0, 9.0]
  assert np.mean(np.divide(trace, g_sq)) == pytest.approx(-1500)
  row = diagnostics.summarize(_interval(
      grad_sq_norm=g_sq, grad_trace_cov=trace, grad_sq_norm_policy=[0.4, -0.1, 0.3], grad_trace_cov_policy=[2, 3, 4],
      grad_sq_norm_value=[-0.01, 0.002, 0.002], grad_trace_cov_value=[7, 8, 9], kl_mean=[0.0, 0.02, 0.01],
      samples=[4096] * 3, explained_variance=[0.5, np.nan, 0.7]))
  assert row["grad_noise_scale"] == pytest.approx(8.0 / 0.0015, rel=1e-5)
  assert row["grad_noise_scale_policy"] == pytest.approx(3.0 / 0.2, rel=1e-5)
  assert row["grad_sq_norm_value"] == pytest.approx(-0.002, rel=1e-4)  # the estimate itself is kept, ...
  assert row["grad_noise_scale_value"] is None  # ... its ratio is undefined: no gradient signal measured
  # Batch over the interval's mean KL; one update with KL 0 read through the old 1e-30 clamp averaged to 1.4e33.
  assert row["samples_per_kl"] == pytest.approx(4096 / 0.01, rel=1e-5)
  assert row["explained_variance"] is None and "samples" not in row  # unknown in one update: unknown
  assert set(row) == ({f.name for f in dataclasses.fields(diagnostics.Diagnostics)} - {"samples"}
                      | set(diagnostics.ROW_RATIOS))
  json.dumps(row, allow_nan=False)  # JSON null, not NaN
  row = diagnostics.summarize(_interval(grad_sq_norm=[-1.0, 1.0], grad_trace_cov=[5.0, 5.0], kl_mean=[0.0, 0.0],
                                        grad_trace_cov_policy=[-2.0, 1.0]))
  assert row["grad_sq_norm"] == 0.0 and row["grad_noise_scale"] is None and row["samples_per_kl"] is None
  assert row["grad_noise_scale_policy"] is None  # a negative tr Σ estimate: no noise measured
  assert row["grad_noise_scale_value"] == 1.0  # the other fields' 1 / 1


def test_ewma_weights_by_hand(monkeypatch):
  from launch.config import resolve as config_lib  # pylint: disable=import-outside-toplevel
  decay = ewma.decay_from_center_of_mass(3.0)
  assert decay == 0.75
  config = debug.get_config()
  config.ewma.enabled, config.ewma.center_of_mass = True, 3.0
  assert config_lib.resolve(config, 1).ppo.ewma_decay == decay
  monkeypatch.setattr(ewma, "decay_from_center_of_mass", lambda com: 0.5)  # the run's decay comes from this function
  assert config_lib.resolve(config, 1).ppo.ewma_decay == 0.5
  ages = np.arange(10000)
  np.testing.assert_allclose(np.sum(ages * (1 - decay) * decay**ages), 3.0)  # the mean age is the centre of mass
  history = [{"a": jnp.array([float(i), -float(i)]), "b": jnp.array(float(i)**2)} for i in (1, 2, 5, 7)]
  state = ewma.init(history[0])
  for p in history[1:]:
    state = ewma.update(state, p, decay)
  w = np.array([0.75**3, 0.75**2, 0.75, 1.0])  # the newest params weigh 1, each older one 0.75 times less
  np.testing.assert_allclose(state.total_weight, w.sum(), rtol=1e-6)
  np.testing.assert_allclose(state.params["a"], [w @ [1, 2, 5, 7] / w.sum(), -(w @ [1, 2, 5, 7]) / w.sum()],
                             rtol=1e-6)
  np.testing.assert_allclose(state.params["b"], w @ [1, 4, 25, 49] / w.sum(), rtol=1e-6)
  np.testing.assert_allclose(ewma.update(state, history[0], 0.0).params["b"], 1.0)  # decay 0: the current params


def test_decoupled_loss_by_hand():
  apply = lambda p, obs: (p["logits"], p["values"])
  behaviour = np.array([[0.5, 0.5], [0.2, 0.8], [0.9, 0.1], [0.5, 0.5]])
  prox = np.array([[0.6, 0.4], [0.3, 0.7], [0.8, 0.2], [0.5, 0.5]])
  current = np.array([[0.9, 0.1], [0.25, 0.75], [0.6, 0.4], [0.3, 0.7]])
  action, adv = np.array([0, 1, 0, 1]), np.array([1.0, -1.0, 2.0, 0.5])
  mb = losses.Minibatch(obs=jnp.zeros((4, 1)), action=jnp.asarray(action, jnp.int32),
                        log_prob=jnp.log(behaviour[np.arange(4), action]), value=jnp.zeros(4),
                        advantage=jnp.asarray(adv), target=jnp.zeros(4))
  params = lambda probs: {"logits": jnp.log(jnp.asarray(probs, jnp.float32)), "values": jnp.zeros(4)}
  _, aux = losses.ppo_loss(params(current), mb, apply_fn=apply, dist=distributions.Categorical(2), clip_eps=0.2,
                           vf_coef=0.5, ent_coef=0.0, proximal_params=params(prox))
  pick = lambda probs: probs[np.arange(4), action]
  weight, r = pick(prox) / pick(behaviour), pick(current) / pick(prox)
  a = (adv - adv.mean()) / (adv.std() + 1e-8)
  np.testing.assert_allclose(aux.policy_loss, -np.mean(weight * np.minimum(r * a, np.clip(r, 0.8, 1.2) * a)),
                             rtol=1e-5)
  np.testing.assert_allclose(aux.clip_fraction, np.mean(np.abs(r - 1) > 0.2))
  # With the behaviour policy as the proximal one it is PPO's loss.
  standard = losses.ppo_loss(params(current), mb, apply_fn=apply, dist=distributions.Categorical(2), clip_eps=0.2,
                             vf_coef=0.5, ent_coef=0.0)[0]
  decoupled = losses.ppo_loss(params(current), mb, apply_fn=apply, dist=distributions.Categorical(2), clip_eps=0.2,
                              vf_coef=0.5, ent_coef=0.0, proximal_params=params(behaviour))[0]
  np.testing.assert_allclose(decoupled, standard, rtol=1e-6)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Debug runs: diagnostics on (default) and off with PPO-EWMA on; name -> rows, and "workdirs": name -> workdir."""
  out = {"workdirs": {}}
  for name, overrides in (("on", {}), ("off_ewma", {"diagnostics.enabled": False, "ewma.enabled": True})):
    config = debug.get_config()
    for k, v in overrides.items():
      group, key = k.split(".")
      config[group][key] = v
    workdir = str(tmp_path_factory.mktemp(name))
    trainer.train_and_evaluate(config, workdir)
    out[name] = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    out["workdirs"][name] = workdir
  return out


MEAN_KEYS = ("kl_mean", "kl_quantile", "update_norm", "grad_sq_norm", "grad_trace_cov", "grad_sq_norm_policy",
             "grad_trace_cov_policy", "grad_sq_norm_value", "grad_trace_cov_value", "explained_variance")
RATIO_KEYS = {"grad_noise_scale": ("grad_trace_cov", "grad_sq_norm"),
              "grad_noise_scale_policy": ("grad_trace_cov_policy", "grad_sq_norm_policy"),
              "grad_noise_scale_value": ("grad_trace_cov_value", "grad_sq_norm_value"),
              "samples_per_kl": ("samples", "kl_mean")}
DIAGNOSTIC_KEYS = MEAN_KEYS + tuple(RATIO_KEYS)


def _brute_force_diagnostics(agent, old_params, new_params, batch: losses.Minibatch, kl_quantile: float):
  """The KL, update-size and critic diagnostics of one update from its batch, in float64 numpy."""
  p_logits = np.asarray(batch.behaviour_head, np.float64)
  q_logits = np.asarray(agent.apply(new_params, batch.obs)[0], np.float64)
  log_p = p_logits - np.log(np.exp(p_logits).sum(-1, keepdims=True))
  log_q = q_logits - np.log(np.exp(q_logits).sum(-1, keepdims=True))
  kl = (np.exp(log_p) * (log_p - log_q)).sum(-1).ravel()
  delta = [np.asarray(a, np.float64) - np.asarray(b, np.float64)
           for a, b in zip(jax.tree.leaves(new_params), jax.tree.leaves(old_params))]
  v, y = np.asarray(batch.value, np.float64).ravel(), np.asarray(batch.target, np.float64).ravel()
  return {"kl_mean": kl.mean(), "kl_quantile": np.quantile(kl, kl_quantile), "samples": kl.size,
          "update_norm": np.sqrt(sum((d**2).sum() for d in delta)), "explained_variance": 1 - np.var(y - v) / np.var(y)}


def test_diagnostics_of_real_updates_by_brute_force_and_in_metrics_jsonl(runs):
  """The debug run's first log interval replayed stage by stage: each update's diagnostics against a float64
  recomputation from its batch and params; metrics.jsonl's row holds their means over the interval and the ratios of
  those means (null where a mean |G|² or KL is not positive), as strict JSON."""
  from launch.config import resolve as config_lib  # pylint: disable=import-outside-toplevel
  config = debug.get_config()
  resolved = config_lib.resolve(config, 1)
  agent = trainer.build_agent(config, resolved)
  stages = iteration.make_stages(agent, resolved.ppo)
  act, advantage, learn = jax.jit(stages.act), jax.jit(stages.advantage), jax.jit(stages.learn)
  state = iteration.init_train_state(agent, jax.random.split(jax.random.PRNGKey(config.seed))[0], config.num_envs,
                                     resolved.ppo)
  per_update = []
  for _ in range(config.log_every):
    key, rollout_key, sgd_key = iteration.split_update_key(state.key)
    out = act(state.params, state.runner, rollout_key)
    rows = advantage(out.traj, out.last_value)
    batch = batch_rows.unpack_batch(rows)
    # The stored behaviour head is the rollout policy's: the params before this update.
    np.testing.assert_allclose(batch.behaviour_head, agent.apply(state.params, batch.obs)[0], rtol=1e-5, atol=1e-6)
    params, opt_state, proximal, aux = learn(state.params, state.opt_state, state.proximal, rows, sgd_key)
    d = aux.diagnostics
    for name, want in _brute_force_diagnostics(agent, state.params, params, batch, config.diagnostics.kl_quantile
                                               ).items():
      # atol: a per-state KL (≈ 1e-5 here) is a sum of differences of float32 log-probabilities, so its float
      # error is absolute (≈ 1e-8 per state), not relative to its small value.
      np.testing.assert_allclose(getattr(d, name), want, rtol=2e-3, atol=1e-7, err_msg=name)
    np.testing.assert_allclose(d.grad_sq_norm, d.grad_sq_norm_policy + d.grad_sq_norm_value, rtol=1e-4, atol=1e-7)
    assert d.kl_mean > 0 and d.update_norm > 0
    per_update.append(d)
    state = state.replace(params=params, opt_state=opt_state, proximal=proximal, runner=out.runner, key=key,
                          update=state.update + 1)
  row = runs["on"][0]
  assert row["update"] == config.log_every
  mean = lambda name: np.mean([float(getattr(d, name)) for d in per_update])
  for name in MEAN_KEYS:
    np.testing.assert_allclose(row[name], mean(name), rtol=1e-3, atol=1e-7, err_msg=name)
  for name, (num, den) in RATIO_KEYS.items():
    if mean(den) > 0:
      np.testing.assert_allclose(row[name], mean(num) / mean(den), rtol=2e-3, err_msg=name)
    else:
      assert row[name] is None, name
  workdir = runs["workdirs"]["on"]
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    strict = [json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} in metrics.jsonl")) for line in f]
  for row in strict:
    assert all(row[k] is None or row[k] > 0 for k in RATIO_KEYS), row
  for row in runs["off_ewma"]:
    assert not set(DIAGNOSTIC_KEYS) & set(row)
    assert np.isfinite(row["policy_loss"]) and np.isfinite(row["param_norm"])


def test_diagnostics_figure_at_the_end_of_a_run_and_with_seed_bands(runs, tmp_path):
  """A run ends with DIR/diagnostics.png; the figure has the six panels, each drawn from the rows that have values;
  runs whose saved configs differ only in the seed are one mean line with a band, other runs their own line."""
  on, off = runs["workdirs"]["on"], runs["workdirs"]["off_ewma"]
  with open(os.path.join(on, "diagnostics.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  titles = ["return", "KL per update", "samples per unit KL", "gradient noise scale", "clip fraction", "entropy"]
  fig = plot.diagnostics_figure([on])
  assert [ax.get_title() for ax in fig.axes] == titles == [p[0] for p in plot.DIAGNOSTIC_PANELS]
  for ax, (_, _, log, series) in zip(fig.axes, plot.DIAGNOSTIC_PANELS):
    with_values = [k for k, _, _ in series
                   if any(r.get(k) is not None and (r[k] > 0 or not log) for r in runs["on"])]
    assert len(ax.lines) == len(with_values) and not ax.collections, ax.get_title()  # nulls skipped, no band
  assert len(fig.axes[0].lines) == 2 and len(fig.axes[1].lines) == 2  # returns and KL have values in every run
  # A second seed of the same config (its saved config edited, its returns shifted) and a run of another config.
  seed = str(tmp_path / "seed2")
  shutil.copytree(on, seed)
  for host in glob.glob(f"{seed}/checkpoints/*/host/metadata"):
    with open(host, encoding="utf-8") as f:
      record = json.load(f)
    record["config"]["seed"] += 1
    with open(host, "w", encoding="utf-8") as f:
      json.dump(format_lib.seal({k: v for k, v in record.items() if k != format_lib.CHECKSUM}), f)  # checked
  rows = [{**r, "episode_return": r["episode_return"] and r["episode_return"] + 5.0} for r in runs["on"]]
  with open(f"{seed}/metrics.jsonl", "w", encoding="utf-8") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  assert plot.seed_groups([on, off, seed]) == [[on, seed], [off]]
  fig = plot.diagnostics_figure([on, off, seed])
  returns, kl = fig.axes[0], fig.axes[1]
  assert len(returns.collections) == 2 and len(returns.lines) == 4  # a band each for training and evaluation
  assert any("(2 seeds)" in line.get_label() for line in returns.lines)
  assert len(kl.lines) == 2  # the run without diagnostics has no KL to draw
  np.testing.assert_allclose(returns.lines[0].get_ydata(),  # the seeds' mean; a gap where no episode ended
                             [np.nan if r["episode_return"] is None else r["episode_return"] + 2.5 for r in runs["on"]])
  out = plot.plot_diagnostics([on, seed], str(tmp_path / "both.png"))
  assert os.path.getsize(out) > 1000


def test_ewma_state_lives_in_train_state():
  from launch.config import resolve as config_lib  # pylint: disable=import-outside-toplevel
  from launch.run import programs
  from pipeline import iteration  # pylint: disable=import-outside-toplevel
  config = debug.get_config()
  config.ewma.enabled, config.ewma.center_of_mass = True, 0.0  # decay 0: the proximal params are the params
  progs = programs.build(config, resolved=config_lib.resolve(config, 1), eval_episodes=0)
  state = progs.init(jax.random.PRNGKey(0))
  assert iteration.init_train_state(progs.agent, jax.random.PRNGKey(0), config.num_envs).proximal is None
  initial = jax.device_get(state.params)  # the update donates its input
  new_state, _ = progs.update(state)
  assert not np.allclose(jax.tree.leaves(new_state.params)[0], jax.tree.leaves(initial)[0])
  for a, b in zip(jax.tree.leaves(new_state.proximal.params), jax.tree.leaves(new_state.params)):
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_sgd_advances_ewma_after_every_optimizer_step():
  # An "optimizer" that adds 1 to every param per step: after step s the params are w0 + s, so the EWMA over the
  # K = epochs x minibatches steps is sum_s d^(K-s) (w0 + s) / sum_s d^(K-s), s = 0..K (w0 counted at init).
  plus_one = optax.GradientTransformation(lambda p: optax.EmptyState(),
                                          lambda g, s, p=None: (jax.tree.map(jnp.ones_like, g), s))
  w0, decay, K = jnp.array([0.5, -1.0, 0.25], jnp.float32), 0.6, 2 * 4
  loss = lambda w, mb, proximal_params=None, **_: _mean_loss(w, mb)
  result = sgd.sgd_epochs(w0, optax.EmptyState(), batch_rows.pack(_regression_batch()), jax.random.PRNGKey(0), loss_fn=loss,
                          optimizer=plus_one, update_epochs=2, num_minibatches=4, proximal=ewma.init(w0),
                          ewma_decay=decay)
  assert isinstance(result, sgd.SGDResult) and result.grad_noise is None  # not tracked
  params, proximal = result.params, result.proximal
  np.testing.assert_allclose(params, w0 + K)
  weights = decay**(K - np.arange(K + 1))
  np.testing.assert_allclose(proximal.params, w0 + weights @ np.arange(K + 1) / weights.sum(), rtol=1e-5)
  np.testing.assert_allclose(proximal.total_weight, weights.sum(), rtol=1e-5)


def test_a_resized_run_is_marked_in_every_panel(runs, tmp_path):
  """Rows record num_envs; a change between rows is a dashed line "N a→b" at the first row at the new size, in the
  diagnostics figure's panels and the learning curves."""
  on = runs["workdirs"]["on"]
  assert all(r["num_envs"] == runs["on"][0]["num_envs"] for r in runs["on"])  # the trainer's rows carry it
  grown = str(tmp_path / "grown")
  shutil.copytree(on, grown)
  half = len(runs["on"]) // 2
  rows = [{**r, "num_envs": 8 if i < half else 32} for i, r in enumerate(runs["on"])]
  with open(f"{grown}/metrics.jsonl", "w", encoding="utf-8") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  at = rows[half]["env_steps"]
  assert plot.resizes(rows) == [(at, 8, 32)] and plot.resizes(runs["on"]) == []
  fig = plot.diagnostics_figure([grown])
  for ax in fig.axes:
    marks = [line for line in ax.lines if line.get_linestyle() == "--" and list(line.get_xdata()) == [at, at]]
    assert len(marks) == 1 and any(t.get_text() == "N 8→32" for t in ax.texts), ax.get_title()
  out = plot.plot_runs([grown], str(tmp_path / "curves.png"))
  assert os.path.getsize(out) > 1000
