"""A run continued at another num_envs: by hand under a scaling rule, or by `scaling.schedule` in one run
(launch/run/elastic.py). Params and optimizer state carry over bit for bit, minibatching and learning rate follow the
rule, the schedule equals a stop and resume by hand, and the result does not depend on the device count."""
import os
import re
import shutil
import signal

import jax
import numpy as np
import pytest

from launch import checkpoint
from launch.config import resolve as config_lib
from launch.report import metrics_file
from launch.run import elastic, preemption, programs, trainer
from launch.configs import debug
from pipeline import dataflow
from tests.test_checkpoint import TIMING, _interrupt, _start, _wait_for, jax_cache  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("no_plots")  # runs skip their figures: tested elsewhere

BATCH = 8 * 16  # debug: 8 envs x 16 steps
GROW_AT = 4 * BATCH  # env steps at which the schedule grows the run to 32 envs
TOTAL = GROW_AT + 2 * 4 * BATCH  # 4 updates at 8 envs, then 2 at 32
SCHEDULE = f"0:8,{GROW_AT}:32"


def _config(**overrides):
  config = debug.get_config()
  config.scaling.rule = "recipe"
  config.total_env_steps = TOTAL
  config.log_every = config.eval_every = 2
  config.checkpoint_every = 100
  config.update_from_flattened_dict(overrides)  # "a.b" keys, type-checked as assignments
  return config


def _rows(workdir):
  return [{k: v for k, v in r.items() if k not in TIMING}
          for r in metrics_file.read_jsonl(os.path.join(workdir, "metrics.jsonl"))]


@pytest.fixture(scope="module")
def scheduled(tmp_path_factory):
  """The run grown from 8 to 32 envs after update 4 by the schedule."""
  workdir = str(tmp_path_factory.mktemp("scheduled") / "run")
  trainer.train_and_evaluate(_config(**{"scaling.schedule": SCHEDULE}), workdir)
  return workdir


@pytest.fixture(scope="module")
def stopped_at_boundary(tmp_path_factory):
  """The same run at 8 envs, stopped after update 4 (as by SIGTERM): its checkpoint of update 4 at 8 envs."""
  workdir = str(tmp_path_factory.mktemp("manual") / "run")
  original = preemption.StopRequest.should_stop
  preemption.StopRequest.should_stop = lambda self, update: original(self, update) or update == 4
  try:
    with pytest.raises(checkpoint.Preempted):
      trainer.train_and_evaluate(_config(), workdir)
  finally:
    preemption.StopRequest.should_stop = original
  saved = str(tmp_path_factory.mktemp("manual_saved") / "run")
  shutil.copytree(workdir, saved)
  return saved


def test_schedule_run_rows(scheduled):
  rows = _rows(scheduled)
  assert [r["update"] for r in rows] == [2, 4, 6]
  assert [r["env_steps"] for r in rows] == [2 * BATCH, 4 * BATCH, TOTAL]
  assert "eval_return" in rows[-1]


