"""The interaction matrix: the trainer's feature axes crossed pairwise, so that every pair of feature values is run
together in at least one cell (an all-pairs covering set, not the full product), and every pair that cannot work is
refused by a config rule naming its keys. tests/test_matrix.py runs the cells through a run's lifecycle;
docs/matrix.md lists them (`python -m tests.matrix > docs/matrix.md`; tests/test_matrix.py fails when it is stale).

A feature added to the trainer joins the matrix: an axis here (its values, and what each sets in the config), and
a refusal rule for any value it cannot be combined with.
"""
from __future__ import annotations

import itertools
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
    "resize": {"grow": {}, "shrink": {}},  # the schedule: SIZES[0] → SIZES[1] envs, or back (config_for)
}

SIZES = (16, 32)  # the env counts of a cell's two segments (divisible by 8 devices): grown, or in reverse shrunk
NUM_STEPS = 8
UPDATES = (2, 2)  # the updates of each segment


def config_for(cell: dict[str, str]) -> ml_collections.ConfigDict:
  """The cell's tiny config (launch/configs/debug.py, sized so that its updates take milliseconds)."""
  from launch.configs import debug  # pylint: disable=import-outside-toplevel  (docs generation needs no jax)
  config = debug.get_config()
  config.env_name = "levels" if cell["resets"] == "sfl" else "cue"
  first, then = SIZES if cell["resize"] == "grow" else SIZES[::-1]
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


def covering_set() -> tuple[list[dict[str, str]], dict[tuple, list[str]]]:
  """(the cells: valid combinations covering every pair of values that some valid combination has, chosen greedily
  (most new pairs per unit of `cost`; then any cell whose pairs the others cover goes) and deterministically; the refused pairs: each pair no valid combination has → the errors of its refusal cell,
  the combination with that pair that breaks the fewest rules)."""
  every = list(_all_cells())
  valid = [c for c in every if not reasons(c)]
  pairs_of = {tuple(c.values()): set(_pairs(c)) for c in valid}
  possible = set().union(*pairs_of.values())
  uncovered = set(possible)
  cells = []
  while uncovered:  # the weighted greedy set cover: the most new pairs per unit of cost
    best = max(valid, key=lambda c: len(pairs_of[tuple(c.values())] & uncovered) / cost(c))
    cells.append(best)
    uncovered -= pairs_of[tuple(best.values())]
  for cell in sorted(cells, key=cost, reverse=True):  # then the cells whose pairs the others cover go, costliest first
    others = [c for c in cells if c is not cell]
    if set().union(*(pairs_of[tuple(c.values())] for c in others)) >= pairs_of[tuple(cell.values())]:
      cells = others
  refused = {}
  for pair in sorted(set().union(*(set(_pairs(c)) for c in every)) - possible):
    cell = min((c for c in every if all(c[a] == v for a, v in pair)), key=lambda c: len(reasons(c)))
    refused[pair] = refusal(cell)
  return cells, refused


def cost(cell: dict[str, str]) -> float:
  """A cell's test time relative to a flat one-process cell's (measured with two pytest-xdist workers on 2 cores,
  2026-12-07: flat cells 18-44 s, two-process flat 55-68 s, entity-network cells 105-146 s, two-process entity 180 s;
  the entity update compiles ~5x longer than the MLP's)."""
  return (4.0 if cell["network"] == "entity" else 1.0) * (1.5 if cell["processes"] == "2" else 1.0)


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
    out.append("each process holds a part of the mesh")
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
           "one cell below (an all-pairs covering set, chosen greedily by pairs per unit of test time), and every pair that cannot is refused before "
           "anything compiles, by a config rule whose one-line message names the keys.", "",
           "Each cell is a tiny run of the `cue`, `cue_entities` or `levels` env (pure JAX), scheduled to grow from "
           f"{SIZES[0]} to {SIZES[1]} envs or to shrink from {SIZES[1]} to {SIZES[0]} (axis `resize`), and goes "
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
  print(render(), end="")
