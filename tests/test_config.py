"""Every config error gets one clear message naming the key and the rule, before anything compiles."""
import json
import os
import subprocess
import sys
import types

import pytest

from launch.config import resolve as config_lib, schema as config_schema
from launch.configs import debug, default
from sharding import mesh

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _errors(num_devices=8, **overrides):
  config = default.get_config()
  for k, v in overrides.items():
    node = config
    *path, leaf = k.split(".")
    for p in path:
      node = node[p]
    node[leaf] = v
  return config_lib.check(config, num_devices)


def test_default_and_debug_configs_are_valid():
  assert config_lib.check(default.get_config(), 8) == []
  assert config_lib.check(debug.get_config(), 1) == []


@pytest.mark.parametrize("key", ["num_envs", "num_steps", "total_env_steps", "update_epochs", "num_minibatches",
                                 "log_every", "eval_every", "eval_episodes", "checkpoint_every",
                                 "keep_checkpoints"])
@pytest.mark.parametrize("value", [0, -3])
def test_counts_must_be_positive(key, value):
  assert _errors(**{key: value}) == [f"config.{key}={value!r}: must be a positive integer"]


@pytest.mark.parametrize("key", ["learning_rate", "clip_eps", "max_grad_norm"])
def test_rates_must_be_positive(key):
  assert _errors(**{key: 0.0}) == [f"config.{key}=0.0: must be a positive number"]


@pytest.mark.parametrize("key", ["ent_coef", "vf_coef"])
def test_coefficients_must_be_non_negative(key):
  assert _errors(**{key: -0.1}) == [f"config.{key}=-0.1: must be a non-negative number"]


@pytest.mark.parametrize("key", ["gamma", "gae_lambda"])
def test_discounts_in_unit_interval(key):
  assert _errors(**{key: 1.5}) == [f"config.{key}=1.5: must be in [0, 1]"]


def test_num_envs_must_divide_over_data_axis():
  assert _errors(num_envs=12, **{"mesh.data": 8}) == [
      "config.num_envs=12: must be divisible by the 8 devices of the mesh's data axis (mesh.data)"]
  assert _errors(num_envs=12, **{"mesh.data": 4}) == []
  assert _errors(num_devices=8, num_envs=12) != []  # mesh.data=-1 means all 8 devices


def test_minibatches_must_divide_batch():
  assert _errors(num_envs=32, num_steps=128, num_minibatches=3) == [
      "config.num_minibatches=3: must divide the batch num_envs * num_steps = 4096"]
  assert _errors(num_envs=8, num_steps=1, num_minibatches=2, **{"mesh.data": 8}) == [
      "config.num_minibatches=2: the minibatch size 4 must be divisible by the 8 devices of the data axis"]


def test_total_env_steps_at_least_one_batch():
  assert _errors(total_env_steps=100) == ["config.total_env_steps=100: must be at least one batch "
                                          "(num_envs * num_steps = 4096)"]


def test_restore_from_must_be_a_path():
  assert _errors(restore_from=None) == [
      "config.restore_from=None: must be a path (a run's workdir, its checkpoints/ dir or one step dir), "
      "or '' for none"]
  assert _errors(restore_from="/some/run") == []


def test_unknown_env_names_what_exists():
  (msg,) = _errors(env_name="Atari")
  assert msg.startswith("config.env_name='Atari': unknown env \"Atari\": built-ins are CartPole-v1, cue")


def test_network_errors():
  assert _errors(**{"network.activation": "swish"}) == [
      "config.network.activation='swish': must be one of ['gelu', 'relu', 'silu', 'tanh']"]
  assert _errors(**{"network.hidden_sizes": (64, 0)}) == [
      "config.network.hidden_sizes=(64, 0): must be a non-empty sequence of positive integers, e.g. (64, 64)"]


def test_mesh_larger_than_visible_devices():
  assert _errors(num_devices=2, **{"mesh.data": 4}) == [
      "config.mesh.data=4: must be -1 (all devices) or between 1 and the 2 visible devices"]


