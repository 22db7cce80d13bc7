"""The interaction matrix: the trainer's feature axes crossed pairwise, so that every pair of feature values is run
together in at least one cell (an all-pairs covering set, not the full product), and every pair that cannot work is
refused by a config rule naming its keys. tests/test_matrix.py runs the cells through a run's lifecycle;
docs/matrix.md lists them (`python -m tests.matrix > docs/matrix.md`; tests/test_matrix.py fails when it is stale).
The cells are solved once and committed (tests/data/matrix_cells.json): `python -m tests.matrix --solve >
docs/matrix.md` after changing an axis, a refusal reason or a cost.

A feature added to the trainer joins the matrix: an axis here (its values, and what each sets in the config), and
a refusal rule for any value it cannot be combined with.
"""
from __future__ import annotations

import hashlib
import inspect
import itertools
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

import ml_collections

# axis → value → the config keys it sets. The first value of each axis is the default every other cell keeps.
AXES: dict[str, dict[str, dict[str, Any]]] = {
    "observation": {"flat": {}, "entity": {"env_name": "cue_entities"}},
    "network": {"mlp": {"network.kind": "mlp"}, "entity": {"network.kind": "entity"}},
    "resets": {"plain": {}, "pool": {"reset_pool.size": 16, "reset_pool.refresh": 4},
               "sfl": {"level_sampler.kind": "sfl", "reset_pool.size": 16, "reset_pool.refresh": 4}},
    "obs_norm": {"off": {"obs_norm": False}, "on": {"obs_norm": True}},
    "obs_store": {"float32": {"obs_store": "float32"}, "bfloat16": {"obs_store": "bfloat16"}},
    "pipeline": {"fused": {"pipeline.mode": "fused"}, "sync": {"pipeline.mode": "sync"},
                 "overlap": {"pipeline.mode": "overlap", "pipeline.max_policy_lag": 1}},
    "devices": {"1": {"mesh.data": 1}, "8": {"mesh.data": 8}},
    "processes": {"1": {}, "2": {}},
    "ewma": {"off": {"ewma.enabled": False}, "on": {"ewma.enabled": True}},
    "outer_step": {"none": {"outer_step.mode": "none"}, "adaptive_kl": {"outer_step.mode": "adaptive_kl"}},
    "diagnostics": {"on": {"diagnostics.enabled": True}, "off": {"diagnostics.enabled": False}},
    "shuffle": {"global": {}, "local": {"sgd.shuffle": "local"}},
    "sticky": {"off": {}, "on": {"sticky_actions": 0.25}},
    "eval": {"mode": {}, "sampled": {"eval.policy": "sampled"}},
    # The schedule: SIZES[0] → SIZES[1] envs, or back; or autoscale's growth (its verdict placed by the test hook).
    "resize": {"grow": {}, "shrink": {}, "autoscale": {}},
}

SIZES = (16, 32)  # the env counts of a cell's two segments (divisible by 8 devices): grown, or in reverse shrunk
NUM_STEPS = 8
UPDATES = (2, 2)  # the updates of each segment


def change_at(cell: dict[str, str]) -> int:
  """The env step where the cell's run changes size (after update UPDATES[0])."""
  return UPDATES[0] * (SIZES[0] if cell["resize"] != "shrink" else SIZES[1]) * NUM_STEPS


def config_for(cell: dict[str, str]) -> ml_collections.ConfigDict:
  """The cell's tiny config (launch/configs/debug.py, sized so that its updates take milliseconds)."""
  from launch.configs import debug  # pylint: disable=import-outside-toplevel  (docs generation needs no jax)
  config = debug.get_config()
  config.env_name = "levels" if cell["resets"] == "sfl" else "cue"
  first, then = SIZES if cell["resize"] != "shrink" else SIZES[::-1]
  config.num_envs, config.num_steps = first, NUM_STEPS
  config.num_minibatches, config.update_epochs = 2, 2
  config.network.hidden_sizes = (16,)
  config.network.entity_width, config.network.entity_layers = 16, 1
  config.network.entity_heads, config.network.entity_qkv = 4, 8
  config.level_sampler.buffer_size, config.level_sampler.batch_size = 8, 16
  config.level_sampler.num_batches, config.level_sampler.rescore_every = 1, 2
  config.level_sampler.rollout_steps = 4
  config.scaling.rule, config.scaling.base_num_envs = "recipe", SIZES[0]
  change_at = UPDATES[0] * first * NUM_STEPS
  if cell["resize"] == "autoscale":  # grows at update UPDATES[0]: tests/test_matrix.py sets autoscale's test hook
    config.autoscale.enabled, config.autoscale.max_num_envs, config.autoscale.factor = True, then, then // first
    config.autoscale.window = 0.01
  else:
    config.scaling.schedule = f"0:{first},{change_at}:{then}"
  config.total_env_steps = change_at + UPDATES[1] * then * NUM_STEPS
  config.log_every = config.eval_every = 1
  config.checkpoint_every = 100  # saves at the boundaries (the hand-overs) and the end only
  config.keep_checkpoints = 3
  config.eval_episodes = 8
  for axis, value in cell.items():
    config.update_from_flattened_dict(AXES[axis][value])
  return config


