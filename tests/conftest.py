"""Test setup: 8 virtual CPU devices (set before jax is imported) and runtime jaxtyping shape checks on our packages."""
import atexit
import os
import shutil
import tempfile

# The suite compiles at LLVM -O0 with XLA:CPU's older loop emitters for fusions and its LLVM module in one piece
# (TEST_XLA_FLAGS, default below; TEST_XLA_FLAGS= compiles as runs do): XLA runs the same HLO passes, so the programs
# compute the same thing with unoptimised machine code. The suite is compile-bound. On a 2-core AMD EPYC: -O0 took the
# suite from 16:32 to 13:06 of pytest (2026-12-06); the other two flags took an entity-network matrix cell from 101 to
# 48 CPU seconds and a flat one from 43 to 26 (the MLIR fusion emitters cost most of the compile time at -O0;
# 2026-12-07, tests/matrix.py cells run alone). Tests compare programs compiled alike (subprocesses inherit
# XLA_FLAGS), and the default CartPole run of tests/test_train.py compiles as users' runs do. Float rounding can differ
# from runs' code, so comparisons of tiny quantities (KLs of ~1e-5) carry an absolute tolerance at float32's resolution.
TEST_XLA_FLAGS = os.environ.get("TEST_XLA_FLAGS", "--xla_backend_optimization_level=0 "
                                "--xla_cpu_use_fusion_emitters=false --xla_cpu_parallel_codegen_split_count=1")
os.environ["XLA_FLAGS"] = " ".join(
    f for f in (os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8", TEST_XLA_FLAGS) if f)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache per test session (made by the pytest process before it starts its xdist workers,
# which inherit it): a program that several tests build (the debug config's update and evaluation above all)
# compiles once, and the `python -m launch.train` subprocesses of the tests inherit the cache through the environment. Tests that need a cold compile or their own
# cache (test_faults, test_checkpoint, test_multihost) pass their own JAX_COMPILATION_CACHE_DIR.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _CACHE = tempfile.mkdtemp(prefix="ppo-tests-jax-cache-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)

from jaxtyping import install_import_hook  # pylint: disable=wrong-import-position

import tests.typecheck  # pylint: disable=wrong-import-position,unused-import  (the hook imports it by name)

# Every annotated function and dataclass in these packages has its array shapes checked when called in tests.
_HOOK = install_import_hook(["envs", "learner", "pipeline"], "tests.typecheck.typechecker")

import pytest  # pylint: disable=wrong-import-position


@pytest.fixture
def workdir(tmp_path):
  return str(tmp_path / "run")


# The longest modules first (minutes each on 2 cores; the order of their measured times, 2026-12-07): with several
# pytest-xdist workers (scripts/test.sh), a module runs in one worker, and a long one started last would leave the
# other workers idle at the end.
_LONGEST_FIRST = ("test_matrix", "test_matrix_more", "test_multihost", "test_checkpoint", "test_train", "test_dataflow",
                  "test_elastic", "test_faults", "test_entities", "test_autoscale", "test_cli_faults", "test_perf",
                  "test_suites", "test_options", "test_diagnostics", "test_memory", "test_console",
                  "test_stagnation_study", "test_accelerator_check", "test_portability", "test_elastic_features",
                  "test_portable",
                  "test_config", "test_advantage_stats", "test_sfl", "test_export", "test_outer_step")


def pytest_collection_modifyitems(items):
  def rank(item):
    module = item.module.__name__.rsplit(".", 1)[-1]
    return _LONGEST_FIRST.index(module) if module in _LONGEST_FIRST else len(_LONGEST_FIRST)
  items.sort(key=rank)  # stable: tests keep their order within a module


@pytest.fixture
def no_plots(monkeypatch):
  """Completed runs skip drawing their figures (~5 s of CPU per run on 2 cores): for tests of other things that
  complete many runs. The figures have their own tests (tests/test_sinks.py, tests/test_diagnostics.py)."""
  from launch.report import plots  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(plots, "plot_runs", lambda workdirs, out_path: out_path)
  monkeypatch.setattr(plots, "plot_diagnostics", lambda workdirs, out_path: out_path)


# PPO_TEST_CPU_LOG=FILE: one JSON line per test (its setup, call and teardown) with its wall time and the CPU time of
# this worker and of the child processes it waited for (subprocess runs), to see where the suite's CPU goes; CI's
# wall time varies too much from run to run on a shared 2-core machine to compare trees by.
if os.environ.get("PPO_TEST_CPU_LOG"):
  import json  # pylint: disable=wrong-import-position,wrong-import-order
  import resource  # pylint: disable=wrong-import-position,wrong-import-order
  import time  # pylint: disable=wrong-import-position,wrong-import-order

  def _cpu() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime

  @pytest.hookimpl(wrapper=True)
  def pytest_runtest_protocol(item, nextitem):  # pylint: disable=unused-argument
    start_wall, start_cpu = time.time(), _cpu()
    try:
      return (yield)
    finally:
      with open(os.environ["PPO_TEST_CPU_LOG"], "a", encoding="utf-8") as f:
        f.write(json.dumps({"test": item.nodeid, "wall_s": round(time.time() - start_wall, 2),
                            "cpu_s": round(_cpu() - start_cpu, 2),
                            "worker": os.environ.get("PYTEST_XDIST_WORKER", "main")}) + "\n")
