"""Maps a config's `env_name` to an environment instance.

Built-ins are plain names; adapters are chosen by prefix (`gymnax:<id>`). Unknown names raise UnknownEnvError listing
what is available, so config validation can report it before anything compiles.
"""
from __future__ import annotations

from collections.abc import Callable

from envs import base, cartpole, toy

BUILTIN: dict[str, Callable[[], base.Environment]] = {
    "CartPole-v1": cartpole.CartPole,
    "cue": toy.CueEnv,
}
PREFIXES = ("gymnax", "cartpole_substeps")


class UnknownEnvError(ValueError):
  pass


def _make_gymnax(env_id: str) -> base.Environment:
  from envs import gymnax_adapter  # pylint: disable=import-outside-toplevel
  gymnax = gymnax_adapter._import_gymnax()  # pylint: disable=protected-access
  if env_id not in gymnax.registered_envs:
    raise UnknownEnvError(f'"{env_id}" is not a gymnax environment; gymnax has: {", ".join(gymnax.registered_envs)}')
  return gymnax_adapter.GymnaxEnv(env_id)


def make(env_name: str) -> base.Environment:
  """Builds the environment named by a config's env_name."""
  if env_name in BUILTIN:
    return BUILTIN[env_name]()
  prefix, sep, rest = env_name.partition(":")
  if sep and prefix == "gymnax":
    return _make_gymnax(rest)
  if sep and prefix == "cartpole_substeps":
    if not rest.isdigit() or int(rest) < 1:
      raise UnknownEnvError(f'"{env_name}": cartpole_substeps:<K> needs a positive integer K')
    return cartpole.CartPole(substeps=int(rest))
  raise UnknownEnvError(
      f'unknown env "{env_name}": built-ins are {", ".join(sorted(BUILTIN))}; adapters take the form '
      + ", ".join(f'"{p}:<id>"' for p in PREFIXES))