def test_schedule_equals_manual_stop_and_resume(scheduled, stopped_at_boundary, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(stopped_at_boundary, workdir)
  trainer.train_and_evaluate(_config(num_envs=32), workdir)  # by hand: the same workdir, 4x the envs
  assert _rows(workdir) == _rows(scheduled)
  assert sorted(os.listdir(f"{workdir}/checkpoints")) == sorted(os.listdir(f"{scheduled}/checkpoints"))
  a, b = (_restore(_config(num_envs=32), w) for w in (workdir, scheduled))
  assert _leaves_equal(a.state, b.state)


def _restore(config, workdir, segment=None, resize_runner=None):
  """The newest checkpoint restored into `config`'s programs (not compiled: the init and shardings only)."""
  config, planned = elastic.plan(config, workdir)
  segment = segment or planned
  resolved = config_lib.resolve(config, jax.device_count(), segment=segment)
  progs = programs.build(config, resolved=resolved, compile_update=False, eval_episodes=0)
  ckpts = checkpoint.RunCheckpoints(workdir, config, None, segment, resize_runner or progs.resize_runner)
  try:
    snapshot, _ = ckpts.restore_or_init(lambda: None, dataflow.Snapshot(state=progs.abstract_state))
  finally:
    ckpts.close()
  return snapshot


def _leaves_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


@pytest.mark.parametrize("num_envs", [32, 4])  # 4x and 1/2 the envs
def test_resume_at_another_num_envs_carries_the_learner_state(stopped_at_boundary, num_envs):
  before = _restore(_config(), stopped_at_boundary)
  after = _restore(_config(num_envs=num_envs), stopped_at_boundary)
  # Params, optimizer state (Adam's moments and counts, the anneal's step count), key and counter: bit for bit.
  for part in ("params", "opt_state", "key", "update"):
    assert _leaves_equal(getattr(before.state, part), getattr(after.state, part)), part
  # The envs: the first min(old, new) keep their state; added ones start fresh.
  keep = min(8, num_envs)
  assert after.state.runner.obs.shape[0] == num_envs
  np.testing.assert_array_equal(after.state.runner.obs[:keep], before.state.runner.obs[:keep])
  np.testing.assert_array_equal(after.state.runner.episode_return[:keep], before.state.runner.episode_return[:keep])
  assert np.all(np.asarray(after.state.runner.episode_return[keep:]) == 0)
  # Minibatching and learning rate follow the recipe from the base (8 envs, 2 minibatches of 64).
  config, segment = elastic.plan(_config(num_envs=num_envs), stopped_at_boundary)
  resolved = config_lib.resolve(config, jax.device_count(), segment=segment)
  assert resolved.minibatch_size == 64 and resolved.ppo.num_minibatches == num_envs * 16 // 64
  assert resolved.learning_rate == _config().learning_rate
  assert segment == elastic.Segment(update=4, env_steps=GROW_AT, num_envs=num_envs)
  # The restored optimizer's counts: Adam's optimizer steps (4 updates x 2 epochs x 2 minibatches), and the anneal's
  # position (learner/optimizer.py) at the segment's first update, its first step.
  counts = {jax.tree_util.keystr(p).rsplit(".", 1)[-1]: int(x)
            for p, x in jax.tree_util.tree_leaves_with_path(after.state.opt_state) if np.ndim(x) == 0}
  assert counts == {"count": 4 * 2 * 2, "update": segment.update, "step": 0}
  # The anneal continues over env steps: 1 - E0 / E_total at the change, 0 at the run's end.
  assert resolved.lr_fraction == 1 - GROW_AT / resolved.env_steps
  assert resolved.num_updates == 4 + (TOTAL - GROW_AT) // (num_envs * 16)
  assert resolved.total_gradient_steps == (resolved.num_updates - 4) * 2 * resolved.ppo.num_minibatches


def test_a_failing_resize_is_not_reported_as_a_corrupt_checkpoint(stopped_at_boundary, tmp_path):
  """An error while the runner is rebuilt at another num_envs is the code's, not the checkpoint's (its bytes are
  checked by then): it propagates as it is, with no advice to move checkpoints aside, and no step is moved aside."""
  workdir = str(tmp_path / "run")
  shutil.copytree(stopped_at_boundary, workdir)

  def broken(runner, key):
    raise RuntimeError("a defect in resize_runner")
  with pytest.raises(RuntimeError, match="a defect in resize_runner"):
    _restore(_config(num_envs=32), workdir, resize_runner=broken)
  assert os.listdir(f"{workdir}/checkpoints") == os.listdir(f"{stopped_at_boundary}/checkpoints")
  assert not os.path.exists(f"{workdir}/checkpoints_corrupt")


def test_added_envs_do_not_depend_on_the_device_count(stopped_at_boundary):
  one = _restore(_config(num_envs=32), stopped_at_boundary)
  eight = _restore(_config(num_envs=32, **{"mesh.data": 8}), stopped_at_boundary)
  assert len(eight.state.runner.obs.sharding.device_set) == 8
  assert _leaves_equal(one.state.runner, eight.state.runner)


def test_another_num_envs_without_a_rule_is_refused_with_the_flag(stopped_at_boundary):
  with pytest.raises(config_lib.ConfigError, match=r"--config\.scaling\.rule=recipe"):
    elastic.plan(_config(num_envs=32, **{"scaling.rule": "none"}), stopped_at_boundary)
  with pytest.raises(config_lib.ConfigError, match=r"scaling\.rule=recipe"):
    elastic.check_schedule(_config(**{"scaling.rule": "none", "scaling.schedule": SCHEDULE}), 1)


def follow(config, message):
  """`config` with the --config.KEY=VALUE flags that `message` names set, as the command line would set them."""
  for key, value in re.findall(r"--config\.([\w.]+)=(\S+)", message):
    config.update_from_flattened_dict({key: type(config_lib.flat_keys(config)[key])(value)})
  return config


def test_following_the_growth_hint_continues_with_the_runs_own_minibatch(tmp_path):
  """A run saved at 16 envs without a rule (minibatches of 16 x 16 / 2 = 128), rerun at 32 envs: the refusal names
  the flags that continue it as itself, not at the config's scaling.base_num_envs (8: minibatches of 64)."""
  workdir = str(tmp_path / "run")
  saved = _config(num_envs=16, **{"scaling.rule": "none"})
  progs = programs.build(saved, compile_update=False)
  ckpts = checkpoint.RunCheckpoints(workdir, saved)
  ckpts.maybe_save(dataflow.Snapshot(state=progs.init(jax.random.PRNGKey(0))), 1, [], [], 0.0, force=True)
  ckpts.close()
  with pytest.raises(config_lib.ConfigError) as e:
    elastic.plan(_config(num_envs=32, **{"scaling.rule": "none"}), workdir)
  config, segment = elastic.plan(follow(_config(num_envs=32, **{"scaling.rule": "none"}), str(e.value)), workdir)
  want, got = config_lib.resolve(saved, 1), config_lib.resolve(config, 1, segment=segment)
  assert config.num_envs == 32 and got.minibatch_size == want.minibatch_size == 128
  assert got.learning_rate == want.learning_rate and got.ppo.num_minibatches == 2 * want.ppo.num_minibatches


def test_schedule_on_eight_devices_matches_one(scheduled, tmp_path):
  workdir = str(tmp_path / "run")
  trainer.train_and_evaluate(_config(**{"scaling.schedule": SCHEDULE, "mesh.data": 8}), workdir)
  for a, b in zip(_rows(scheduled), _rows(workdir), strict=True):
    assert a["update"] == b["update"] and a["env_steps"] == b["env_steps"]
    for key in ("param_norm", "policy_loss", "value_loss", "entropy", "approx_kl"):
      # policy_loss and approx_kl are means of near-cancelling terms (KL ~1e-5 here): float order between device
      # counts moves them by ~1e-9 absolute, which is 1e-4 relative.
      atol = {"policy_loss": 1e-6, "approx_kl": 1e-8}.get(key, 0)
      np.testing.assert_allclose(a[key], b[key], rtol=1e-4, atol=atol, err_msg=key)


# The scheduled run as `launch.train` flags (the subprocess tests signal it).
SCHEDULED_ARGS = ("--config.scaling.rule=recipe", f"--config.scaling.schedule={SCHEDULE}",
                  f"--config.total_env_steps={TOTAL}", "--config.log_every=2", "--config.eval_every=2",
                  "--config.checkpoint_every=100")


def test_sigterm_at_the_size_change_leaves_a_resumable_run(jax_cache, scheduled, tmp_path):  # noqa: F811
  """SIGTERM after the boundary update (the 8-env segment's last): saved there; the rerun grows the run and
  finishes it as the uninterrupted schedule did."""
  workdir = str(tmp_path / "run")
  args = SCHEDULED_ARGS
  proc = _start(jax_cache, workdir, *args, pause=4)
  _wait_for(proc, f"{workdir}/test_paused_at_4")
  err = _interrupt(proc, signal.SIGTERM)
  assert proc.returncode == 3, err[-3000:]
  proc = _start(jax_cache, workdir, *args)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-3000:]
  got, want = _rows(workdir), _rows(scheduled)
  assert [r["update"] for r in got] == [r["update"] for r in want]
  for a, b in zip(got, want):
    for key in ("param_norm", "policy_loss", "value_loss", "entropy", "env_steps"):
      np.testing.assert_allclose(a[key], b[key], rtol=1e-6, atol=1e-7, err_msg=key)


