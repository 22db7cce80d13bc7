"""Outer-step control (learner/outer_step.py) on hand-made KL sequences and in a short run, and the command that the
plateau advice prints (launch/run/plateau.py; its rule: tests/test_plateau.py)."""
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from launch import checkpoint
from launch.config import resolve as config_lib
from launch.report import metrics_file
from launch.run import plateau, preemption, trainer
from launch.configs import debug
from learner import outer_step
from tests.test_checkpoint import TIMING
from tests.test_elastic import follow

pytestmark = pytest.mark.usefixtures("no_plots")  # runs skip their figures: tested elsewhere


def _run(settings, kls, samples=1e4):
  """The scale after each update, fed its mean KL over `samples` states."""
  state, scales = outer_step.init(), []
  for kl in kls:
    state = outer_step.step(settings, state, jnp.float32(kl), jnp.float32(samples))
    scales.append(float(state.lr_scale))
  return scales


def test_adaptive_kl_moves_by_the_factor_outside_the_band():
  settings = outer_step.OuterSettings("adaptive_kl", kl_target=0.01, factor=2.0, max_scale=4.0)
  kls = [0.03, 0.03, 0.015, 0.006, 0.004, 0.001, 0.001, 0.001, 0.001, np.nan, 0.02]
  # > 2x target: halve; within [target/2, 2 target]: keep; < target/2: double; capped at max_scale; NaN: keep.
  assert _run(settings, kls) == [0.5, 0.25, 0.25, 0.25, 0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0]
  assert _run(settings, [1.0] * 5)[-1] == 0.25  # floored at 1 / max_scale


def test_samples_per_kl_moves_toward_the_target_at_most_by_the_factor():
  settings = outer_step.OuterSettings("samples_per_kl", samples_per_kl=1e4, factor=1.5, max_scale=10.0)
  # 1e4 samples: spk = 4x target: the lr that meets it is 2x (spk ∝ lr^-2), capped at 1.5x; at 1/4 target: 1/2,
  # capped at 1/1.5; a NaN KL keeps the scale; a KL of 0 (no measurable step) is an unbounded spk: up by the factor.
  got = _run(settings, [0.25, 1 / 1.21, 1.0, 4.0, np.nan, 0.0])
  np.testing.assert_allclose(got, [1.5, 1.5 * 1.1, 1.5 * 1.1, 1.1, 1.1, 1.65], rtol=1e-6)


def test_outer_step_needs_diagnostics_and_the_fused_update():
  config = debug.get_config()
  config.outer_step.mode = "adaptive_kl"
  config.diagnostics.enabled = False
  with pytest.raises(config_lib.ConfigError, match="outer_step.mode"):
    config_lib.resolve(config, 1)


def _outer_config():
  config = debug.get_config()
  config.outer_step.mode = "adaptive_kl"
  config.outer_step.kl_target = 1e-9  # far below what an update moves: the scale falls to its floor and stays
  config.outer_step.max_scale = 3.0
  config.log_every = 1
  config.eval_every = 10
  return config


def _metrics(workdir):
  return [{k: v for k, v in r.items() if k not in TIMING} for r in metrics_file.read_jsonl(f"{workdir}/metrics.jsonl")]


@pytest.fixture(scope="module")
def controlled(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("outer") / "run")
  trainer.train_and_evaluate(_outer_config(), workdir)
  return workdir


def test_short_run_keeps_the_scale_within_bounds(controlled):
  scales = [r["lr_scale"] for r in _metrics(controlled)]
  assert len(scales) == 10 and all(1 / 3.0 - 1e-6 <= s <= 3.0 for s in scales)
  np.testing.assert_allclose(scales[:3], [1 / 1.5, 1 / 2.25, 1 / 3.0], rtol=1e-6)
  assert scales[-1] == pytest.approx(1 / 3.0)


def test_resume_with_outer_step_control_is_exact(controlled, workdir, monkeypatch):
  original = preemption.StopRequest.should_stop
  monkeypatch.setattr(preemption.StopRequest, "should_stop", lambda self, u: original(self, u) or u == 2)
  with pytest.raises(checkpoint.Preempted):  # saved after update 2, the scale already moved twice
    trainer.train_and_evaluate(_outer_config(), workdir)
  monkeypatch.setattr(preemption.StopRequest, "should_stop", original)
  trainer.train_and_evaluate(_outer_config(), workdir)
  assert _metrics(workdir) == _metrics(controlled)


@pytest.mark.parametrize("rule", [
    {"scaling.rule": "none"},
    {"scaling.rule": "fixed_minibatches", "num_minibatches": 0, "minibatch_size": 32},  # 64 at 16 envs
    {"scaling.rule": "sqrt_lr"},  # the learning rate x sqrt(16 / 8)
    {"scaling.rule": "recipe", "scaling.base_num_envs": 4}])
def test_the_plateau_command_continues_with_the_runs_minibatch_size_and_learning_rate(rule):
  config = debug.get_config()
  config.update_from_flattened_dict({"num_envs": 16, **rule})
  want = config_lib.resolve(config, 1)
  grown = follow(ml_collections.ConfigDict(config.to_dict()), plateau.command(config, "/tmp/run"))
  got = config_lib.resolve(grown, 1)
  assert grown.num_envs == 64 and grown.scaling.rule == "recipe"
  assert got.minibatch_size == want.minibatch_size and got.ppo.num_minibatches == 4 * want.ppo.num_minibatches
  assert got.learning_rate == pytest.approx(want.learning_rate, rel=1e-12)
