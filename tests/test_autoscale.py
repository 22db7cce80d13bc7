"""Autoscale (launch/run/autoscale.py): its decisions on recorded and made metric sequences, and in the trainer a run
that grows by the real rule on the `levels` env (nothing to learn: its evaluation stays flat and noisy while the
policy keeps moving, a noise-limited plateau), the same on 1 and 8 devices and on 2 processes, == its stop-and-resume
at updates before, at and after the growth, and a size that does not fit device memory skipped with one line.
"""
import json
import os

import numpy as np
import pytest

from launch import checkpoint, local
from launch.config import resolve as config_lib
from launch.configs import debug
from launch.report import plots
from launch.report.metrics_file import read_jsonl
from launch.run import autoscale, memory, plateau, preemption, programs, trainer
from launch.config.schedule import config_at
from tests import test_plateau

TIMING = ("wall_time", "sps", "compile_time", "first_update_time")


def _controller(num_envs, num_steps, budget, window, max_num_envs=512, factor=4):
  config = debug.get_config()
  config.update_from_flattened_dict({"num_envs": num_envs, "num_steps": num_steps, "total_env_steps": budget,
                                     "scaling.rule": "recipe", "autoscale.enabled": True,
                                     "autoscale.max_num_envs": max_num_envs, "autoscale.factor": factor,
                                     "autoscale.window": window})
  assert config_lib.check(config, num_devices=1) == []
  return autoscale.Controller.create(config, None)


def _decisions(controller, rows):
  """The rows (indexes) where the controller grows the run, and the records."""
  out = []
  for i, row in enumerate(rows):
    row = dict(row, update=i + 1)
    assessment = controller.observe(row)
    if assessment is not None:
      out.append((i, controller.grow(row, assessment)))
  return out


def test_the_stuck_breakout_seed_grows_where_the_plateau_rule_says_noise_limited():
  rows = test_plateau._recorded("plateau_breakout_n8.jsonl")  # pylint: disable=protected-access
  budget, batch = 2097152, 256
  first = [plateau.assess(rows[:i + 1], batch, 0.25 * budget) for i in range(len(rows))]
  first = next(i for i, a in enumerate(first) if a and a.verdict == "noise_limited")
  grown = _decisions(_controller(8, 32, budget, 0.25), rows)
  assert grown and grown[0][0] == first
  record = grown[0][1]
  assert (record["from"], record["to"], record["samples_per_update"]) == (8, 32, 256)
  assert record["env_steps"] == rows[first]["env_steps"] and record["kl_fraction"] > 0.5
  line = autoscale.line(record)
  assert line.startswith("autoscale: 8 → 32 envs at env step") and "noise-limited" in line and "\n" not in line
  # The next growth needs a whole window at the new size (and its batch is the new size's).
  assert all(b[1]["env_steps"] - a[1]["env_steps"] >= 0.25 * budget for a, b in zip(grown, grown[1:]))


@pytest.mark.parametrize("case", ["cartpole", "flat noisy evaluation, rising return", "converged", "above noise"])
def test_runs_that_are_not_noise_limited_never_grow(case):
  made, rise_then_flat = test_plateau._made, test_plateau.RISE_THEN_FLAT  # pylint: disable=protected-access
  if case == "cartpole":
    rows = test_plateau._recorded("plateau_cartpole_default.jsonl")  # pylint: disable=protected-access
    controller = _controller(32, 128, 500_000, 0.1)
  else:
    rows = {"flat noisy evaluation, rising return": made(eval_return=lambda i: 5.0 + (3 if i % 4 == 3 else 0),
                                                          episode_return=lambda i: 0.1 * i),
            "converged": made(episode_return=rise_then_flat, eval_return=rise_then_flat,
                              kl=lambda i: 0.01 * 0.8 ** i),
            "above noise": made(episode_return=rise_then_flat, eval_return=rise_then_flat, noise=lambda i: 2.56),
            }[case]
    controller = _controller(8, 32, 4000, 0.25)
  assert _decisions(controller, rows) == []
  if case != "cartpole":  # the same rows, noise-limited: grows (the made sequences are judged at all)
    grows = made(episode_return=rise_then_flat, eval_return=rise_then_flat)
    assert [i for i, _ in _decisions(_controller(8, 32, 4000, 0.25), grows)] == [27, 37]  # a window apart


