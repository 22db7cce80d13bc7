"""Runs grown and shrunk with SFL's level buffer (`levels`), which a resize must carry (launch/run/elastic.py,
pipeline/rollout.py `resize_runner`): a scheduled run finishes its budget, a run resumed from its checkpoint at the
growth boundary == the uninterrupted run, and a resize keeps the first envs and every shared part of the runner
(RunnerState.SHARED) bit for bit. Pytree observations with the entity network and a reset pool (`cue_entities`) go
through the same lifecycle in the interaction matrix's entity cells (tests/matrix.py, docs/matrix.md), whose SFL cells
shrink: SFL's growth is trained here, entity runs are not trained twice."""
import dataclasses
import os
import shutil

import jax
import jax.numpy as jnp
import pytest
from flax import struct

from envs import cue
from launch.checkpoint import resize
from launch.configs import debug
from launch.run import trainer
from pipeline import rollout
from sharding import mesh as mesh_lib
from tests.test_elastic import _leaves_equal, _restore, _rows

pytestmark = pytest.mark.usefixtures("no_plots")  # runs skip their figures: tested elsewhere

# Each feature: (overrides of the debug config, env steps per update at 8 envs). 4 updates at 8 envs, then 2 at 16.
FEATURES = {
    "sfl": ({"env_name": "levels", "num_steps": 4, "anneal_lr": False, "reset_pool.size": 16,
             "reset_pool.refresh": 4, "level_sampler.kind": "sfl", "level_sampler.batch_size": 16,
             "level_sampler.num_batches": 2, "level_sampler.rollout_steps": 32, "level_sampler.buffer_size": 4,
             "level_sampler.rescore_every": 4}, 8 * 4),  # re-scorings before updates 1 and 5 (the first at 16 envs)
}


def _config(feature, scheduled=True, **overrides):
  features, batch = FEATURES[feature]
  config = debug.get_config()
  config.update_from_flattened_dict({
      **features, "scaling.rule": "recipe", "total_env_steps": 4 * batch + 2 * 2 * batch, "log_every": 2,
      "eval_every": 2, "checkpoint_every": 100, **({"scaling.schedule": f"0:8,{4 * batch}:16"} if scheduled else {}),
      **overrides})
  return config


@pytest.fixture(scope="module", params=sorted(FEATURES))
def runs(request, tmp_path_factory):
  """(feature, the scheduled run, the same run as if stopped after its boundary save: its checkpoint of update 4 at
  8 envs, the newest). The stop itself (a signal at the boundary, its save) is tests/test_elastic.py's; here the
  features meet the resize, so the run is not trained twice."""
  feature = request.param
  scheduled = str(tmp_path_factory.mktemp(f"{feature}_scheduled") / "run")
  trainer.train_and_evaluate(_config(feature), scheduled)
  stopped = str(tmp_path_factory.mktemp(f"{feature}_stopped") / "run")
  shutil.copytree(scheduled, stopped)
  assert sorted(os.listdir(f"{stopped}/checkpoints")) == ["4", "6"]
  shutil.rmtree(f"{stopped}/checkpoints/6")
  return feature, scheduled, stopped


def test_scheduled_run_finishes_its_budget(runs):
  feature, scheduled, _ = runs
  rows = _rows(scheduled)
  assert [r["update"] for r in rows] == [2, 4, 6]
  assert rows[-1]["env_steps"] == _config(feature).total_env_steps and "eval_return" in rows[-1]


def test_resume_at_the_boundary_equals_the_scheduled_run(runs, tmp_path):
  feature, scheduled, stopped = runs
  workdir = str(tmp_path / "run")
  shutil.copytree(stopped, workdir)
  trainer.train_and_evaluate(_config(feature), workdir)  # the same command again: resumes, grows to 16 envs
  assert _rows(workdir) == _rows(scheduled)
  a, b = (_restore(_config(feature), w) for w in (workdir, scheduled))
  assert a.state.runner.num_envs == 16
  assert _leaves_equal(a.state, b.state)


def test_shrink_keeps_the_first_envs_and_the_shared_parts(runs):
  """(Growth: the runs above.)"""
  feature, _, stopped = runs
  num_envs = keep = 4
  before = _restore(_config(feature, scheduled=False), stopped).state.runner
  after = _restore(_config(feature, scheduled=False, num_envs=num_envs), stopped).state.runner
  assert all(x.shape[0] == num_envs for x in jax.tree.leaves(after.per_env()))
  assert _leaves_equal(jax.tree.map(lambda x: x[:keep], after.per_env()),
                       jax.tree.map(lambda x: x[:keep], before.per_env()))
  assert jax.tree.leaves(after.shared()) and _leaves_equal(after.shared(), before.shared())
  assert (after.level_buffer is not None) == (feature == "sfl")


def test_a_shared_part_added_later_is_one_field():
  """A RunnerState with one more shared field, named in SHARED, and nothing else changed: the shardings replicate
  it, a resize's checkpoint target and the resize itself carry it unchanged."""
  @struct.dataclass
  class Extended(rollout.RunnerState):
    extra: jax.Array | None = None
    SHARED = rollout.RunnerState.SHARED + ("extra",)

  env = cue.CueEnv()
  runner = rollout.init_runner(env, jax.random.PRNGKey(0), 8, obs_norm=True)
  runner = Extended(**{f.name: getattr(runner, f.name) for f in dataclasses.fields(runner)},
                    extra=jnp.arange(3.0))
  layout = mesh_lib.Layout(mesh_lib.make_mesh(8))
  shardings = layout.runner_shardings(runner)
  assert shardings.extra == layout.replicated and shardings.obs == layout.env_sharding(2)
  shapes = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), runner, shardings)
  target = resize.at_num_envs(shapes, 4)
  assert target.obs.shape[0] == 4 and target.extra == shapes.extra
  for num_envs in (4, 12):
    resized = rollout.resize_runner(env, runner, jax.random.PRNGKey(1), num_envs)
    assert resized.num_envs == num_envs and _leaves_equal(resized.shared(), runner.shared())