def test_with_several_processes_the_mesh_takes_whole_processes():
  """Four devices over two processes ([p0, p0, p1, p1]): the mesh is all of them; a part of each process's devices (or
  one process's) is refused in one line naming how to use fewer devices."""
  fake = [types.SimpleNamespace(id=i, process_index=i // 2) for i in range(4)]
  assert [d.id for d in mesh.mesh_devices(-1, fake)] == [0, 1, 2, 3]
  assert [d.id for d in mesh.mesh_devices(4, fake)] == [0, 1, 2, 3]
  assert [d.id for d in mesh.mesh_devices(1, fake[:2])] == [0]  # one process: the first ones
  for data in (1, 2, 3):
    with pytest.raises(ValueError, match="takes whole processes"):
      mesh.mesh_devices(data, fake)
    config = default.get_config()
    config.mesh.data = data
    assert config_lib.check(config, 4, num_processes=2) == [
        f"config.mesh.data={data}: must be -1 or all 4 devices with 2 processes: the mesh takes whole processes (to "
        "use fewer devices, start fewer processes or give each fewer: CUDA_VISIBLE_DEVICES, TPU_VISIBLE_CHIPS)"]
  config.mesh.data = 4
  assert config_lib.check(config, 4, num_processes=2) == []


def test_unknown_and_missing_keys_in_a_config_file():
  config = default.get_config()
  config.learning_rat = 1e-3
  del config["gamma"]
  assert config_lib.check(config, 1) == [
      "config.learning_rat: unknown key (known keys are those of launch/configs/default.py)",
      "config.gamma: missing (start configs from launch/configs/default.get_config())"]


def test_several_errors_are_reported_together():
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.resolve(_config(gamma=2.0, clip_eps=-1.0), 1)
  assert "config.gamma=2.0: must be in [0, 1]" in str(e.value)
  assert "config.clip_eps=-1.0: must be a positive number" in str(e.value)


def _config(**kw):
  c = default.get_config()
  for k, v in kw.items():
    c[k] = v
  return c


def _launch(*args):
  env = dict(os.environ, XLA_FLAGS="")
  return subprocess.run([sys.executable, "-m", "launch.train", *args], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=120)


def test_command_line_errors_exit_2_without_traceback(tmp_path):
  proc = _launch(f"--workdir={tmp_path}", "--config.num_envs=30", "--config.num_minibatches=7")
  assert proc.returncode == 2
  assert "config.num_minibatches=7: must divide the batch num_envs * num_steps = 3840" in proc.stderr
  assert "Traceback" not in proc.stderr
  proc = _launch(f"--workdir={tmp_path}", "--config.lerning_rate=0.1")
  assert proc.returncode == 2 and "config.lerning_rate: unknown key" in proc.stderr
  assert "Traceback" not in proc.stderr
  proc = _launch(f"--workdir={tmp_path}", "--config=launch/configs/nope.py")
  assert proc.returncode == 2 and "could not load --config" in proc.stderr and "Traceback" not in proc.stderr
  proc = _launch(f"--workdir={tmp_path}", "--config.num_envs=many")
  assert proc.returncode == 2 and "--config.num_envs=many" in proc.stderr and "Traceback" not in proc.stderr


def test_dry_run_prints_resolved_config():
  proc = _launch("--dry_run", "--nodry_run_memory", "--config.num_envs=64")  # memory: tests/test_memory.py
  assert proc.returncode == 0, proc.stderr
  out = json.loads(proc.stdout)
  assert out["num_envs"] == 64 and out["derived"]["batch_size"] == 64 * 128
  assert out["derived"]["minibatch_size"] == 64 * 128 // 4


def test_pipeline_errors():
  assert _errors(**{"pipeline.mode": "async"}) == [
      "config.pipeline.mode='async': must be one of ['fused', 'sync', 'overlap']"]
  assert _errors(**{"pipeline.mode": "overlap", "pipeline.max_policy_lag": 0}) == [
      "config.pipeline.max_policy_lag=0: must be an integer >= 1 in overlap mode (>= 0 otherwise)"]
  assert _errors(**{"pipeline.actor_devices": 4}) == [
      "config.pipeline.actor_devices=4: separate actor devices need pipeline.mode sync or overlap"]
  assert _errors(**{"pipeline.mode": "sync", "pipeline.actor_devices": 8}) == [
      "config.pipeline.actor_devices=8: must leave at least one of the mesh's 8 devices for the learner"]
  assert _errors(num_envs=6, **{"pipeline.mode": "sync", "pipeline.actor_devices": 4, "mesh.data": 6}) == [
      "config.num_envs=6: must be divisible by the 4 actor devices (pipeline.actor_devices)"]
  assert _errors(**{"pipeline.mode": "sync", "pipeline.actor_devices": 4}) == []


def test_obs_norm_and_reset_pool_rules():
  assert _errors(**{"reset_pool.size": -1}) == [
      "config.reset_pool.size=-1: must be a non-negative integer (0 turns the pool off)"]
  assert _errors(**{"reset_pool.refresh": 0}) == ["config.reset_pool.refresh=0: must be a positive integer"]
  assert _errors(**{"reset_pool.size": 100, "reset_pool.refresh": 64}) == [
      "config.reset_pool.refresh=64: must divide reset_pool.size=100"]
  assert _errors(obs_norm=True, **{"reset_pool.size": 128, "reset_pool.refresh": 64}) == []


@pytest.mark.parametrize("name", ["brax", "kinetix", "craftax"])
def test_suite_configs_and_debug_variants_are_complete(name):
  """Every suite config has exactly the schema's keys; with its suite installed it validates (else the one error is
  the missing extra, reported under config.env_name)."""
  import importlib  # pylint: disable=import-outside-toplevel
  module = importlib.import_module(f"launch.configs.{name}")
  for arg in (None, "debug"):
    errors = config_lib.check(module.get_config(arg), 8)
    assert errors == [] or (len(errors) == 1 and errors[0].startswith("config.env_name=")
                            and "pip install" in errors[0]), errors
  with pytest.raises(ValueError, match="unknown variant"):
    module.get_config("nope")


def test_the_staged_pipeline_is_refused_with_several_processes():
  for mode in ("sync", "overlap"):
    config = _config()
    config.pipeline.mode = mode
    config_lib.resolve(config, 8)  # one process: fine
    with pytest.raises(config_lib.ConfigError) as e:
      config_lib.resolve(config, 8, num_processes=2)
    assert str(e.value).splitlines()[1:] == [
        f"  config.pipeline.mode={mode!r}: the staged pipeline (sync / overlap) runs in one process only, this run "
        "has 2; use pipeline.mode='fused' with several processes"]
  config_lib.resolve(_config(), 8, num_processes=2)  # fused: fine


def _config_modules():
  import importlib  # pylint: disable=import-outside-toplevel
  for name in ("default", "debug", "brax", "kinetix", "craftax"):
    module = importlib.import_module(f"launch.configs.{name}")
    for arg in (None, "debug") if name in ("brax", "kinetix", "craftax") else (None,):
      yield module.get_config(arg)


def test_every_config_key_is_in_the_schema_with_a_resume_policy():
  must_match, free = config_schema.SCHEMA.must_match(), config_schema.SCHEMA.free_keys()
  for config in _config_modules():
    for name in config_lib.flat_keys(config):
      assert name in config_schema.SCHEMA, name
      resume = config_schema.SCHEMA[name].resume
      assert resume.policy in ("must_match", "warn", "free"), name
      assert (name in must_match) == (resume.policy == "must_match") and (name in free) == (resume.policy == "free")
      assert resume.policy != "must_match" or must_match[name]  # with the reason
  # The policies the resume check applies (hand-written: moving a key between them changes what a resume allows).
  assert set(must_match) == {"env_name", "num_envs", "seed", "anneal_lr", "obs_norm", "obs_store", "reset_pool.size",
                             "network.hidden_sizes", "network.activation", "network.shared_trunk", "ewma.enabled",
                             "outer_step.mode", "network.kind", "network.entity_width", "network.entity_layers",
                             "network.entity_heads", "network.entity_qkv", "level_sampler.kind",
                             "level_sampler.buffer_size", "sticky_actions"}
  assert set(free) == {"log_every", "eval_every", "eval_episodes", "checkpoint_every", "keep_checkpoints",
                       "restore_from", "mesh.data", "pipeline.actor_devices", "pipeline.mode",
                       "pipeline.max_policy_lag", "log_checkpoints", "wandb.project", "wandb.entity", "wandb.name",
                       "wandb.mode", "plateau.share", "eval.solve_levels", "eval.solve_attempts",
                       "eval.policy"}


def test_the_schema_refuses_a_key_without_a_resume_policy_rule_or_doc():
  rule = config_schema.positive_int()
  config_schema.Key("k", 1, int, "a doc", rule, config_schema.WARN)
  with pytest.raises(TypeError):
    config_schema.Key("k", 1, int, "a doc", rule)  # pylint: disable=no-value-for-parameter
  with pytest.raises(TypeError, match="resume must be"):
    config_schema.Key("k", 1, int, "a doc", rule, None)
  with pytest.raises(ValueError, match="needs the reason"):
    config_schema.must_match("")
  with pytest.raises(ValueError, match="one-line doc"):
    config_schema.Key("k", 1, int, "", rule, config_schema.FREE)
  with pytest.raises(ValueError, match="not a valid int"):
    config_schema.Key("k", 0, int, "a doc", rule, config_schema.FREE)  # the default breaks its own rule
  with pytest.raises(ValueError, match="defined twice"):
    config_schema.Schema(config_schema.Key("k", 1, int, "a doc", rule, config_schema.FREE),
                         config_schema.Key("k", 2, int, "a doc", rule, config_schema.FREE))


def test_default_config_is_the_schema_defaults():
  assert config_lib.flat_keys(default.get_config()) == {k.name: k.default for k in config_schema.SCHEMA}


@pytest.mark.parametrize("name", config_schema.SCHEMA.names())
def test_every_key_is_checked_by_its_own_rule(name):
  """None breaks every key's rule; check reports exactly that key, with the schema's message."""
  assert _errors(**{name: None}) == [f"config.{name}=None: {config_schema.SCHEMA[name].rule.message}"]


def test_describe_config_lists_every_key_with_this_configs_values():
  proc = _launch("--describe_config", "--config=launch/configs/debug.py")
  assert proc.returncode == 0, proc.stderr
  for key in config_schema.SCHEMA:
    assert f"\n{key.name}: {key.type.__name__} = " in proc.stdout
  assert "\nnum_envs: int = 8 (default 32)\n    parallel envs, split over the mesh's data axis\n" in proc.stdout
  assert "resume: must_match (there is one saved env state per env)" in proc.stdout


def test_sticky_actions_and_the_evaluation_policy_are_checked_in_one_line():
  assert _errors(sticky_actions=1.0) == ["config.sticky_actions=1.0: must be in [0, 1)"]
  assert _errors(sticky_actions=-0.1) == ["config.sticky_actions=-0.1: must be in [0, 1)"]
  assert _errors(**{"eval.policy": "greedy"}) == ["config.eval.policy='greedy': must be one of ['mode', 'sampled']"]
  assert _errors(sticky_actions=0.1, **{"env_name": "levels", "eval.policy": "sampled"}) == []
  errors = _errors(sticky_actions=0.1, **{"eval.solve_levels": "s"})
  assert errors[0] == ("config.sticky_actions=0.1: solve rates (eval.solve_levels) play kinetix-env's levels as they "
                       "ship, without sticky actions: set one of the two"), errors
