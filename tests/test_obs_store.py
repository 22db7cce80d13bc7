"""obs_store=bfloat16: observations packed two per column bit for bit (also gathered over 8 devices), stored as the
policy saw them (PPO's ratio exactly 1 at the first minibatch), and the narrower row in the memory estimate."""
import dataclasses

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from launch.config import resolve as config_lib
from launch.run import memory, trainer
from launch.configs import debug, default
from learner import obs_store, policy as policy_lib
from pipeline import batch_rows, iteration, rollout

# bfloat16 bit patterns a pair must keep: ±0, the smallest and largest denormals, ±2^126 (the largest exponent field
# packing allows, 0xFD), the largest value below it, ordinary numbers.
SPECIAL = np.array([0x0000, 0x8000, 0x0001, 0x8001, 0x007F, 0x807F, 0x7E80, 0xFE80, 0x7E7F, 0x3F80, 0xBFC0, 0x0080,
                    0x4049], np.uint16)


def _bf16(bits):
  return np.asarray(bits, np.uint16).view(ml_dtypes.bfloat16)


def _bits(x):
  return np.asarray(x).view(np.uint32 if np.asarray(x).dtype.itemsize == 4 else np.uint16)


@pytest.fixture(scope="module")
def mixed_batch():
  """[T=6, N=8] leaves of every kind: bfloat16 with odd and even element counts (every special pattern at every
  position of a pair), float32, bool, int32."""
  rng = np.random.default_rng(0)
  odd = SPECIAL[rng.integers(0, len(SPECIAL), (6, 8, 5))]
  even = SPECIAL[rng.integers(0, len(SPECIAL), (6, 8, 2, 3))]
  return {"odd": _bf16(odd), "x": rng.normal(size=(6, 8, 3)).astype(np.float32), "even": _bf16(even),
          "mask": rng.random((6, 8, 20)) < 0.5, "index": rng.integers(-5, 2**20, (6, 8, 2)).astype(np.int32)}


def test_bfloat16_pairs_are_normal_floats(mixed_batch):
  rows = jax.jit(batch_rows.pack)(mixed_batch)
  assert rows.data.shape[-1] == 3 + 3 + 3 + 2 + 4  # bf16 5 -> 3 (padded), 6 -> 3; float32 3; bool 20 -> 2; int32 2 x 2
  offsets = {name: offset for name, (offset, _, _) in zip(rows.names, rows.columns)}
  data = np.asarray(rows.data)
  for name in ("['odd']", "['even']"):
    pairs = data[..., offsets[name]:offsets[name] + 3]
    # A pair without the exponent bias would be a denormal (e.g. +0 first) or a zero, which masked sums flush.
    assert np.isfinite(pairs).all() and (np.abs(pairs) >= np.finfo(np.float32).tiny).all(), name
  naive = (SPECIAL[:2].astype(np.uint32) << 16) | SPECIAL[2:4]  # (+0, denormal), (-0, denormal) unbiased
  assert not (np.abs(naive.view(np.float32)) >= np.finfo(np.float32).tiny).any()  # the bias is what the test checks


@pytest.mark.parametrize("devices", [1, 8])
def test_bfloat16_round_trip_is_bit_exact_also_gathered_over_devices(mixed_batch, devices):
  """Split over 8 devices along the env axis, XLA gathers rows by a masked sum across devices: the rows gathered
  there are the 1-device rows bit for bit, and unpack to exactly the leaves' elements."""
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:devices]), ("data",))
  batch = jax.device_put(mixed_batch, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "data")))
  idx = jnp.array([47, 0, 7, 7, 13, 30, 8, 41, 22, 5])
  rows = jax.jit(batch_rows.pack)(batch)
  gathered = jax.jit(batch_rows.take)(rows, idx)
  one_device = batch_rows.take(jax.jit(batch_rows.pack)(mixed_batch), idx)
  np.testing.assert_array_equal(_bits(gathered), _bits(one_device))
  got = jax.jit(batch_rows.unpack, static_argnums=())(rows, gathered)
  for name, leaf in mixed_batch.items():
    want = np.asarray(leaf).reshape((48,) + leaf.shape[2:])[np.asarray(idx)]
    assert got[name].dtype == want.dtype and got[name].shape == want.shape, name
    np.testing.assert_array_equal(_bits(got[name]) if want.dtype == ml_dtypes.bfloat16 else got[name],
                                  _bits(want) if want.dtype == ml_dtypes.bfloat16 else want, err_msg=name)


def test_narrow_clamps_rounds_and_keeps_other_leaves():
  obs = {"x": jnp.array([1.0 + 2.0**-10, -3e38, np.inf, 0.1], jnp.float32), "mask": jnp.array([True, False]),
         "i": jnp.array([7], jnp.int32)}
  out = obs_store.narrow(obs, "bfloat16")
  assert out["x"].dtype == jnp.bfloat16 and out["mask"].dtype == bool and out["i"].dtype == jnp.int32
  np.testing.assert_array_equal(np.asarray(out["x"], np.float32), [1.0, -2.0**126, 2.0**126, 0.10009765625])
  assert obs_store.narrow(obs, "float32") is obs and obs_store.view(obs, "float32") is obs
  assert obs_store.view(obs, "bfloat16")["x"].dtype == jnp.float32


