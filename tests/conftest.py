"""Test setup: 8 virtual CPU devices (set before jax is imported) and runtime jaxtyping shape checks on our packages."""
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from jaxtyping import install_import_hook  # pylint: disable=wrong-import-position

import tests.typecheck  # pylint: disable=wrong-import-position,unused-import  (the hook imports it by name)

# Every annotated function and dataclass in these packages has its array shapes checked when called in tests.
_HOOK = install_import_hook(["envs", "learner", "pipeline"], "tests.typecheck.typechecker")

import pytest  # pylint: disable=wrong-import-position


@pytest.fixture
def workdir(tmp_path):
  return str(tmp_path / "run")
