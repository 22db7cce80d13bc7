"""The optional parts of the state — PPO-EWMA's proximal params, observation statistics, the reset pool — through
every pipeline mode, split sub-meshes and a resume: they must not break the exactness guarantees."""
import os
import shutil

import jax
import numpy as np
import pytest

from launch.run import programs, trainer
from launch.configs import debug
from launch.report.metrics_file import read_jsonl
from pipeline import dataflow

pytestmark = pytest.mark.usefixtures("no_plots")  # runs skip their figures: tested elsewhere

NUM_UPDATES = 3


def _config(**overrides):
  config = debug.get_config()
  config.ewma.enabled = True
  config.obs_norm = True
  config.reset_pool.size, config.reset_pool.refresh = 16, 4
  for key, value in overrides.items():
    group, _, name = key.rpartition(".")
    (config[group] if group else config)[name] = value
  return config


def _programs(mode: str = "fused", devices: int = 1, actor_devices: int = 0) -> programs.Programs:
  return programs.build(_config(**{"pipeline.mode": mode, "mesh.data": devices,
                                   "pipeline.actor_devices": actor_devices}))


def _pipeline(actor_devices: int):
  progs = _programs("sync", 8 if actor_devices else 1, actor_devices)
  state = progs.init(jax.random.PRNGKey(0))
  return list(dataflow.Pipeline(progs.pipeline, max_policy_lag=0).run(dataflow.Snapshot(state=state), NUM_UPDATES))


def test_sync_and_split_pipelines_equal_fused_with_every_option_on():
  progs = _programs("fused")
  state = progs.init(jax.random.PRNGKey(0))
  assert state.proximal is not None and state.runner.obs_norm is not None and state.runner.reset_pool is not None
  metrics = []
  for _ in range(NUM_UPDATES):
    state, m = progs.update(state)
    metrics.append(m)
  sync_results = _pipeline(0)
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)),
               (sync_results[-1].snapshot.state, [r.metrics for r in sync_results]), (state, metrics))
  split_results = _pipeline(4)  # 4 actor devices, 4 learner devices: placement changes only float order
  split = split_results[-1].snapshot.state
  assert split.runner.obs_norm.mean.sharding.is_fully_replicated
  assert split.runner.obs.sharding.spec[0] == "data"
  assert jax.tree.structure(split) == jax.tree.structure(state)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-5),
               (split, [r.metrics for r in split_results]), (state, metrics))  # every leaf of state and metrics


@pytest.mark.parametrize("mode,devices,actor_devices", [("fused", 1, 0), ("overlap", 8, 4), ("sync", 5, 4)])
def test_resume_with_every_option_on_is_exact(tmp_path, mode, devices, actor_devices):
  """A finished run, its last checkpoint removed, rerun: it resumes from the one before and ends identically."""
  overrides = {"checkpoint_every": 2, "log_every": 1, "eval_every": 2, "total_env_steps": 8 * 16 * 4}
  if actor_devices:  # split sub-meshes, so the actors' statistics move to the learner for evaluation
    overrides.update({"pipeline.mode": mode, "pipeline.actor_devices": actor_devices, "mesh.data": devices})
  if mode == "sync":  # 5 devices, 4 actors: a one-device learner; no EWMA, so the update counter is the last leaf
    overrides["ewma.enabled"] = False
  config = _config(**overrides)
  workdir = str(tmp_path)
  trainer.train_and_evaluate(config, workdir)
  full = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  assert [r["update"] for r in full] == [1, 2, 3, 4]
  shutil.rmtree(os.path.join(workdir, "checkpoints", "4"))
  trainer.train_and_evaluate(config, workdir)
  resumed = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  assert [r["update"] for r in resumed] == [1, 2, 3, 4]
  assert resumed[:2] == full[:2] and "compile_time" in resumed[2]  # rows kept: it resumed after update 2
  for key in ("param_norm", "policy_loss", "value_loss", "entropy", "kl_mean", "eval_return", "episode_return"):
    assert resumed[-1][key] == full[-1][key], key
