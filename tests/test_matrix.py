"""The interaction matrix (tests/matrix.py): every cell of the all-pairs covering set through a run's lifecycle, and
every refused pair refused by the config rules in one line per broken rule naming its key.

Lifecycle of a cell: the run, scheduled to grow or shrink its env count (or grown by autoscale), trains to the end; the
at the size change (its checkpoints after the boundary removed, as a kill there leaves it) resumes and ends with the
same rows (==); `restore_from` starts a new run from its params;
`launch.evaluate`'s episodes play its saved policy; `launch.export` → `load_policy` acts as the trainer's policy.
Cells with two processes train through launch/local.py (their stop and resume: tests/test_multihost.py).
"""
from __future__ import annotations

import json
import os
import shutil

import jax
import numpy as np
import pytest

import envs
from launch import checkpoint, export, local
from launch.config import resolve as config_lib
from launch.report import metrics_file
from launch.run import autoscale, preemption, trainer
from learner import policy as policy_lib
from launch.evaluate import run_episodes
from launch.run import programs
from tests import matrix

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMING = ("wall_time", "sps", "compile_time", "first_update_time")  # differ between runs by nature
CELLS, REFUSED = matrix.covering_set()
STOP_AT = 1  # where the restore_from run stops


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


def _stop_at(train, config, workdir):
  """`train(config, workdir)` stopped after update STOP_AT, as by SIGTERM."""
  original = preemption.StopRequest.should_stop
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(preemption.StopRequest, "should_stop", lambda self, update: original(self, update) or update == STOP_AT)
    return train(config, workdir)


def _trainer_actions(config, workdir, obs):
  """The trainer's deterministic actions on `obs` (its agent and observation statistics) with the params the run's
  final checkpoint holds, read by the checkpoint reader rather than from the exported files."""
  from launch.checkpoint import saved_run  # pylint: disable=import-outside-toplevel
  from pipeline import obs_norm as obs_norm_lib  # pylint: disable=import-outside-toplevel
  run = saved_run.load(workdir)
  agent = programs.build_agent(config, config_lib.resolve(config, num_devices=8, planning=True))
  saved = run.policy.spec.obs_norm
  if saved is not None:
    stats = obs_norm_lib.RunningMeanStd(mean=jax.numpy.float32(saved.mean), var=jax.numpy.float32(saved.var),
                                        count=jax.numpy.float32(1))
    obs = obs_norm_lib.normalize(stats, obs)
  head, _ = jax.jit(agent.apply)(run.policy.params, obs)
  return agent.dist.mode(head)


class _SharedPrograms:
  """The trainer's `programs.build`, with the programs of a config, segment and mesh built once per cell: the resumed
  run's segment and the restore_from run take the first run's (compiled programs hold no run state; the
  entity cells' update compiles for ~12 s each at -O0). Keyed by everything that shapes a program: the config
  (restore_from only seeds the params), the resolved values (the segment's anneal among them) and the mesh."""

  def __init__(self):
    self.build, self.programs, self.built = programs.build, {}, 0

  def __call__(self, config, mesh=None, *, resolved=None, **kwargs):
    keys = {k: v for k, v in config_lib.flat_keys(config).items() if k != "restore_from"}
    devices = None if mesh is None else tuple(d.id for d in mesh.devices.flat)
    key = (repr(sorted(keys.items())), repr(resolved), devices, repr(sorted(kwargs.items())))
    if key not in self.programs:
      self.programs[key] = self.build(config, mesh, resolved=resolved, **kwargs)
      self.built += 1
    return self.programs[key]


def run_cell(cell, tmp_path):
  """One cell through the lifecycle (test_cell here, and tests/test_matrix_more.py for the other half of the cells:
  pytest-xdist gives each module to one worker, so the two halves run side by side)."""
  shared = _SharedPrograms()
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(programs, "build", shared)
    if cell["resize"] == "autoscale":  # noise-limited at the size change (processes started here inherit it)
      mp.setenv(autoscale.TEST_GROW_AT_ENV, str(matrix.change_at(cell)))
    _run_cell(cell, tmp_path)
  if cell["processes"] == "1":  # one per segment: the others were shared
    assert shared.built == len(matrix.UPDATES), shared.built


