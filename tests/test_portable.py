"""The accelerators' code path, run on CPU (PPO_PORTABLE=1, learner/code_path.py): the core guarantees hold on it too.

On CPU the update normally takes CPU-specific dense forms and compiler options; GPUs and TPUs take `x @ k + b`,
autodiff and XLA's defaults. With the switch on, this module checks on that path: the result does not depend on the
device count, the sync pipeline equals the fused update bit for bit, a resumed run is the uninterrupted run, and the
`cue` task is learned to its optimum.
"""
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from launch.config import resolve as config_lib
from launch.run import programs, trainer, xla_options
from launch.report.metrics_file import read_jsonl
from learner import code_path, networks
from pipeline import dataflow
from tests.test_train import _assert_same_run, _debug_config

NUM_UPDATES = 3


@pytest.fixture(scope="module", autouse=True)
def portable():
  """The switch on for the module; programs.build memoised by its arguments, so a resumed run or a fused reference
  reuses the programs an earlier test compiled for the same config (they are the same programs)."""
  built = {}
  build = programs.build

  def memoised(config, *args, **kwargs):
    key = (config.to_json_best_effort(), repr(args), repr(sorted(kwargs.items())))
    if key not in built:
      built[key] = build(config, *args, **kwargs)
    return built[key]

  with pytest.MonkeyPatch.context() as mp:
    mp.setenv(code_path.ENV_VAR, "1")
    mp.setattr(programs, "build", memoised)
    yield


def _run_config(devices: int):
  return _debug_config(**{"mesh.data": devices, "log_every": 5, "checkpoint_every": 5})


def _dense_grad_jaxpr() -> str:
  layer = networks.Dense(64)
  x = jnp.ones((16, 4))
  params = layer.init(jax.random.PRNGKey(0), x)
  return str(jax.make_jaxpr(jax.grad(lambda p: layer.apply(p, x).sum()))(params))


def test_switch_turns_off_the_cpu_forms_and_options(monkeypatch):
  assert code_path.portable() and not code_path.cpu_forms() and code_path.describe() == "portable"
  assert xla_options.compiler_options("cpu") == {}
  portable_jaxpr = _dense_grad_jaxpr()
  assert "dot_general" in portable_jaxpr and "slice[" not in portable_jaxpr  # x @ k, no per-column forms
  monkeypatch.setenv(code_path.ENV_VAR, "0")  # the control: the CPU's own forms are what the switch removes
  assert code_path.cpu_forms() and xla_options.compiler_options("cpu")
  assert "slice[" in _dense_grad_jaxpr()  # the 4-input layer as multiply-adds of x's columns


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """A 10-update debug run, checkpointed at 5 and 10, on 1 and on 8 devices."""
  out = {}
  for devices in (1, 8):
    workdir = str(tmp_path_factory.mktemp(f"portable{devices}"))
    trainer.train_and_evaluate(_run_config(devices), workdir)
    out[devices] = workdir
  return out


def test_result_does_not_depend_on_device_count(runs):
  _assert_same_run(read_jsonl(os.path.join(runs[1], "metrics.jsonl"))[-1],
                   read_jsonl(os.path.join(runs[8], "metrics.jsonl"))[-1])


def test_resume_is_exact(runs, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(runs[1], workdir)
  full = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  shutil.rmtree(os.path.join(workdir, "checkpoints", "10"))
  trainer.train_and_evaluate(_run_config(1), workdir)
  resumed = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  assert [r["update"] for r in resumed] == [5, 10] and "compile_time" in resumed[1]  # resumed after update 5
  timing = ("wall_time", "sps", "compile_time", "first_update_time")
  assert [{k: v for k, v in r.items() if k not in timing} for r in resumed] == \
         [{k: v for k, v in r.items() if k not in timing} for r in full]


def test_sync_pipeline_equals_fused_bit_for_bit(runs):
  config = _run_config(1)
  resolved = config_lib.resolve(config, num_devices=jax.device_count(), num_processes=jax.process_count())
  fused = programs.build(config, resolved=resolved)  # the 1-device run's programs
  state, metrics = fused.init(jax.random.PRNGKey(0)), []
  for _ in range(NUM_UPDATES):
    state, m = fused.update(state)
    metrics.append(m)
  config.pipeline.mode = "sync"
  staged = programs.build(config, resolved=resolved, eval_episodes=0)
  start = staged.init(jax.random.PRNGKey(0))
  results = list(dataflow.Pipeline(staged.pipeline, max_policy_lag=0).run(dataflow.Snapshot(state=start),
                                                                          NUM_UPDATES))
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)),
               (results[-1].snapshot.state, [r.metrics for r in results]), (state, metrics))


def test_toy_env_learned_to_known_optimum(workdir):
  config = _debug_config(env_name="cue", num_envs=16, num_steps=16, total_env_steps=16 * 16 * 40,
                         learning_rate=1e-2, log_every=10, eval_every=40)
  row = trainer.train_and_evaluate(config, workdir)
  assert row["eval_return"] == 8.0  # CueEnv(length=8) optimum; a random policy gets ~0.5


def test_throughput_counts_the_gathered_statistics_on_this_path():
  """benchmarks/throughput.py's traffic bound: here the minibatches gather their advantage statistics every epoch
  (learner/code_path.py) instead of one streaming pass: CartPole's 36-byte rows, 4 epochs."""
  from benchmarks import throughput  # pylint: disable=import-outside-toplevel
  assert throughput.streamed_bytes_per_transition(throughput.reference_config(64, 2))[1] == \
      36 + 2 * 36 + 4 * 36 + 4 * (36 + 8)
