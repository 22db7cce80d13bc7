"""The network params of another run's checkpoint, for `config.restore_from` (a new run that starts from them)."""
from __future__ import annotations

from typing import Any

import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from launch.config import resolve as config_lib
from launch.checkpoint import packed_arrays
from launch.files import workdir as workdir_lib
from launch.checkpoint import compat, format as format_lib
from pipeline.dataflow import Snapshot

PART = "params"  # the learner item's part that is read


def locate(path: str) -> tuple[epath.Path, int | None]:
  """(checkpoints directory, the step or None for the newest) of a run's workdir, its checkpoints/ or one step
  directory; local or gs://... (file checks through etils.epath, as orbax's)."""
  root = epath.Path(workdir_lib.absolute(path))
  if (root / "checkpoints").is_dir():
    return root / "checkpoints", None
  if root.name.isdigit():
    return root.parent, int(root.name)
  return root, None


def read_params(path: str, target: Any) -> Any:
  """The params of the newest checkpoint under `path` (a run's workdir, its checkpoints/ or one step directory),
  placed with `target`'s shardings. Raises ConfigError if there are none or they do not fit `target`."""
  path = workdir_lib.absolute(path)
  directory, step = locate(path)
  prefix = f"config.restore_from={path!r}"
  if not directory.is_dir():
    raise config_lib.ConfigError(f"{prefix}: no such directory")
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True, create=False))
  step = manager.latest_step() if step is None else step
  if step is None:
    raise config_lib.ConfigError(f"{prefix}: holds no checkpoint")
  try:
    host = manager.restore(step, args=ocp.args.Composite(host=ocp.args.JsonRestore()))["host"]
    if host.get("format") != format_lib.FORMAT:
      raise config_lib.ConfigError(f"{prefix}: step {step} was written by an earlier version of this code (another "
                                   "checkpoint format)")
    part = f"['{PART}']"
    saved = [[leaf[len(part):], *rest] for leaf, *rest in host["layout"][format_lib.LEARNER] if leaf.startswith(part)]
    diff = compat.layout_diff(saved, packed_arrays.layout(target))
    if diff:
      raise config_lib.ConfigError(f"{prefix}: its params do not fit this network:\n  " + "\n  ".join(diff[:8]))
    # The learner's packed arrays as they are, onto the devices of `target`; the params' words are cut out below.
    spans = host["spans"][format_lib.LEARNER][PART]
    replicated = next(iter(packed_arrays.packed_shapes(target).values())).sharding
    placed = {name: ocp.ArrayRestoreArgs(sharding=replicated) for name in spans}
    packed = manager.restore(step, args=ocp.args.Composite(arrays=ocp.args.PyTreeRestore(
        {format_lib.LEARNER: placed}, restore_args={format_lib.LEARNER: placed},
        partial_restore=True)))["arrays"][format_lib.LEARNER]
  except config_lib.ConfigError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise config_lib.ConfigError(f"{prefix}: could not read params of step {step}: {compat.first_line(e)}") from e
  finally:
    manager.close()
  return packed_arrays.unpacker(target)(format_lib.part_words(packed, spans))


def start_from(path: str, snapshot: Snapshot, target: Snapshot) -> Snapshot:
  """A new run's `snapshot` with the params of the run at `path` (PPO-EWMA's average and the in-flight versions
  start at them too)."""
  params = read_params(path, target.state.params)
  proximal = snapshot.state.proximal
  proximal = None if proximal is None else proximal.replace(params=params)  # a fresh average: weight 1
  logging.info("new run from the params of %s", path)
  return Snapshot(state=snapshot.state.replace(params=params, proximal=proximal),
                  stale_params=(params,) * len(target.stale_params))
