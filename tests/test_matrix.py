"""The interaction matrix (tests/matrix.py): every cell of the all-pairs covering set through a run's lifecycle, and
every refused pair refused by the config rules in one line per broken rule naming its key.

Lifecycle of a cell: the run, scheduled to grow and then shrink its env count, trains to the end; the same run
stopped before the growth and resumed ends with the same rows (==); `restore_from` starts a new run from its params;
`launch.evaluate`'s episodes play its saved policy; `launch.export` → `load_policy` acts as the trainer's policy.
Cells with two processes train through launch/local.py (their stop and resume: tests/test_multihost.py).
"""
from __future__ import annotations

import os
import shutil

import jax
import numpy as np
import pytest

import envs
from launch import checkpoint, export, local
from launch.config import resolve as config_lib
from launch.report import metrics_file
from launch.run import preemption, trainer
from learner import policy as policy_lib
from pipeline import dataflow
from launch.evaluate import run_episodes
from launch.run import programs
from tests import matrix

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMING = ("wall_time", "sps", "compile_time", "first_update_time")  # differ between runs by nature
CELLS, REFUSED = matrix.covering_set()
STOP_AT = 1  # an update before the growth


def _rows(workdir):
  return [{k: v for k, v in r.items() if k not in TIMING}
          for r in metrics_file.read_jsonl(os.path.join(workdir, "metrics.jsonl"))]


def _name(cell):
  return "-".join(f"{v}" for v in cell.values())


def _flags(config) -> list[str]:
  """The config as --config.KEY=VALUE flags (for launch.local's processes)."""
  flat = config_lib.flat_keys(config)
  out = []
  for key, value in flat.items():
    out.append(f"--config.{key}={value!r}" if isinstance(value, tuple) else f"--config.{key}={value}")
  return out


def _train_two_processes(config, workdir):
  code = local.launch([f"--workdir={workdir}", "--config=launch/configs/debug.py", *_flags(config)], num_processes=2,
                      devices_per_process=4, grace_s=30)
  assert code == 0


def _stopped_then_resumed(config, workdir):
  original = preemption.StopRequest.should_stop
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(preemption.StopRequest, "should_stop", lambda self, update: original(self, update) or update == STOP_AT)
    with pytest.raises(checkpoint.Preempted):
      trainer.train_and_evaluate(config, workdir)
  return trainer.train_and_evaluate(config, workdir)


def _trainer_actions(config, workdir, obs):
  """The trainer's deterministic actions on `obs`, from the run's final state restored as a resume restores it."""
  final = config.copy_and_resolve_references()
  final.num_envs = matrix.NUM_ENVS
  final.scaling.schedule = ""
  final.mesh.data = 1
  progs = programs.build(final, compile_update=False)
  lag = config_lib.resolve(final, num_devices=1).max_policy_lag  # the overlap pipeline's in-flight params
  ckpts = checkpoint.RunCheckpoints(workdir, final)
  try:
    target = progs.abstract_state
    snapshot, _ = ckpts.restore_or_init(lambda: pytest.fail("no checkpoint"),
                                        dataflow.Snapshot(state=target, stale_params=(target.params,) * lag))
  finally:
    ckpts.close()
  state = snapshot.state
  stats = state.runner.obs_norm
  from pipeline import obs_norm as obs_norm_lib  # pylint: disable=import-outside-toplevel
  seen = obs if stats is None else obs_norm_lib.normalize(stats, obs)
  head, _ = jax.jit(progs.agent.apply)(state.params, seen)
  return progs.agent.dist.mode(head)


@pytest.mark.parametrize("cell", CELLS, ids=[_name(c) for c in CELLS])
def test_cell(cell, tmp_path):
  config = matrix.config_for(cell)
  assert matrix.refusal(cell) == []
  workdir = str(tmp_path / "run")
  if cell["processes"] == "2":
    _train_two_processes(config, workdir)
  else:
    last = trainer.train_and_evaluate(config, workdir)
    resumed = str(tmp_path / "resumed")
    assert _stopped_then_resumed(config, resumed)["update"] == last["update"]
    assert _rows(resumed) == _rows(workdir)
  rows = _rows(workdir)
  assert [r["update"] for r in rows] == list(range(1, sum(matrix.UPDATES) + 1))
  assert rows[-1]["env_steps"] == config.total_env_steps
  assert all(np.isfinite(r["policy_loss"]) for r in rows)

  # restore_from: a new run (no schedule, one update) from its params.
  fresh = matrix.config_for(cell)
  fresh.scaling.schedule, fresh.total_env_steps = "", matrix.NUM_ENVS * matrix.NUM_STEPS
  fresh.restore_from = workdir
  if cell["processes"] == "1":
    assert trainer.train_and_evaluate(fresh, str(tmp_path / "restored"))["update"] == 1

  # evaluate and export: the saved policy, apart from training, acts as the trainer's policy.
  out = str(tmp_path / "policy")
  export.export(workdir, out)
  policy = policy_lib.load_policy(out)
  env = envs.make(config.env_name)
  episodes = run_episodes(env, policy.act, 4, jax.random.PRNGKey(0), True)
  assert np.all(np.isfinite(episodes["returns"]))
  obs = jax.vmap(env.reset)(jax.random.split(jax.random.PRNGKey(1), 64))[1]
  got = jax.jit(policy.act, static_argnums=2)(obs, jax.random.PRNGKey(2), True)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(_trainer_actions(config, workdir, obs)))


@pytest.mark.parametrize("pair", list(REFUSED), ids=[f"{a}={v},{b}={w}" for (a, v), (b, w) in REFUSED])
def test_refused_pair(pair):
  """Refused before anything compiles, each broken rule one line naming its key."""
  errors = REFUSED[pair]
  assert errors, f"{pair} runs: tests/matrix.py should cover it"
  assert all(e.startswith("config.") and "\n" not in e for e in errors), errors


def test_the_cells_cover_every_pair_and_the_refusals_are_the_config_rules():
  covered = set().union(*(set(matrix._pairs(c)) for c in CELLS))  # pylint: disable=protected-access
  everything = set().union(*(set(matrix._pairs(c)) for c in matrix._all_cells()))  # pylint: disable=protected-access
  assert covered | set(REFUSED) == everything and not covered & set(REFUSED)


def test_the_page_lists_the_cells():
  with open(os.path.join(ROOT, "docs", "matrix.md"), encoding="utf-8") as f:
    assert f.read() == matrix.render(), "docs/matrix.md is stale: python -m tests.matrix > docs/matrix.md"
