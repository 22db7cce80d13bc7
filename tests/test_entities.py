"""Pytree (entity) observations end to end, on `cue_entities` (envs/entities.py, pure JAX: no kinetix-env needed).

The entity network's symmetries (slot permutations, masked slots), exact int/bool packing of observation leaves,
the same training on 1 and 8 devices with a reset pool on, an exact resume, and the config rules.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from envs import entities
from launch import checkpoint, export
from launch.checkpoint import saved_run
from launch.config import resolve as config_lib
from launch.run import programs
from launch.configs import debug
from learner import distributions, entity_network, policy as policy_lib
from pipeline import batch_rows, dataflow


def _config(**overrides):
  config = debug.get_config()
  config.env_name = "cue_entities"
  config.network.kind = "entity"
  config.network.hidden_sizes = (16,)
  config.network.entity_width, config.network.entity_layers = 16, 1
  config.network.entity_heads, config.network.entity_qkv = 4, 8
  config.reset_pool.size, config.reset_pool.refresh = 8, 2
  config.total_env_steps = 8 * 16 * 4
  config.update_from_flattened_dict(overrides)  # "a.b" keys, type-checked as assignments
  return config


@pytest.fixture(scope="module")
def net():
  env = envs.make("cue_entities")
  # Jitted: run op by op, the network's init and apply took most of this file's time outside the `built` programs.
  obs = jax.jit(jax.vmap(env.reset))(jax.random.split(jax.random.PRNGKey(0), 6))[1]
  model = entity_network.EntityActorCritic(distributions.for_action_space(env.action_space), hidden_sizes=(16,),
                                           width=16, layers=2, heads=4, qkv_features=8)
  params = jax.jit(model.init)(jax.random.PRNGKey(1), obs)
  return env, jax.jit(model.apply), params, obs


def _permute(obs: entities.EntityObs, key) -> entities.EntityObs:
  """The same scene in other slots: shapes, joints and thrusters shuffled, indexes and the mask remapped."""
  num_poly, num_circ = obs.polygons.shape[-2], obs.circles.shape[-2]
  k = jax.random.split(key, 4)
  perm_p, perm_c = jax.random.permutation(k[0], num_poly), jax.random.permutation(k[1], num_circ)
  perm_s = jnp.concatenate([perm_p, num_poly + perm_c])  # new slot i holds old shape perm_s[i]
  new_index = jnp.argsort(perm_s)  # old shape -> new slot
  perm_j = jax.random.permutation(k[2], obs.joints.shape[-2])
  perm_t = jax.random.permutation(k[3], obs.thrusters.shape[-2])
  att = obs.attention_mask[..., perm_s, :][..., perm_s]
  return entities.EntityObs(
      circles=obs.circles[:, perm_c], polygons=obs.polygons[:, perm_p], joints=obs.joints[:, perm_j],
      thrusters=obs.thrusters[:, perm_t], circle_mask=obs.circle_mask[:, perm_c],
      polygon_mask=obs.polygon_mask[:, perm_p], joint_mask=obs.joint_mask[:, perm_j],
      thruster_mask=obs.thruster_mask[:, perm_t], attention_mask=att,
      joint_indexes=new_index[obs.joint_indexes[:, perm_j]], thruster_indexes=new_index[obs.thruster_indexes[:, perm_t]])


def test_entity_network_is_invariant_to_permuting_entity_slots(net):
  _, apply, params, obs = net
  head, value = apply(params, obs)
  for seed in range(3):
    head_p, value_p = apply(params, jax.jit(_permute)(obs, jax.random.PRNGKey(seed)))
    np.testing.assert_allclose(head_p, head, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(value_p, value, rtol=1e-5, atol=1e-6)
  assert float(jnp.std(value)) > 0  # the scenes differ, and so do their values: the check is not vacuous


def test_entity_network_ignores_whatever_masked_slots_hold(net):
  _, apply, params, obs = net
  head, value = apply(params, obs)

  def garbage(x, mask, key):
    noise = jax.random.normal(key, x.shape) * 1e6 if x.dtype == jnp.float32 else jax.random.randint(
        key, x.shape, -1000, 1000).astype(x.dtype)
    keep = mask.reshape(mask.shape + (1,) * (x.ndim - mask.ndim))
    return jnp.where(keep, x, noise)

  keys = jax.random.split(jax.random.PRNGKey(7), 6)
  nan = jnp.where(obs.circle_mask[..., None], obs.circles, jnp.nan)  # NaN too: masked slots are never multiplied
  dirty = obs.replace(circles=nan, polygons=garbage(obs.polygons, obs.polygon_mask, keys[0]),
                      joints=garbage(obs.joints, obs.joint_mask, keys[1]),
                      thrusters=garbage(obs.thrusters, obs.thruster_mask, keys[2]),
                      joint_indexes=garbage(obs.joint_indexes, obs.joint_mask, keys[3]),
                      thruster_indexes=garbage(obs.thruster_indexes, obs.thruster_mask, keys[4]),
                      attention_mask=obs.attention_mask | ~(obs.shape_mask[:, None, :, None]
                                                            & obs.shape_mask[:, None, None, :]))
  head_d, value_d = apply(params, dirty)
  np.testing.assert_array_equal(head_d, head)
  np.testing.assert_array_equal(value_d, value)
  # A present slot's features do matter.
  moved = obs.replace(polygons=obs.polygons + 1.0)
  assert not np.allclose(apply(params, moved)[1], value)


def test_observation_leaves_pack_into_rows_exactly(net):
  _, _, _, obs = net
  leaves = jax.tree.map(lambda x: jnp.stack([x, x[::-1]]), obs)  # [T=2, N=6, ...]
  leaves = leaves.replace(joint_indexes=leaves.joint_indexes * 70_001 - 2**30)  # large and negative int32 too
  rows = batch_rows.pack(leaves)
  idx = jnp.array([11, 0, 5, 6, 3])
  back = batch_rows.unpack(rows, batch_rows.take(rows, idx))
  for got, want in zip(jax.tree.leaves(back), jax.tree.leaves(leaves)):
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, np.asarray(want).reshape((-1,) + want.shape[2:])[np.asarray(idx)])


@pytest.fixture(scope="module")
def built():
  """The programs of one tiny entity-observation config (reset pool on) on meshes of 1 and 8 devices, shared by the
  tests below (the transformer's programs take most of this file's time to compile)."""
  return {d: programs.build(_config(**{"mesh.data": d}), eval_episodes=4) for d in (1, 8)}


def _updates(progs, state, n):
  for _ in range(n):
    state, metrics = progs.update(state)
  return state, metrics


def test_entity_observations_train_the_same_on_1_and_8_devices(built):
  out = {}
  for d, progs in built.items():
    state, metrics = _updates(progs, progs.init(jax.random.PRNGKey(0)), 4)
    out[d] = jax.device_get((state.params, metrics, progs.evaluate_state(state, jax.random.PRNGKey(1))))
  (params1, metrics1, eval1), (params8, metrics8, eval8) = out[1], out[8]
  # approx_kl (≈ 4e-5 here) and policy_loss (≈ 4e-3) are means of differences of terms near 1, so their float error
  # is absolute, not relative to their small values: float32's resolution there (≈ 1e-7 per term), and for the
  # policy loss after 4 updates also the params' differences below (at the scale of lr), ≈ 4e-6 measured.
  for key, atol in (("param_norm", 0.0), ("value_loss", 0.0), ("entropy", 0.0), ("approx_kl", 2e-7),
                    ("policy_loss", 1e-5)):
    np.testing.assert_allclose(getattr(metrics1, key), getattr(metrics8, key), rtol=1e-4, atol=atol, err_msg=key)
  # Params: Adam's first steps are ~lr per element whatever the gradient's size, so elements whose gradient is
  # near 0 differ by float reassociation at the scale of lr (2.5e-3), not of their value.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), params1, params8)
  assert eval1 == eval8 and np.isfinite(eval1.mean_return) and 1 <= eval1.distinct <= 4  # eval_episodes=4


def test_entity_observation_resume_is_exact(built, tmp_path):
  config, progs = _config(checkpoint_every=2), built[8]
  state, _ = _updates(progs, progs.init(jax.random.PRNGKey(0)), 2)
  ckpts = checkpoint.RunCheckpoints(str(tmp_path), config)
  ckpts.maybe_save(dataflow.Snapshot(state=state), 2, [], [], 0.0, force=True)
  ckpts.close()
  state, metrics = _updates(progs, state, 2)
  want = jax.device_get((state.params, state.runner, metrics))

  ckpts = checkpoint.RunCheckpoints(str(tmp_path), config)
  snapshot, resume = ckpts.restore_or_init(lambda: pytest.fail("did not restore"),
                                           dataflow.Snapshot(state=progs.abstract_state))
  ckpts.close()
  assert resume.update == 2
  assert isinstance(snapshot.state.runner.obs, entities.EntityObs)
  assert snapshot.state.runner.obs.joint_indexes.dtype == jnp.int32
  state, metrics = _updates(progs, snapshot.state, 2)
  got = jax.device_get((state.params, state.runner, metrics))
  jax.tree.map(np.testing.assert_array_equal, got, want)


def test_an_entity_run_exports_and_acts_as_the_trainer(built, tmp_path):
  """launch.checkpoint.saved_run / launch.export / learner.policy with the entity network and EntityObs observations."""
  config, progs = _config(), built[1]
  state, _ = _updates(progs, progs.init(jax.random.PRNGKey(0)), 1)
  ckpts = checkpoint.RunCheckpoints(str(tmp_path / "run"), config)
  ckpts.maybe_save(dataflow.Snapshot(state=state), 1, [], [], 0.0, force=True)
  ckpts.close()
  export.export(str(tmp_path / "run"), str(tmp_path / "policy"))
  policy = policy_lib.load_policy(str(tmp_path / "policy"))
  assert policy.spec.entity == (16, 1, 4, 8) and dict((n, s) for n, s, _ in policy.spec.observation_leaves)[
      "joint_indexes"] == progs.agent.env.observation_spec.joint_indexes.shape
  obs = jax.device_get(state.runner.obs)
  head, _ = progs.agent.apply(jax.device_get(state.params), obs)
  want = progs.agent.dist.mode(head)
  for p in (saved_run.load(str(tmp_path / "run")).policy, policy):
    np.testing.assert_array_equal(jax.jit(p.act, static_argnums=2)(obs, jax.random.PRNGKey(0), True), want)


def test_config_rules_for_pytree_observations():
  errors = config_lib.check(_config(obs_norm=True), num_devices=1)
  assert any(e.startswith("config.obs_norm=True: normalises flat observations only") for e in errors), errors
  assert any(e.startswith("config.network.kind='mlp'") for e in config_lib.check(_config(**{"network.kind": "mlp"}),
                                                                                 num_devices=1))
  flat = _config(env_name="cue")
  assert any(e.startswith("config.network.kind='entity'") for e in config_lib.check(flat, num_devices=1))
  odd = config_lib.check(_config(**{"network.entity_heads": 3}), num_devices=1)
  assert any("multiple of cue_entities's 2 attention channels" in e for e in odd), odd
