"""Optional env suites are pip extras; importing a missing one raises one clear error that names the install command."""
from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtraError(ImportError):
  """An env suite's library is not installed (config validation reports it under `config.env_name`)."""


def require(module: str, prefix: str, extra: str, note: str = "") -> ModuleType:
  """Imports `module` for `env_name="<prefix>:..."`, or raises MissingExtraError with the install command."""
  try:
    return importlib.import_module(module)
  except ImportError as e:
    raise MissingExtraError(
        f'env_name "{prefix}:..." needs the {extra} extra, which is not installed ({e}). Install it with: '
        f'pip install -e ".[{extra}]"{note}') from None
