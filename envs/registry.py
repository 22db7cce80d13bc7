"""Maps a config's `env_name` to an environment instance.

Built-ins are plain names; adapters are chosen by prefix (`gymnax:<id>`, `brax:<name>[@<backend>]`,
`kinetix:<s|m|l|level>[@flat|@entity]`, `craftax:<id>`, and `cartpole_substeps:<K>`: CartPole integrated in K substeps, a
benchmark env whose step cost is tunable). Unknown names raise UnknownEnvError listing what is available and a
missing optional suite raises extras.MissingExtraError naming the install command, so config validation can report
either before anything compiles.
"""
from __future__ import annotations

import functools
from collections.abc import Callable

from envs import base, cartpole, cue, cue_entities, levels, sticky

BUILTIN: dict[str, Callable[[], base.Environment]] = {
    "CartPole-v1": cartpole.CartPole,
    "cue": cue.CueEnv,
    "levels": levels.LevelsEnv,
    "cue_entities": cue_entities.CueEntitiesEnv,
}
PREFIXES = ("gymnax", "brax", "kinetix", "craftax", "cartpole_substeps")


UnknownEnvError = base.UnknownEnvError  # raised by the adapters too (envs/base.py)


def _make_gymnax(env_id: str) -> base.Environment:
  from envs import gymnax_adapter  # pylint: disable=import-outside-toplevel
  gymnax = gymnax_adapter._import_gymnax()  # pylint: disable=protected-access
  if env_id not in gymnax.registered_envs:
    raise UnknownEnvError(f'"{env_id}" is not a gymnax environment; gymnax has: {", ".join(gymnax.registered_envs)}')
  return gymnax_adapter.GymnaxEnv(env_id)


def _make_brax(spec: str) -> base.Environment:
  from envs import brax_adapter  # pylint: disable=import-outside-toplevel
  brax_envs = brax_adapter.import_brax_envs()
  name, _, backend = spec.partition("@")
  known = sorted(brax_envs._envs)  # pylint: disable=protected-access
  if name not in known:
    raise UnknownEnvError(f'"{name}" is not a Brax environment; Brax has: {", ".join(known)}')
  if backend and backend not in brax_adapter.BACKENDS:
    raise UnknownEnvError(f'"{backend}" is not a Brax backend; use one of: {", ".join(brax_adapter.BACKENDS)}')
  return brax_adapter.BraxEnv(name, backend or None)


@functools.lru_cache(maxsize=16)  # building one traces kinetix-env's level generator (seconds); envs are immutable
def _make_kinetix(level: str) -> base.Environment:
  from envs import kinetix_adapter  # pylint: disable=import-outside-toplevel
  kinetix_adapter.import_kinetix()
  level, _, observation = level.partition("@")
  if observation and observation not in kinetix_adapter.OBSERVATIONS:
    raise UnknownEnvError(f'"@{observation}": Kinetix observations are ' + ", ".join(
        f"@{o}" for o in kinetix_adapter.OBSERVATIONS))
  try:
    return kinetix_adapter.KinetixEnv(level, observation=observation or "flat")
  except FileNotFoundError as e:
    raise UnknownEnvError(
        f'"{level}" is neither a Kinetix size (s, m, l) nor a level file ({e}); kinetix-env ships: '
        + ", ".join(kinetix_adapter.shipped_levels())) from None


def _make_craftax(env_id: str) -> base.Environment:
  from envs import craftax_adapter  # pylint: disable=import-outside-toplevel
  craftax_adapter.import_craftax_env()
  if env_id not in craftax_adapter.ENV_IDS:
    raise UnknownEnvError(f'"{env_id}" is not a Craftax environment; use one of: {", ".join(craftax_adapter.ENV_IDS)}')
  return craftax_adapter.CraftaxEnv(env_id)


def _make_cartpole_substeps(substeps: str) -> base.Environment:
  if not substeps.isdigit() or int(substeps) < 1:
    raise UnknownEnvError(f'"cartpole_substeps:{substeps}": cartpole_substeps:<K> needs a positive integer K')
  return cartpole.CartPole(substeps=int(substeps))


_ADAPTERS = {"cartpole_substeps": _make_cartpole_substeps, "gymnax": _make_gymnax, "brax": _make_brax, "kinetix": _make_kinetix, "craftax": _make_craftax}


def make(env_name: str, sticky_actions: float = 0.0) -> base.Environment:
  """Builds the environment named by a config's env_name; with `sticky_actions` > 0 it repeats its previous action
  with that probability (envs/sticky.py)."""
  if env_name in BUILTIN:
    return sticky.wrap(BUILTIN[env_name](), sticky_actions)
  prefix, sep, rest = env_name.partition(":")
  if sep and prefix in _ADAPTERS:
    return sticky.wrap(_ADAPTERS[prefix](rest), sticky_actions)
  raise UnknownEnvError(
      f'unknown env "{env_name}": built-ins are {", ".join(sorted(BUILTIN))}; adapters take the form '
      + ", ".join(f'"{p}:<id>"' for p in PREFIXES))
