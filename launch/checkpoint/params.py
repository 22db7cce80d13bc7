"""The network params of another run's checkpoint, for `config.restore_from` (a new run that starts from them), with
its observation statistics when both runs normalise observations; and those statistics alone (launch.evaluate)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

import envs
from launch.config import resolve as config_lib
from launch.config import schema as config_schema
from launch.checkpoint import packed_arrays
from launch.files import workdir as workdir_lib
from launch.checkpoint import compat, format as format_lib
from pipeline import obs_norm as obs_norm_lib
from pipeline.dataflow import Snapshot

PART = "params"  # the learner item's part that is read
# What the params are a function of, besides their shapes (which read_params checks): the observations as the policy
# sees them (normalised or not, at which precision) and the network. The env is compared by its spaces (below), so a
# run may start from params trained on other levels of the same observations, e.g. Kinetix random levels → one level.
SAME_INPUTS = ("obs_norm", "obs_store") + tuple(k for k in config_schema.SCHEMA.names() if k.startswith("network."))


def locate(path: str) -> tuple[epath.Path, int | None]:
  """(checkpoints directory, the step or None for the newest) of a run's workdir, its checkpoints/ or one step
  directory; local or gs://... (file checks through etils.epath, as orbax's)."""
  root = epath.Path(workdir_lib.absolute(path))
  if (root / "checkpoints").is_dir():
    return root / "checkpoints", None
  if root.name.isdigit():
    return root.parent, int(root.name)
  return root, None


def _newest(path: str) -> tuple[ocp.CheckpointManager, epath.Path, int, str]:
  """(read-only manager, checkpoints directory, step, error prefix) of the run at `path`; ConfigError if none."""
  directory, step = locate(path)
  prefix = f"config.restore_from={path!r}"
  if not directory.is_dir():
    raise config_lib.ConfigError(f"{prefix}: no such directory")
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True, create=False))
  step = manager.latest_step() if step is None else step
  if step is None:
    manager.close()
    raise config_lib.ConfigError(f"{prefix}: holds no checkpoint")
  return manager, directory, step, prefix


def read_params(path: str, target: Any) -> Any:
  """The params of the newest checkpoint under `path` (a run's workdir, its checkpoints/ or one step directory),
  placed with `target`'s shardings. Raises ConfigError if there are none or they do not fit `target`."""
  manager, _, step, prefix = _newest(workdir_lib.absolute(path))
  try:
    return _read_params(manager, step, _host(manager, step, prefix), target, prefix)
  finally:
    manager.close()


def _host(manager: ocp.CheckpointManager, step: int, prefix: str) -> dict[str, Any]:
  try:
    host = manager.restore(step, args=ocp.args.Composite(host=ocp.args.JsonRestore()))["host"]
  except Exception as e:  # pylint: disable=broad-except
    raise config_lib.ConfigError(f"{prefix}: could not read step {step}: {compat.first_line(e)}") from e
  if host.get("format") != format_lib.FORMAT:
    raise config_lib.ConfigError(f"{prefix}: step {step} was written by an earlier version of this code (another "
                                 "checkpoint format)")
  return host


def _read_params(manager: ocp.CheckpointManager, step: int, host: dict[str, Any], target: Any, prefix: str) -> Any:
  try:
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
  return packed_arrays.unpacker(target)(format_lib.part_words(packed, spans))


_OBS_NORM = "['runner'].obs_norm."  # the statistics' leaves in the runner item's layout


def read_obs_stats(manager: ocp.CheckpointManager, step: int, host: dict[str, Any],
                   where: str) -> dict[str, np.ndarray]:
  """The runner's observation statistics alone (mean, var, count as numpy arrays): the packed replicated words of
  the runner, unpacked at their offsets in the saved layout (the env rows are not read)."""
  layout = host["layout"][format_lib.RUNNER]
  if layout is None:
    raise config_lib.ConfigError(f"{where}: the runner was saved unpacked (separate actor devices); reading its "
                                 "observation statistics alone is not supported")
  offset, leaves = 0, {}
  for path, shape, dtype, group in layout:  # the statistics come first among the runner's replicated leaves
    if group != "flat":
      continue
    if not path.startswith(_OBS_NORM):
      if leaves:
        break
      raise config_lib.ConfigError(f"{where}: the runner's first replicated leaf is {path}, not the observation "
                                   "statistics")
    if np.dtype(dtype).itemsize != 4:
      raise config_lib.ConfigError(f"{where}: unexpected observation statistic {path} ({dtype})")
    size = int(np.prod(shape))
    leaves[path[len(_OBS_NORM):]] = (offset, size, shape, dtype)
    offset += size
  if not {"mean", "var", "count"} <= set(leaves):
    raise config_lib.ConfigError(f"{where}: no observation statistics in the checkpoint")
  # Every process reads the same words onto a device of its own (then placed as the caller needs).
  placed = {"flat_uint32": ocp.ArrayRestoreArgs(sharding=jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))}
  packed = manager.restore(step, args=ocp.args.Composite(arrays=ocp.args.PyTreeRestore(
      {format_lib.RUNNER: placed}, restore_args={format_lib.RUNNER: placed},
      partial_restore=True)))["arrays"][format_lib.RUNNER]
  flat = np.asarray(packed["flat_uint32"])
  return {name: flat[start:start + size].view(np.dtype(dtype)).reshape(shape)
          for name, (start, size, shape, dtype) in leaves.items()}