def _run_cell(cell, tmp_path):
  config = matrix.config_for(cell)
  assert matrix.refusal(cell) == []
  workdir = str(tmp_path / "run")
  if cell["processes"] == "2":
    _train_two_processes(config, workdir)
  else:
    last = trainer.train_and_evaluate(config, workdir)
    # Stopped at the size change: the run as a kill right after its boundary checkpoint leaves it (the later steps
    # gone), resumed; it changes size and ends with the uninterrupted run's rows.
    resumed = str(tmp_path / "resumed")
    shutil.copytree(workdir, resumed)
    for step in os.listdir(f"{resumed}/checkpoints"):
      if step.isdigit() and int(step) > matrix.UPDATES[0]:
        shutil.rmtree(f"{resumed}/checkpoints/{step}")
    assert trainer.train_and_evaluate(config, resumed)["update"] == last["update"]
    assert _rows(resumed) == _rows(workdir)
  rows = _rows(workdir)
  assert [r["update"] for r in rows] == list(range(1, sum(matrix.UPDATES) + 1))
  first, then = matrix.SIZES if cell["resize"] != "shrink" else matrix.SIZES[::-1]
  assert [r["num_envs"] for r in rows] == [first] * matrix.UPDATES[0] + [then] * matrix.UPDATES[1]
  assert [r["update"] for r in rows if "autoscale" in r] == ([matrix.UPDATES[0]] if cell["resize"] == "autoscale"
                                                             else [])
  assert rows[-1]["env_steps"] == config.total_env_steps
  assert all(np.isfinite(r["policy_loss"]) for r in rows)

  # restore_from: a new run from its params (the cell's own programs: stopped after its first update).
  fresh = matrix.config_for(cell)
  fresh.restore_from = workdir
  if cell["processes"] == "1":
    restored = str(tmp_path / "restored")
    with pytest.raises(checkpoint.Preempted):
      _stop_at(trainer.train_and_evaluate, fresh, restored)
    assert [r["update"] for r in _rows(restored)] == [1]

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


def _halves(cells):
  """The cells in two halves of about equal cost (matrix.cost), costliest first: one per pytest-xdist worker."""
  halves, costs = ([], []), [0.0, 0.0]
  for cell in sorted(cells, key=matrix.cost, reverse=True):
    lighter = costs.index(min(costs))
    halves[lighter].append(cell)
    costs[lighter] += matrix.cost(cell)
  return halves


HALF = _halves(CELLS)[0]  # this module's; the rest: tests/test_matrix_more.py


@pytest.mark.parametrize("cell", HALF, ids=[_name(c) for c in HALF])
@pytest.mark.usefixtures("no_plots")  # figures are tested elsewhere
def test_cell(cell, tmp_path):
  run_cell(cell, tmp_path)


@pytest.mark.parametrize("pair", list(REFUSED), ids=[f"{a}={v},{b}={w}" for (a, v), (b, w) in REFUSED])
def test_refused_pair(pair):
  """Refused before anything compiles, each broken rule one line naming its key."""
  errors = REFUSED[pair]
  assert errors, f"{pair} runs: tests/matrix.py should cover it"
  assert all(e.startswith("config.") and "\n" not in e for e in errors), errors


def test_the_committed_cells_are_solved_for_these_axes_and_rules():
  """tests/data/matrix_cells.json was solved for this AXES, `reasons` and `cost` (else: python -m tests.matrix
  --solve > docs/matrix.md); its cells are distinct combinations the rules let run. That they cover every pair that
  can run is test_refused_pair's: a pair they miss is refused there, and fails unless the config rules refuse it."""
  with open(matrix.SOLVED, encoding="utf-8") as f:
    assert json.load(f)["fingerprint"] == matrix.fingerprint(), (
        "tests/data/matrix_cells.json is stale: python -m tests.matrix --solve > docs/matrix.md")
  assert all(set(c) == set(matrix.AXES) and all(c[a] in matrix.AXES[a] for a in c) for c in CELLS)
  assert len({tuple(sorted(c.items())) for c in CELLS}) == len(CELLS)
  assert not any(matrix.reasons(c) for c in CELLS)
  covered = set().union(*(set(matrix._pairs(c)) for c in CELLS))  # pylint: disable=protected-access
  assert covered | set(REFUSED) == matrix.every_pair() and not covered & set(REFUSED)


def test_the_page_lists_the_cells():
  with open(os.path.join(ROOT, "docs", "matrix.md"), encoding="utf-8") as f:
    assert f.read() == matrix.render(), "docs/matrix.md is stale: python -m tests.matrix > docs/matrix.md"
