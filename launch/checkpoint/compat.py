"""Whether a checkpoint may be resumed by this run: its config (MUST_MATCH keys refuse, FREE_KEYS pass, others warn)
and its packed layout (a change of code the config cannot show). Refusals are ConfigErrors (exit 2), never treated
as corrupt steps."""
from __future__ import annotations

import json
from typing import Any

import ml_collections
from absl import logging

from launch.config import resolve as config_lib
from launch.config import schema as config_schema
from launch.files import fs_errors as errors
from launch.checkpoint import packed_arrays

# Each key's resume policy is defined with the key, in launch/config/schema.py: must_match keys (key -> what in the
# saved state depends on it) refuse a change; free keys do not change the trajectory; the rest change the run and
# only log a warning. pipeline.mode / max_policy_lag are free: fused and sync give identical results; only the
# overlap lag shapes the saved state (stale params versions) and the run, so that is what must match (`_policy_lag`).
MUST_MATCH = config_schema.SCHEMA.must_match()
FREE_KEYS = config_schema.SCHEMA.free_keys()


def flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = tuple(v) if isinstance(v, list) else v
  return out


def config_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
  return json.loads(json.dumps(config.to_dict()))  # tuples → lists, as they come back from the checkpoint


def _policy_lag(flat: dict[str, Any]) -> int:
  return flat.get("pipeline.max_policy_lag", 0) if flat.get("pipeline.mode") == "overlap" else 0


def check_compatible(config: ml_collections.ConfigDict, saved: dict[str, Any], where: str) -> None:
  """Raises ConfigError naming every MUST_MATCH key that differs; warns about other changed keys."""
  # A key the saved config lacks was added after it was written: that run ran as the key's default (new keys
  # default to the old behaviour), so it resumes as such instead of every new must_match key refusing it.
  now, then = flat(config_json(config)), {**flat(config_json(config_schema.SCHEMA.config())), **flat(saved)}
  # Under a scaling rule a run continues at another num_envs (launch/run/elastic.py rebuilds the envs); else refused.
  elastic_ok = now.get("scaling.rule", "none") != "none"
  errors = [f"config.{k}={now.get(k)!r} does not match {then.get(k)!r} in the checkpoint ({why})"
            for k, why in MUST_MATCH.items() if now.get(k) != then.get(k) and not (k == "num_envs" and elastic_ok)]
  if _policy_lag(now) != _policy_lag(then):
    errors.append(f"config.pipeline.mode={now.get('pipeline.mode')!r} with max_policy_lag="
                  f"{now.get('pipeline.max_policy_lag')!r} gives policy lag {_policy_lag(now)}, the checkpoint's "
                  f"is {_policy_lag(then)} (it holds that many in-flight params versions)")
  if now.get("num_envs") != then.get("num_envs") and not elastic_ok:
    errors.append(config_lib.growth_hint(saved))
  if errors:
    raise config_lib.ConfigError(
        f"cannot resume from {where}:\n  " + "\n  ".join(errors) +
        "\n  use a new --workdir (with --config.restore_from=<this run's workdir> to start from its params)")
  scheduled = bool(now.get("scaling.schedule")) and now.get("scaling.schedule") == then.get("scaling.schedule")
  scheduled = scheduled or bool(now.get("autoscale.enabled") and then.get("autoscale.enabled"))  # its own growth
  changed = [f"{k}: {then.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(now) | set(then))
             if k not in FREE_KEYS and now.get(k) != then.get(k) and not (k == "num_envs" and scheduled)]
  if changed:
    logging.warning("resuming %s with changed config keys, so this is no longer the uninterrupted run: %s", where,
                    "; ".join(changed))


def layout_diff(saved: list[list[Any]], want: list[list[Any]]) -> list[str]:
  """'path: <there> there, <here> here' per leaf that differs between two packed_arrays.layouts (its shape, else its
  dtype, else its placement)."""
  have = {path: (tuple(shape), dtype, group) for path, shape, dtype, group in saved}
  need = {path: (tuple(shape), dtype, group) for path, shape, dtype, group in want}
  out = []
  for k in sorted(set(have) | set(need)):
    a, b = have.get(k), need.get(k)
    if a != b:
      i = 0 if a is None or b is None or a[0] != b[0] else 1 if a[1] != b[1] else 2
      out.append(f"{k}: {'absent' if a is None else a[i]} there, {'absent' if b is None else b[i]} here")
  return out


def check_layout(items: dict[str, Any], saved: dict[str, Any], where: str) -> None:
  """Raises ConfigError when the saved arrays are not the ones `items` (the target) expect: a change of code (e.g. an
  env's state) that the config check cannot see. Not a corrupt step, so it is not quarantined."""
  diff = [f"{name}{d}" for name, tree in items.items() for d in layout_diff(saved[name], packed_arrays.layout(tree))]
  if diff:
    raise config_lib.ConfigError(f"cannot resume from {where}: its arrays do not fit this run's state:\n  " +
                                 "\n  ".join(diff[:8]))


def first_line(error: BaseException, limit: int = 300) -> str:
  """An error as one short line, for the messages that name an unreadable step: the file and the cause, not orbax's
  wrapped TensorStore spec."""
  return errors.unreadable(error, limit)