def refusal(cell: dict[str, str]) -> list[str]:
  """The config errors of the cell ([] if it can run), as the trainer reports them before compiling anything."""
  from launch.config import resolve as config_lib  # pylint: disable=import-outside-toplevel
  processes = int(cell["processes"])
  return config_lib.check(config_for(cell), num_devices=8, num_processes=processes)


def _pairs(cell: dict[str, str]) -> Iterator[tuple[tuple[str, str], tuple[str, str]]]:
  return itertools.combinations(sorted(cell.items()), 2)


def _all_cells() -> Iterator[dict[str, str]]:
  names = list(AXES)
  for values in itertools.product(*(list(AXES[a]) for a in names)):
    yield dict(zip(names, values))


SOLVED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "matrix_cells.json")


def fingerprint() -> str:
  """What the covering set depends on: the axes, the refusal reasons and the costs (their source)."""
  text = repr(AXES) + inspect.getsource(reasons) + inspect.getsource(cost)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def every_pair() -> set[tuple[tuple[str, str], tuple[str, str]]]:
  """Every pair of values of two axes (sorted as `_pairs` yields them)."""
  return {tuple(sorted(((a, v), (b, w)))) for a, b in itertools.combinations(AXES, 2)
          for v in AXES[a] for w in AXES[b]}


def covering_set() -> tuple[list[dict[str, str]], dict[tuple, list[str]]]:
  """(the cells, the refused pairs → the errors of each one's refusal cell): the cells `solve` found, as committed in
  tests/data/matrix_cells.json (solving takes minutes of CPU; `python -m tests.matrix --solve` rewrites the file when
  AXES, `reasons` or `cost` change, and tests/test_matrix.py fails while the file's fingerprint is stale). Every pair
  the cells do not hold is refused; tests/test_matrix.py checks each refusal with the config rules."""
  with open(SOLVED, encoding="utf-8") as f:
    cells = json.load(f)["cells"]
  covered = set().union(*(set(_pairs(c)) for c in cells))
  refused = {}
  for pair in sorted(every_pair() - covered):
    refused[pair] = refusal(_refusal_cell(pair))
  return cells, refused


def _refusal_cell(pair) -> dict[str, str]:
  """The combination with `pair` that breaks the fewest rules (the first in `_all_cells`' order among those)."""
  return min((c for c in _all_cells() if all(c[a] == v for a, v in pair)), key=lambda c: len(reasons(c)))