def test_the_saved_rows_are_few_and_give_the_verdicts_of_all_rows():
  made = test_plateau._made(n=200, episode_return=test_plateau.RISE_THEN_FLAT,  # pylint: disable=protected-access
                            eval_return=test_plateau.RISE_THEN_FLAT, kl=lambda i: 0.01 * (1 + (i % 7 == 0)))
  breakout = test_plateau._recorded("plateau_breakout_n8.jsonl")  # pylint: disable=protected-access
  for rows, window in ((made, 1000), (breakout, 0.125 * 2097152)):
    kept = []
    for i, row in enumerate(rows):
      kept = autoscale.kept_rows(kept + [row], row["env_steps"] - 2 * window)
      a, b = plateau.assess(rows[:i + 1], 256, window), plateau.assess(kept, 256, window)
      assert a == b, i
  assert len(kept) < 10
  assert len(autoscale.kept_rows(made, made[-1]["env_steps"] - 2000)) <= 20 + 6


def test_growth_stops_at_the_largest_size_and_after_a_size_that_does_not_fit():
  controller = _controller(8, 32, 4000, 0.25, max_num_envs=100, factor=4)
  assert controller.next_size() == 32
  controller.num_envs = 32
  assert controller.next_size() == 100  # capped
  controller.num_envs = 100
  assert controller.next_size() is None
  controller = _controller(8, 32, 4000, 0.25, max_num_envs=512, factor=2)
  controller.refuse(32)
  assert controller.next_size() == 16
  controller.num_envs = 16
  assert controller.next_size() is None  # 32 did not fit: never again, nor anything larger
  again = autoscale.Controller.create(debug.get_config(), json.loads(json.dumps(controller.to_json())))
  assert again.too_large == 32 and again.num_envs == 16


@pytest.mark.parametrize("flags,key", [
    ({"scaling.rule": "none"}, "autoscale.enabled"),
    ({"scaling.schedule": "0:8,1000:16"}, "autoscale.enabled"),
    ({"autoscale.max_num_envs": 4}, "autoscale.max_num_envs"),
    ({"autoscale.factor": 1}, "autoscale.factor"),
    ({"autoscale.window": 0.0}, "autoscale.window"),
])
def test_bad_settings_are_refused_in_one_line_naming_the_key(flags, key):
  config = _levels_config()
  config.update_from_flattened_dict(flags)
  errors = config_lib.check(config, num_devices=8)
  assert len(errors) == 1 and errors[0].startswith(f"config.{key}=") and "\n" not in errors[0], errors


