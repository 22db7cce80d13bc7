"""Each outer-loop diagnostic against a brute-force computation on a small batch; PPO-EWMA's weights and loss."""
import dataclasses
import itertools
import os
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from launch import trainer
from launch.configs import debug
from launch.sinks import read_jsonl
from learner import diagnostics, distributions, ewma, losses
from learner.state import TrainState
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
  noise = diagnostics.GradNoiseStats(mean_small_sq=jnp.array(3.0), big_sq=jnp.array(1.0), b_small=4, b_big=12)
  d = diagnostics.compute(old, new, obs, behaviour_head, value, target, noise, apply_fn=_linear,
                          dist=distributions.Categorical(A), kl_quantile=0.9, key=jax.random.PRNGKey(0))

  o, W0, W1 = np.asarray(obs, np.float64), np.asarray(old["W"], np.float64), np.asarray(new["W"], np.float64)
  kls = []
  for t, n in itertools.product(range(T), range(N)):
    lp, lq = o[t, n] @ W0, o[t, n] @ W1
    p, q = np.exp(lp) / np.exp(lp).sum(), np.exp(lq) / np.exp(lq).sum()
    kls.append(sum(p[a] * np.log(p[a] / q[a]) for a in range(A)))
  np.testing.assert_allclose(d.kl_mean, np.mean(kls), rtol=1e-4)
  np.testing.assert_allclose(d.kl_quantile, np.quantile(kls, 0.9), rtol=1e-4)
  np.testing.assert_allclose(d.samples_per_kl, T * N / np.mean(kls), rtol=1e-4)
  delta = np.concatenate([(np.asarray(new[k]) - np.asarray(old[k])).ravel() for k in ("W", "v")])
  np.testing.assert_allclose(d.update_norm, np.sqrt((delta**2).sum()), rtol=1e-5)
  v, y = np.asarray(value, np.float64).ravel(), np.asarray(target, np.float64).ravel()
  np.testing.assert_allclose(d.explained_variance, 1 - np.var(y - v) / np.var(y), rtol=1e-4)
  # |G|² = (12·1 − 4·3)/8 = 0, tr Σ = (3 − 1)/(1/4 − 1/12) = 12: the hand-worked two-batch-size equations.
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
  noise = diagnostics.GradNoiseStats(mean_small_sq=f32(), big_sq=f32(), b_small=4, b_big=12)

  def fn(old, new, obs, head, value, target, noise, key):
    return diagnostics.compute(old, new, obs, head, value, target, noise, apply_fn=_linear,
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
  result = sgd.sgd_epochs(w, optax.set_to_zero().init(w), batch, key, loss_fn=_mean_loss,
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
  got = diagnostics.noise_scale(noise)
  np.testing.assert_allclose(got, [g_sq, trace, trace / g_sq], rtol=1e-4)
  # Over random minibatch partitions the estimates are unbiased for the batch's own gradient statistics:
  # E[tr Σ] = the unbiased per-example covariance trace, E[|G|²] = |mean g|² − tr Σ / batch.
  keys = jax.random.split(jax.random.PRNGKey(7), 400)
  traces, sqs = jax.vmap(lambda k: diagnostics.noise_scale(_grad_noise(batch, k, K, b_small)[1])[1::-1])(keys)
  cov_trace = np.trace(np.cov(per_example.T, ddof=1))
  np.testing.assert_allclose(np.mean(traces), cov_trace, rtol=0.03)
  full = np.sum(per_example.mean(0)**2)
  np.testing.assert_allclose(np.mean(sqs), full - cov_trace / (T * N), rtol=0.03)


def test_sgd_results_are_named_whatever_the_options():
  """The SGD stage and a minibatch's gradient return one named pytree each, the same type whether or not the
  gradient noise is measured (not positional tuples whose length depends on a flag)."""
  w, batch = jnp.array([0.5, -1.0, 0.25], jnp.float32), _regression_batch()
  for track in (False, True):
    result = sgd.sgd_epochs(w, optax.set_to_zero().init(w), batch, jax.random.PRNGKey(0), loss_fn=_mean_loss,
                            optimizer=optax.set_to_zero(), update_epochs=1, num_minibatches=2, chunk_size=8,
                            track_grad_noise=track)
    assert type(result) is sgd.SGDResult
    assert [f.name for f in dataclasses.fields(result)] == ["params", "opt_state", "loss", "proximal", "grad_noise"]
    assert result.proximal is None and (type(result.grad_noise) is diagnostics.GradNoiseStats) == track
    out = sgd_chunks.minibatch_grad(w, batch_rows.pack(batch), batch.advantage, jnp.arange(16), loss_fn=_mean_loss,
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
  assert np.all(np.isnan(diagnostics.noise_scale(noise)))


def test_ewma_weights_by_hand(monkeypatch):
  from launch import config_lib  # pylint: disable=import-outside-toplevel
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
  """Debug runs: diagnostics on (default) and off with PPO-EWMA on."""
  out = {}
  for name, overrides in (("on", {}), ("off_ewma", {"diagnostics.enabled": False, "ewma.enabled": True})):
    config = debug.get_config()
    for k, v in overrides.items():
      group, key = k.split(".")
      config[group][key] = v
    workdir = str(tmp_path_factory.mktemp(name))
    trainer.train_and_evaluate(config, workdir)
    out[name] = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  return out


DIAGNOSTIC_KEYS = ("kl_mean", "kl_quantile", "update_norm", "grad_noise_scale", "grad_sq_norm", "grad_trace_cov",
                   "samples_per_kl", "explained_variance")


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
  return {"kl_mean": kl.mean(), "kl_quantile": np.quantile(kl, kl_quantile), "samples_per_kl": kl.size / kl.mean(),
          "update_norm": np.sqrt(sum((d**2).sum() for d in delta)), "explained_variance": 1 - np.var(y - v) / np.var(y)}


def test_diagnostics_of_real_updates_by_brute_force_and_in_metrics_jsonl(runs):
  """The debug run's first log interval replayed stage by stage: each update's diagnostics against a float64
  recomputation from its batch and params, and metrics.jsonl's row = their mean over the interval."""
  from launch import config_lib  # pylint: disable=import-outside-toplevel
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
    batch = advantage(out.traj, out.last_value)
    # The stored behaviour head is the rollout policy's: the params before this update.
    np.testing.assert_allclose(batch.behaviour_head, agent.apply(state.params, batch.obs)[0], rtol=1e-5, atol=1e-6)
    params, opt_state, proximal, aux = learn(state.params, state.opt_state, state.proximal, batch, sgd_key)
    d = aux.diagnostics
    for name, want in _brute_force_diagnostics(agent, state.params, params, batch, config.diagnostics.kl_quantile
                                               ).items():
      np.testing.assert_allclose(getattr(d, name), want, rtol=2e-3, err_msg=name)
    np.testing.assert_allclose(d.grad_noise_scale, d.grad_trace_cov / d.grad_sq_norm, rtol=1e-5)
    assert d.kl_mean > 0 and d.update_norm > 0
    per_update.append(d)
    state = state.replace(params=params, opt_state=opt_state, proximal=proximal, runner=out.runner, key=key,
                          update=state.update + 1)
  row = runs["on"][0]
  assert row["update"] == config.log_every
  for name in DIAGNOSTIC_KEYS:
    np.testing.assert_allclose(row[name], np.mean([float(getattr(d, name)) for d in per_update]), rtol=1e-3,
                               err_msg=name)
  for row in runs["off_ewma"]:
    assert not set(DIAGNOSTIC_KEYS) & set(row)
    assert np.isfinite(row["policy_loss"]) and np.isfinite(row["param_norm"])


def test_ewma_state_lives_in_train_state():
  from launch import config_lib, programs  # pylint: disable=import-outside-toplevel
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
  result = sgd.sgd_epochs(w0, optax.EmptyState(), _regression_batch(), jax.random.PRNGKey(0), loss_fn=loss,
                          optimizer=plus_one, update_epochs=2, num_minibatches=4, proximal=ewma.init(w0),
                          ewma_decay=decay)
  assert isinstance(result, sgd.SGDResult) and result.grad_noise is None  # not tracked
  params, proximal = result.params, result.proximal
  np.testing.assert_allclose(params, w0 + K)
  weights = decay**(K - np.arange(K + 1))
  np.testing.assert_allclose(proximal.params, w0 + weights @ np.arange(K + 1) / weights.sum(), rtol=1e-5)
  np.testing.assert_allclose(proximal.total_weight, weights.sum(), rtol=1e-5)