def test_sigterm_during_the_hand_over_save_stops_there(jax_cache, scheduled, tmp_path):  # noqa: F811
  """SIGTERM while the boundary's checkpoint (the hand-over to 32 envs) is being saved: the run stops with that
  checkpoint (exit 3) instead of training on with the signal lost; the rerun finishes as the uninterrupted one."""
  workdir = str(tmp_path / "run")
  args = SCHEDULED_ARGS
  proc = _start(jax_cache, workdir, *args, hold=4)
  _wait_for(proc, f"{workdir}/test_holding_save_4")
  err = _interrupt(proc, signal.SIGTERM)
  assert proc.returncode == 3, err[-3000:]
  assert "stopped on request after update 4" in err
  assert sorted(os.listdir(f"{workdir}/checkpoints")) == ["4"]
  proc = _start(jax_cache, workdir, *args)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-3000:]
  assert [r["update"] for r in _rows(workdir)] == [r["update"] for r in _rows(scheduled)]


def test_schedule_parsing_and_boundaries():
  assert elastic.parse_schedule("0:2048, 2e9:65536,2e10:1048576") == [(0, 2048), (2 * 10**9, 65536),
                                                                       (2 * 10**10, 1048576)]
  for bad in ("0:8,0:16", "5:8,2:16", "0:8.5", "x:8", "0:0"):
    with pytest.raises(config_lib.ConfigError, match="scaling.schedule"):
      config_lib.resolve(_config(**{"scaling.schedule": bad}), 1)
  config = _config(**{"scaling.schedule": "0:8,600:32,5000:64"})
  assert elastic.num_envs_at(config, 599) == 8 and elastic.num_envs_at(config, 600) == 32
  resolved = config_lib.resolve(config, 1)
  assert elastic.end_update(config, elastic.Segment(num_envs=8), resolved) == 5  # 5 x 128 >= 600