@pytest.fixture(scope="module")
def narrow_run():
  """The debug config with obs_store=bfloat16, one epoch of one minibatch: its agent, settings and first state."""
  config = debug.get_config()
  config.obs_store, config.update_epochs, config.num_minibatches = "bfloat16", 1, 1
  resolved = config_lib.resolve(config, 1)
  agent = trainer.build_agent(config, resolved)
  state = iteration.init_train_state(agent, jax.random.PRNGKey(0), config.num_envs, resolved.ppo)
  return agent, resolved.ppo, state


def test_stored_observation_is_the_rounded_one_the_policy_acted_on(narrow_run):
  """The same rollout stored at float32 (the policy still seeing rounded observations): every column is the same,
  and the bfloat16 trajectory's observations are exactly the float32 one's rounded."""
  agent, ppo, state = narrow_run
  run = lambda store: jax.jit(lambda p, r, k: rollout.rollout(
      p, r, k, env=agent.env, apply_fn=agent.apply, value_fn=agent.value, dist=agent.dist, num_steps=ppo.num_steps,
      gamma=ppo.gamma, keep_head=True, obs_store=store))(state.params, state.runner, jax.random.PRNGKey(1))
  (_, narrow_rows, narrow_last, _), (_, wide_rows, wide_last, _) = run("bfloat16"), run("float32")
  narrow, wide = batch_rows.unpack_batch(narrow_rows), batch_rows.unpack_batch(wide_rows)
  assert narrow.obs.dtype == jnp.bfloat16 and wide.obs.dtype == jnp.float32
  assert narrow_rows.data.shape[-1] == wide_rows.data.shape[-1] - 2  # CartPole's 4 floats in 2 columns
  assert not np.array_equal(np.asarray(narrow.obs, np.float32), wide.obs)  # rounding is not a no-op here
  np.testing.assert_array_equal(_bits(narrow.obs), _bits(obs_store.narrow(wide.obs, "bfloat16")))
  for name in ("action", "log_prob", "value", "reward", "done", "head"):
    np.testing.assert_array_equal(getattr(narrow, name), getattr(wide, name), err_msg=name)
  np.testing.assert_array_equal(narrow_last, wide_last)


def test_ratio_is_exactly_one_at_the_first_minibatch(narrow_run):
  """One epoch of one minibatch: its loss is taken at the behaviour params, so approx_kl = mean((r - 1) - log r) is
  exactly 0 when the learner sees the observations the behaviour policy saw. The control, a rollout whose policy
  acted on (and stored) the unrounded observations, which the learner then sees rounded, is not."""
  agent, ppo, state = narrow_run

  def approx_kl(actor):
    stages, learn = iteration.make_stages(actor, ppo), iteration.make_stages(agent, ppo).learn
    out = jax.jit(stages.act)(state.params, state.runner, jax.random.PRNGKey(2))
    batch = jax.jit(stages.advantage)(out.traj, out.last_value)
    _, _, _, aux = jax.jit(learn)(state.params, state.opt_state, state.proximal, batch, jax.random.PRNGKey(3))
    return float(aux.loss.approx_kl)

  assert approx_kl(agent) == 0.0
  assert approx_kl(dataclasses.replace(agent, obs_store="float32")) > 1e-9


def test_bytes_per_transition():
  """CartPole's row: obs 4, action 1, log-prob, value, reward, done, behaviour head 2 = 11 floats (44 bytes); with
  obs_store=bfloat16 the 4 observation floats take 2 columns (36 bytes)."""
  sizes = {}
  for store in obs_store.STORES:
    config = default.get_config()
    config.obs_store = store
    sizes[store] = memory.per_transition(config, num_devices=1)
  assert sizes["float32"]["packed_row_bytes"] == 44 and sizes["bfloat16"]["packed_row_bytes"] == 36
  assert sizes["float32"]["per_transition_bytes"] - sizes["bfloat16"]["per_transition_bytes"] == 8


def test_exported_policy_rounds_as_in_training():
  """policy.json carries obs_store, and the loaded policy acts on rounded observations (a Gaussian's mean shows it)."""
  from envs import base  # pylint: disable=import-outside-toplevel
  spec = policy_lib.PolicySpec(hidden_sizes=(16,), activation="tanh", shared_trunk=False,
                               action_space=base.Box(low=(-1.0,), high=(1.0,), shape=(1,)), observation_shape=(4,),
                               obs_store="bfloat16")
  spec = policy_lib.PolicySpec.from_json(spec.to_json())
  assert spec.obs_store == "bfloat16"
  assert "obs_store" not in dataclasses.replace(spec, obs_store="float32").to_json()  # as files before the key
  obs = jax.random.normal(jax.random.PRNGKey(0), (64, 4))
  params = spec.model().init(jax.random.PRNGKey(1), obs)
  mean = lambda o: spec.dist.mode(spec.model().apply(params, o)[0])
  act = policy_lib.make_act(spec, params)(obs, None)
  np.testing.assert_array_equal(act, mean(obs_store.view(obs, "bfloat16")))
  assert not np.array_equal(act, mean(obs))


def test_config_key_and_resume_policy():
  from launch.checkpoint import compat  # pylint: disable=import-outside-toplevel
  config = debug.get_config()
  config.obs_store = "float16"
  with pytest.raises(config_lib.ConfigError, match="obs_store"):
    config_lib.resolve(config, 1)
  saved = compat.config_json(debug.get_config())
  del saved["obs_store"]  # a checkpoint written before the key: it ran at float32, and resumes at it
  compat.check_compatible(debug.get_config(), saved, "X")
  config.obs_store = "bfloat16"
  with pytest.raises(config_lib.ConfigError, match="config.obs_store='bfloat16' does not match 'float32'"):
    compat.check_compatible(config, saved, "X")