def solve() -> list[dict[str, str]]:
  """The valid combinations of least total `cost` that cover every pair of values some valid combination has.

  A weighted set cover solved exactly, as a 0/1 integer program (scipy.optimize.milp, HiGHS, which jax's own scipy
  dependency brings): minimise the summed cost of the chosen combinations such that every pair is in one. Each cost is
  raised by a distinct share below 1e-6 (by the combination's place in `_all_cells`' order), so that the optimum is
  unique and the page does not depend on the solver's tie-breaking."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from scipy import optimize, sparse  # pylint: disable=import-outside-toplevel
  valid = [c for c in _all_cells() if not reasons(c)]
  bit: dict[tuple, int] = {}
  rows, cols = [], []
  for j, cell in enumerate(valid):
    for pair in _pairs(cell):
      rows.append(bit.setdefault(pair, len(bit)))
      cols.append(j)
  has = sparse.csr_array((np.ones(len(rows)), (rows, cols)), shape=(len(bit), len(valid)))
  costs = np.array([cost(c) for c in valid]) * (1 + 1e-6 * np.arange(len(valid)) / len(valid))
  solved = optimize.milp(costs, constraints=optimize.LinearConstraint(has, lb=1), integrality=np.ones(len(valid)),
                         bounds=optimize.Bounds(0, 1), options={"mip_rel_gap": 0})
  if not solved.success:
    raise RuntimeError(f"the covering set's integer program: {solved.message}")
  chosen = np.flatnonzero(solved.x > 0.5)
  return [valid[j] for j in sorted(chosen, key=lambda j: (-costs[j], j))]


def cost(cell: dict[str, str]) -> float:
  """A cell's test time relative to a flat one-device, one-process cell's. Measured alone on 2 cores (2026-12-07):
  flat 15 s, entity network 57 s on one device and 72 s on eight (its update compiles ~5x longer than the MLP's);
  two processes compile everything twice (flat 8-device two-process cells ~55 s in CI beside ~35 s one-process ones),
  and eight virtual devices slow most when the CPU is shared (in CI an entity cell took 261 s on eight devices, 125 s
  on one)."""
  return ((4.0 if cell["network"] == "entity" else 1.0) * (1.5 if cell["processes"] == "2" else 1.0)
          * (1.4 if cell["devices"] == "8" else 1.0))


def reasons(cell: dict[str, str]) -> list[str]:
  """Why the config rules refuse the cell ([] if they do not), written out here so that choosing the cells needs no
  env or config to be built; tests/test_matrix.py checks the config rules agree."""
  entity = cell["observation"] == "entity"
  out = []
  if (cell["network"] == "entity") != entity:
    out.append("each network needs its observation kind")
  if entity and cell["obs_norm"] == "on":
    out.append("obs_norm normalises flat observations only")
  if entity and cell["resets"] == "sfl":
    out.append("SFL needs levels that say whether they were solved")
  if cell["resets"] == "sfl" and cell["pipeline"] != "fused":
    out.append("SFL runs in the fused update only")
  if cell["processes"] == "2" and cell["pipeline"] != "fused":
    out.append("the staged pipeline runs in one process")
  if cell["processes"] == "2" and cell["devices"] == "1":
    out.append("the mesh takes whole processes")
  if cell["outer_step"] != "none" and (cell["diagnostics"] == "off" or cell["pipeline"] != "fused"):
    out.append("outer-step control reads the measured KL, in the fused update")
  return out


def render() -> str:
  """docs/matrix.md."""
  cells, refused = covering_set()
  axes = list(AXES)
  lines = ["# The interaction matrix", "",
           "Generated by `python -m tests.matrix > docs/matrix.md` from `tests/matrix.py`; `tests/test_matrix.py` runs "
           "every cell and fails when this page is stale.", "",
           "The trainer's feature axes, crossed pairwise: every pair of values that can run together does in at least "
           "one cell below (the all-pairs covering set of least total test time, solved exactly as an integer "
           "program), and every pair that cannot is refused before anything compiles, by a config rule whose one-line message names the keys.", "",
           "Each cell is a tiny run of the `cue`, `cue_entities` or `levels` env (pure JAX), scheduled to grow from "
           f"{SIZES[0]} to {SIZES[1]} envs or to shrink from {SIZES[1]} to {SIZES[0]}, or grown by autoscale (its "
           "verdict placed by a test hook; axis `resize`), and goes "
           "through the lifecycle: train; stop at the size change and resume (the rows equal the uninterrupted "
           "run's); `restore_from` into a new run; "
           "evaluate the saved policy; export it and load it apart from training (its actions equal the trainer's).",
           "", "## Axes", "", "| axis | values (the first is every other cell's) |", "| --- | --- |"]
  lines += [f"| {a} | {', '.join(AXES[a])} |" for a in axes]
  lines += ["", f"## Cells ({len(cells)})", "", "| # | " + " | ".join(axes) + " |",
            "| --- | " + " | ".join("---" for _ in axes) + " |"]
  lines += [f"| {i} | " + " | ".join(c[a] for a in axes) + " |" for i, c in enumerate(cells)]
  lines += ["", f"## Refused pairs ({len(refused)})", "", "| pair | the refusal |", "| --- | --- |"]
  for ((a, v), (b, w)), errors in refused.items():
    lines.append(f"| {a}={v}, {b}={w} | {'; '.join(errors).replace('|', '/')} |")
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  if sys.argv[1:] == ["--solve"]:  # after a change of AXES, reasons or cost: minutes of CPU
    with open(SOLVED, "w", encoding="utf-8") as f:
      json.dump({"fingerprint": fingerprint(), "cells": solve()}, f, indent=1)
      f.write("\n")
  print(render(), end="")
