"""Policy export: `launch.export` → `learner.policy.load_policy` acts as the trainer's deterministic policy, for a
discrete (CartPole) and a continuous env with observation normalisation (gymnax Pendulum), and the loader imports
nothing of the training loop."""
import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from launch import checkpoint, export
from launch.config import resolve as config_lib
from launch.run import trainer
from launch.configs import debug
from learner import policy as policy_lib
from pipeline import dataflow, iteration as iteration_lib, obs_norm as obs_norm_lib
from sharding import Layout, make_mesh

pytestmark = pytest.mark.usefixtures("no_plots")  # runs skip their figures: tested elsewhere

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny_run(workdir, **overrides):
  config = debug.get_config()
  config.total_env_steps = 8 * 16 * 2  # 2 updates: the params have moved away from the init
  for k, v in overrides.items():
    setattr(config, k, v)
  trainer.train_and_evaluate(config, workdir)
  return config


def _trainer_policy(config, workdir):
  """The trainer's deterministic policy on the run's final state, restored whole as a resumed run restores it."""
  resolved = config_lib.resolve(config, num_devices=1)
  agent = trainer.build_agent(config, resolved)
  layout = Layout(make_mesh(1))
  init_fn = functools.partial(iteration_lib.init_train_state, agent, num_envs=config.num_envs, ppo=resolved.ppo)
  shapes = jax.eval_shape(init_fn, jax.random.PRNGKey(0))
  target = jax.tree.map(lambda s, d: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=d), shapes,
                        layout.train_state_shardings(shapes))
  ckpts = checkpoint.RunCheckpoints(workdir, config)
  try:
    snapshot, resume = ckpts.restore_or_init(lambda: pytest.fail("no checkpoint"),
                                             dataflow.Snapshot(state=target, stale_params=()))
  finally:
    ckpts.close()
  assert resume.update == 2
  params, stats = snapshot.state.params, snapshot.state.runner.obs_norm

  @jax.jit
  def act(obs):  # as pipeline/evaluate.py acts
    head, _ = agent.apply(params, obs if stats is None else obs_norm_lib.normalize(stats, obs))
    return agent.dist.mode(head)
  return act, stats


@pytest.mark.parametrize("env_name,obs_norm,obs_scale", [
    ("CartPole-v1", False, (1.0, 2.0, 0.2, 2.0)),
    ("gymnax:Pendulum-v1", True, (1.0, 1.0, 8.0)),
])
def test_exported_policy_acts_as_the_trainer(tmp_path, env_name, obs_norm, obs_scale):
  if env_name.startswith("gymnax:"):
    pytest.importorskip("gymnax")
  workdir, out = str(tmp_path / "run"), str(tmp_path / "policy")
  config = _tiny_run(workdir, env_name=env_name, obs_norm=obs_norm)
  export.export(workdir, out)
  spec = json.loads((tmp_path / "policy" / policy_lib.SPEC_FILE).read_text())
  assert spec["network"]["hidden_sizes"] == list(config.network.hidden_sizes)
  assert (spec["obs_norm"] is not None) == obs_norm

  trainer_act, stats = _trainer_policy(config, workdir)
  if obs_norm:  # the statistics moved away from identity, so normalising is really tested
    assert float(stats.count) > 0 and not np.allclose(stats.mean, 0.0)
    np.testing.assert_array_equal(np.float32(spec["obs_norm"]["mean"]), np.asarray(stats.mean))
  obs = jax.random.normal(jax.random.PRNGKey(1), (1000, len(obs_scale))) * jnp.asarray(obs_scale)
  policy = policy_lib.load_policy(out)
  got = jax.jit(policy.act, static_argnums=2)(obs, jax.random.PRNGKey(2), True)
  want = trainer_act(obs)
  if env_name == "CartPole-v1":
    assert got.dtype == want.dtype and 0 < int(want.sum()) < 1000  # both actions occur: the check can fail
    np.testing.assert_array_equal(got, want)
  else:
    assert got.shape == want.shape == (1000, 1) and float(jnp.std(want)) > 0
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  # Traced `deterministic` gives the same; sampled actions differ from the mode somewhere.
  np.testing.assert_array_equal(jax.jit(policy.act)(obs, jax.random.PRNGKey(2), True), got)
  sampled = jax.jit(policy.act, static_argnums=2)(obs, jax.random.PRNGKey(2), False)
  assert sampled.shape == got.shape and not np.array_equal(sampled, got)


def test_load_policy_imports_nothing_of_the_training_loop(tmp_path):
  workdir, out = str(tmp_path / "run"), str(tmp_path / "policy")
  _tiny_run(workdir)
  subprocess.run([sys.executable, "-m", "launch.export", f"--workdir={workdir}", f"--out={out}"], cwd=REPO,
                 check=True, capture_output=True)
  code = (
      "import sys, jax, jax.numpy as jnp\n"
      "from learner.policy import load_policy\n"
      f"p = load_policy({out!r})\n"
      "a = jax.jit(p.act, static_argnums=2)(jnp.zeros((5, 4)), jax.random.PRNGKey(0), True)\n"
      "assert a.shape == (5,), a.shape\n"
      "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('pipeline', 'launch', 'sharding', 'optax', 'orbax'))\n"
      "assert not bad, bad\n")
  subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, env=dict(os.environ, XLA_FLAGS=""))
  # A params file that does not fit the description is refused by name.
  spec = json.loads((tmp_path / "policy" / policy_lib.SPEC_FILE).read_text())
  spec["network"]["hidden_sizes"] = [8, 8]
  (tmp_path / "policy" / policy_lib.SPEC_FILE).write_text(json.dumps(spec))
  with pytest.raises(ValueError, match="do not fit"):
    policy_lib.load_policy(out)
