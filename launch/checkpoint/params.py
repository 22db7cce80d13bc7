"""The network params of another run's checkpoint, for `config.restore_from` (a new run that starts from them), with
its observation statistics when both runs normalise observations; the params and statistics of a step read by
launch/checkpoint/reader.py (also for launch.evaluate / launch.export)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

import envs
from launch.config import resolve as config_lib
from launch.config import schema as config_schema
from launch.checkpoint import packed_arrays
from launch.files import workdir as workdir_lib
from launch.checkpoint import agree, compat, format as format_lib, reader
from pipeline import obs_norm as obs_norm_lib
from pipeline.dataflow import Snapshot

PART = "params"  # the learner item's part that is read
# What the params are a function of, besides their shapes (which read_params checks): the observations as the policy
# sees them (normalised or not, at which precision) and the network. The env is compared by its spaces (below), so a
# run may start from params trained on other levels of the same observations, e.g. Kinetix random levels → one level.
SAME_INPUTS = ("obs_norm", "obs_store") + tuple(k for k in config_schema.SCHEMA.names() if k.startswith("network."))


def read_params(path: str, target: Any, what: str | None = None) -> Any:
  """The params of the newest valid checkpoint under `path` (a run's workdir, its checkpoints/ or one step
  directory), placed with `target`'s shardings. `what` names the source in messages (default: config.restore_from).
  Raises ConfigError if there are none or they do not fit `target`."""
  what = what or f"config.restore_from={path!r}"
  return params_of(reader.newest(path, what), target, what)


def params_of(source: reader.Step, target: Any, what: str) -> Any:
  """The `params` part of a step read by launch/checkpoint/reader.py, placed with `target`'s shardings."""
  host = source.host
  part = f"['{PART}']"
  saved = [[leaf[len(part):], *rest] for leaf, *rest in host["layout"][format_lib.LEARNER] if leaf.startswith(part)]
  diff = compat.layout_diff(saved, packed_arrays.layout(target))
  if diff:
    raise config_lib.ConfigError(f"{what}: its params do not fit this network:\n  " + "\n  ".join(diff[:8]))
  # The params' words cut out of the learner's packed arrays, replicated onto the devices of `target` (every process
  # holds the same words), then unpacked there.
  words = format_lib.part_words(source.arrays[format_lib.LEARNER], host["spans"][format_lib.LEARNER][PART])
  replicated = next(iter(packed_arrays.packed_shapes(target).values())).sharding
  placed = {name: jax.make_array_from_callback(x.shape, replicated, lambda index, x=x: x[index])
            for name, x in words.items()}
  return packed_arrays.unpacker(target)(placed)


_OBS_NORM = "['runner'].obs_norm."  # the statistics' leaves in the runner item's layout


def obs_stats(source: reader.Step, where: str) -> dict[str, np.ndarray]:
  """The runner's observation statistics (mean, var, count as numpy arrays) of a step read by
  launch/checkpoint/reader.py: the runner's packed replicated words, unpacked at their offsets in the saved layout."""
  host = source.host
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
  flat = source.arrays[format_lib.RUNNER]["flat_uint32"]
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
  what = f"config.restore_from={config.restore_from!r}"
  source, failure = None, None
  try:
    source = reader.newest(path, what)
  except Exception as e:  # pylint: disable=broad-except  (raised below, once every process knows)
    failure = e
  # Every process reads the source itself: they must have read the same step (a running source may rotate between
  # their reads), or their params would differ under one replicated sharding.
  read = agree.values(-1 if source is None else source.step)
  if failure is not None:
    raise failure
  if len(set(read.tolist())) > 1:
    raise config_lib.ConfigError(f"{what}: the processes read different steps of it ({sorted(set(read.tolist()))}; "
                                 "is it still saving?); give one step directory, e.g. "
                                 f"{source.directory / str(int(read.min()))}")
  check_source(config, source.host["config"], what)
  params = params_of(source, target.state.params, what)
  want, stats = target.state.runner.obs_norm, None
  if want is not None:  # on in both runs (check_source)
    stats = obs_stats(source, f"{what} ({source.path})")
    if stats["mean"].shape != want.mean.shape:
      raise config_lib.ConfigError(f"{what}: its observation statistics do not fit this env's observations")
    stats = jax.device_put(obs_norm_lib.RunningMeanStd(mean=stats["mean"], var=stats["var"], count=stats["count"]),
                           jax.tree.map(lambda s: s.sharding, want))
  snapshot = init()
  proximal = snapshot.state.proximal
  # A fresh average (weight 1) of its own buffers: the update donates the whole state.
  proximal = None if proximal is None else proximal.replace(params=jax.tree.map(_copy, params))
  runner = snapshot.state.runner if stats is None else snapshot.state.runner.replace(obs_norm=stats)
  logging.info("new run from the params%s of %s", "" if stats is None else " and observation statistics",
               source.path)
  return Snapshot(state=snapshot.state.replace(params=params, proximal=proximal, runner=runner),
                  stale_params=(params,) * len(target.stale_params))
