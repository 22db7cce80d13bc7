"""A run whose compiled programs do not fit in device memory stops before allocating (exit 2, naming the memory
needed and the knobs); --dry_run prints the programs' memory per device. The device is faked small through
PPO_DEVICE_MEMORY_BYTES (launch/run/memory.py)."""
import dataclasses
import json
import os
import re
import subprocess
import sys

import pytest

from launch.config import resolve as config_lib
from launch.run import memory, programs, trainer
from tests.test_entities import _config as _entity_config
from tests.test_sfl import _config as _sfl_config
from tests.test_train import _debug_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_ENVS, NUM_STEPS = 4096, 16  # ≈ 10 MB of temporaries
SMALL = 2**20  # the faked device: 1 MiB
ARGS = ("--config=launch/configs/debug.py", f"--config.num_envs={NUM_ENVS}", f"--config.num_steps={NUM_STEPS}",
        f"--config.total_env_steps={2 * NUM_ENVS * NUM_STEPS}")


@pytest.fixture(scope="module")
def jax_cache(tmp_path_factory):
  """A persistent compilation cache: the dry run and the refused run compile the same programs."""
  return str(tmp_path_factory.mktemp("jax_cache"))


def _launch(jax_cache, *args, limit=SMALL):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", JAX_COMPILATION_CACHE_DIR=jax_cache,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
             **{memory.ENV_VAR: str(limit)})
  return subprocess.run([sys.executable, "-m", "launch.train", *args], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=300)


def test_too_large_for_the_device_stops_with_exit_2_naming_memory_and_knobs(jax_cache, tmp_path):
  workdir = tmp_path / "run"
  proc = _launch(jax_cache, f"--workdir={workdir}", *ARGS)
  assert proc.returncode == 2, proc.stderr[-3000:]
  err = proc.stderr
  assert "does not fit in device memory" in err
  assert re.search(rf"It needs [0-9.]+ MiB but 1.0 MiB is available \({memory.ENV_VAR}\)", err), err
  for knob in (f"config.num_envs (now {NUM_ENVS})", f"config.num_steps (now {NUM_STEPS})", "config.sgd_chunk_size",
               "config.mesh.data"):
    assert knob in err, knob
  assert "Traceback" not in err
  assert not (workdir / "checkpoints").exists() and not (workdir / "metrics.jsonl").exists()


def test_refused_before_the_state_is_allocated(tmp_path, monkeypatch):
  """The check runs on the compiled programs, before the trainer creates (or restores) any state."""
  build = programs.build

  def no_init(*args, **kwargs):
    def init(key):
      raise AssertionError("the state was allocated before the memory check")
    return dataclasses.replace(build(*args, **kwargs), init=init)

  monkeypatch.setattr(programs, "build", no_init)
  monkeypatch.setenv(memory.ENV_VAR, str(SMALL))
  config = _debug_config(num_envs=NUM_ENVS, num_steps=NUM_STEPS, total_env_steps=2 * NUM_ENVS * NUM_STEPS,
                         **{"mesh.data": 1})
  with pytest.raises(config_lib.ConfigError, match="does not fit in device memory"):
    trainer.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run" / "checkpoints").exists()


def test_dry_run_prints_the_compiled_memory_per_device(jax_cache):
  proc = _launch(jax_cache, "--dry_run", *ARGS)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout)
  mem = out["memory"]
  update = mem["programs"]["update"]
  assert set(update) == {"argument", "output", "alias", "temp", "code", "needed"}
  assert update["temp"] > SMALL and update["alias"] > 0  # the rollout's temporaries; the state is donated
  assert mem["limit_bytes"] == SMALL and mem["limit_source"] == memory.ENV_VAR and mem["fits"] is False
  assert any("does not fit" in w for w in out["warnings"])
  assert out["code_path"] == "cpu"


def test_per_transition_estimate_is_within_20_percent_of_the_compiled_update():
  """The dry run's shapes-only figure (bytes per transition x transitions) against XLA's memory analysis of the
  compiled update, on entity observations (bool masks and int indexes widen to float32 columns when packed), at a
  size where transitions dominate the fixed costs. Compiled only: nothing of that size is allocated."""
  config = _entity_config(num_envs=4096, num_steps=256, total_env_steps=4096 * 256, sgd_chunk_size=64,
                          **{"mesh.data": 1, "diagnostics.enabled": False})
  compiled = memory.program_memory(programs.build(config, eval_episodes=0).compiled["update"]).needed
  estimate = memory.per_transition(config)["rollout_per_device_gib"] * memory.GIB
  assert 0.8 < estimate / compiled < 1.2, (estimate, compiled)


def test_programs_that_run_one_at_a_time_count_the_state_once(monkeypatch):
  """Fused SFL: the update, the re-scoring and the evaluation each take the state (or its params) and never run at
  once, so a device that holds the state, every program's code and the largest transient fits the run."""
  progs = programs.build(_sfl_config())
  report = memory.analyse(progs)
  update, rescore, evaluate = (report.programs[k] for k in ("update", "rescore", "evaluate"))
  state = max(update.argument, rescore.argument)  # jit leaves out the leaves a program does not read
  assert state > evaluate.argument  # the params and statistics
  transient = max(p.output - p.alias + p.temp for p in (update, rescore, evaluate))
  assert report.per_device == state + update.code + rescore.code + evaluate.code + transient
  assert report.per_device < update.needed + rescore.needed  # the state is not counted twice
  monkeypatch.setenv(memory.ENV_VAR, str(report.per_device))
  assert memory.check_fits(progs, _sfl_config()).fits