def _spaces(env_name: str) -> tuple[Any, Any]:
  """What the params' inputs and outputs are in `env_name`: its observations' shapes and dtypes, its action space."""
  env = envs.make(env_name)
  return jax.tree.map(lambda s: (tuple(s.shape), str(s.dtype)), env.observation_spec), env.action_space


def check_source(config: ml_collections.ConfigDict, saved: dict[str, Any], prefix: str) -> None:
  """Raises a one-line ConfigError naming the keys whose values in this run and in the source run (`saved`, its
  config) make the source's params mean something else here: SAME_INPUTS, and env_name when the envs' observation or
  action spaces differ. A key the saved config lacks ran as its default (as compat.check_compatible reads it)."""
  now = compat.flat(compat.config_json(config))
  then = {**compat.flat(compat.config_json(config_schema.SCHEMA.config())), **compat.flat(saved)}
  keys = [k for k in SAME_INPUTS if now.get(k) != then.get(k)]
  if now["env_name"] != then["env_name"]:
    try:
      same_spaces = _spaces(now["env_name"]) == _spaces(then["env_name"])
    except (ValueError, ImportError) as e:  # an unknown env, a suite not installed here
      raise config_lib.ConfigError(f"{prefix}: its env {then['env_name']!r} cannot be built here: "
                                   f"{compat.first_line(e)}") from e
    if not same_spaces:
      keys.insert(0, "env_name")
  if keys:
    raise config_lib.ConfigError(f"{prefix}: its params mean something else in this run: " + ", ".join(
        f"config.{k}={now.get(k)!r} (there {then.get(k)!r})" for k in keys))


def _copy(x: jax.Array) -> jax.Array:
  return jax.device_put(x, x.sharding, donate=False, may_alias=False)


def start_from(config: ml_collections.ConfigDict, init: Callable[[], Snapshot], target: Snapshot) -> Snapshot:
  """A new run (`init()`, called once the source is checked) with the params of the run at config.restore_from
  (PPO-EWMA's average and the in-flight versions start at them too) and, when both normalise observations, its
  observation statistics: the params were trained on observations scaled by them, and with their count they move
  as slowly as they would have in the source run."""
  path = workdir_lib.absolute(config.restore_from)
  manager, directory, step, prefix = _newest(path)
  try:
    host = _host(manager, step, prefix)
    check_source(config, host["config"], prefix)
    params = _read_params(manager, step, host, target.state.params, prefix)
    want, stats = target.state.runner.obs_norm, None
    if want is not None:  # on in both runs (check_source)
      stats = read_obs_stats(manager, step, host, f"{prefix} ({directory / str(step)})")
      if stats["mean"].shape != want.mean.shape:
        raise config_lib.ConfigError(f"{prefix}: its observation statistics do not fit this env's observations")
      stats = jax.device_put(obs_norm_lib.RunningMeanStd(mean=stats["mean"], var=stats["var"], count=stats["count"]),
                             jax.tree.map(lambda s: s.sharding, want))
  finally:
    manager.close()
  snapshot = init()
  proximal = snapshot.state.proximal
  # A fresh average (weight 1) of its own buffers: the update donates the whole state.
  proximal = None if proximal is None else proximal.replace(params=jax.tree.map(_copy, params))
  runner = snapshot.state.runner if stats is None else snapshot.state.runner.replace(obs_norm=stats)
  logging.info("new run from the params%s of %s", "" if stats is None else " and observation statistics", path)
  return Snapshot(state=snapshot.state.replace(params=params, proximal=proximal, runner=runner),
                  stale_params=(params,) * len(target.stale_params))