def test_every_size_it_may_grow_to_is_checked_before_the_run_starts(tmp_path):
  config = _levels_config()
  config.update_from_flattened_dict({"mesh.data": 8, "autoscale.max_num_envs": 20})  # 16, then 20: not /8
  with pytest.raises(config_lib.ConfigError, match=r"(?s)config.autoscale.max_num_envs: at num_envs=20: .*divisible"):
    trainer.train_and_evaluate(config, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")


# The trainer. `levels` with the plateau rule's windows at 20% of 1,280 env steps, evaluated every update.

def _levels_config(**flat):
  config = debug.get_config()
  config.env_name = "levels"
  config.network.hidden_sizes = (16,)
  config.update_from_flattened_dict({
      "num_envs": 8, "num_steps": 8, "total_env_steps": 1280, "log_every": 1, "eval_every": 1, "checkpoint_every": 4,
      "scaling.rule": "recipe", "scaling.base_num_envs": 8, "autoscale.enabled": True, "autoscale.max_num_envs": 16,
      "autoscale.factor": 2, "autoscale.window": 0.2, **flat})
  return config


def _rows(workdir):
  return [{k: v for k, v in r.items() if k not in TIMING} for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"))]


@pytest.fixture(scope="module")
def grown(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("grown") / "run")
  with pytest.MonkeyPatch.context() as mp:  # as the no_plots fixture (tests/conftest.py), for the module
    mp.setattr(plots, "plot_runs", lambda workdirs, out_path: out_path)
    mp.setattr(plots, "plot_diagnostics", lambda workdirs, out_path: out_path)
    trainer.train_and_evaluate(_levels_config(), workdir)
  return workdir


def _growth(rows):
  at = [r["update"] for r in rows if "autoscale" in r]
  assert len(at) == 1, at
  return at[0]


def test_a_noise_limited_run_grows_once_and_says_so(grown):
  rows = _rows(grown)
  at = _growth(rows)
  assert [r["num_envs"] for r in rows] == [8] * at + [16] * (len(rows) - at)
  record = rows[at - 1]["autoscale"]
  assert (record["from"], record["to"], record["update"]) == (8, 16, at)
  assert rows[-1]["env_steps"] <= 1280 and rows[-1]["update"] == len(rows)
  with open(os.path.join(grown, "checkpoints", str(rows[-1]["update"]), "host", "metadata"), encoding="utf-8") as f:
    saved = json.load(f)["autoscale"]
  assert saved["num_envs"] == 16 and saved["growths"] == [record]


def _assert_grows_alike(rows, reference):
  """The same growth, at the same update, of runs equal within float reassociation (a sum over devices is
  reassociated: tests/test_train.py's device-count invariance)."""
  assert _growth(rows) == _growth(reference)
  assert [r["num_envs"] for r in rows] == [r["num_envs"] for r in reference]
  for key, atol in (("param_norm", 0.0), ("value_loss", 0.0), ("kl_mean", 1e-7)):  # KLs of ~1e-5: float32's grain
    np.testing.assert_allclose([r[key] for r in rows], [r[key] for r in reference], rtol=1e-4, atol=atol, err_msg=key)


@pytest.mark.usefixtures("no_plots")
def test_one_and_eight_devices_grow_alike(grown, tmp_path):
  workdir = str(tmp_path / "run")
  trainer.train_and_evaluate(_levels_config(**{"mesh.data": 8}), workdir)
  _assert_grows_alike(_rows(workdir), _rows(grown))


def _flags(config):
  return [f"--config.{k}={v!r}" if isinstance(v, tuple) else f"--config.{k}={v}"
          for k, v in config_lib.flat_keys(config).items()]


def test_two_processes_grow_at_the_same_update(grown, tmp_path):
  workdir = str(tmp_path / "run")
  code = local.launch([f"--workdir={workdir}", "--config=launch/configs/debug.py",
                       *_flags(_levels_config(**{"mesh.data": 8}))], num_processes=2, devices_per_process=4,
                      grace_s=30)
  assert code == 0
  _assert_grows_alike(_rows(workdir), _rows(grown))


@pytest.mark.usefixtures("no_plots")
def test_stopped_and_resumed_before_at_and_after_the_growth_it_is_the_same_run(grown, tmp_path):
  at = _growth(_rows(grown))
  stops = {at - 1, at, at + 1}
  original = preemption.StopRequest.should_stop
  workdir, config = str(tmp_path / "run"), _levels_config()
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(preemption.StopRequest, "should_stop", lambda self, update: original(self, update) or update in stops)
    for stop in sorted(stops):
      with pytest.raises(checkpoint.Preempted) as e:
        trainer.train_and_evaluate(config, workdir)
      assert e.value.update == stop
      stops.discard(stop)
    trainer.train_and_evaluate(config, workdir)
  assert _rows(workdir) == _rows(grown)


@pytest.mark.usefixtures("no_plots")
def test_a_size_that_does_not_fit_is_said_once_and_skipped(grown, tmp_path, monkeypatch, capsys):
  config = _levels_config()
  resolved = config_lib.resolve(config, num_devices=8)
  small = memory.analyse(programs.build(config, resolved=resolved)).needed
  large = memory.analyse(programs.build(config_at(config, 16), resolved=config_lib.resolve(
      config_at(config, 16), num_devices=8))).needed
  assert small < large
  monkeypatch.setenv(memory.ENV_VAR, str((small + large) // 2))
  workdir = str(tmp_path / "run")
  capsys.readouterr()
  trainer.train_and_evaluate(config, workdir)
  said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("autoscale:")]
  assert len(said) == 1 and "16 envs do not fit device memory" in said[0] and "staying at 8 envs" in said[0], said
  rows = _rows(workdir)
  assert {r["num_envs"] for r in rows} == {8} and not any("autoscale" in r for r in rows)
  # Until the growth it is the grown run's (the same updates); the run then goes on at 8 envs to its budget.
  at = _growth(_rows(grown))
  assert rows[:at - 1] == _rows(grown)[:at - 1] and rows[-1]["env_steps"] == 1280
