"""The scaling rules (launch/config/resolve.py) on hand-worked cases, their errors, and that the trainer uses them."""
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from launch.config import resolve as config_lib
from launch.run import trainer
from launch.configs import default

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(**overrides):
  # Base: 8 envs x 16 steps = 128 samples; 2 minibatches of 64 (or minibatch_size given); lr 1e-3.
  config = default.get_config()
  config.num_envs, config.num_steps, config.total_env_steps = 8, 16, 1 << 20
  config.num_minibatches, config.learning_rate, config.mesh.data = 2, 1e-3, 1
  config.scaling.base_num_envs = 8
  config.update_from_flattened_dict(overrides)  # "a.b" keys, type-checked as assignments
  return config


def _sizes(**overrides):
  r = config_lib.resolve(_config(**overrides), 1)
  assert r.minibatch_size * r.ppo.num_minibatches == r.batch_size
  return r.ppo.num_minibatches, r.minibatch_size, r.learning_rate


# (rule, num_envs) -> (num_minibatches, minibatch_size, learning_rate), worked by hand from the base above.
HAND_WORKED = {
    ("recipe", 32): (8, 64, 1e-3),  # 512 samples / the base minibatch of 64
    ("fixed_minibatches", 32): (2, 256, 1e-3),
    ("sqrt_lr", 32): (2, 256, 2e-3),  # sqrt(32 / 8) = 2
    ("none", 32): (2, 256, 1e-3),
    ("recipe", 4): (1, 64, 1e-3),  # fewer envs than the base: fewer minibatches
    ("sqrt_lr", 2): (2, 16, 5e-4),  # sqrt(2 / 8) = 0.5
    ("recipe", 8): (2, 64, 1e-3),  # at the base every rule is the config itself
    ("sqrt_lr", 8): (2, 64, 1e-3),
}


@pytest.mark.parametrize("rule,num_envs", sorted(HAND_WORKED))
def test_rules_with_num_minibatches_given(rule, num_envs):
  count, size, lr = _sizes(num_envs=num_envs, **{"scaling.rule": rule})
  assert (count, size) == HAND_WORKED[rule, num_envs][:2]
  assert math.isclose(lr, HAND_WORKED[rule, num_envs][2], rel_tol=1e-12)


@pytest.mark.parametrize("rule,expected", [("recipe", (16, 32, 1e-3)), ("fixed_minibatches", (4, 128, 1e-3)),
                                           ("sqrt_lr", (4, 128, 2e-3)), ("none", (16, 32, 1e-3))])
def test_rules_with_minibatch_size_given(rule, expected):
  # minibatch_size=32 at the base batch of 128 means 4 minibatches there.
  count, size, lr = _sizes(num_envs=32, num_minibatches=0, minibatch_size=32, **{"scaling.rule": rule})
  assert (count, size) == expected[:2] and math.isclose(lr, expected[2], rel_tol=1e-12)


def test_million_envs_recipe_keeps_minibatch_and_lr():
  r = config_lib.resolve(_config(num_envs=1 << 20, num_steps=128, total_env_steps=1 << 30, num_minibatches=4,
                                 learning_rate=2.5e-3, **{"scaling.base_num_envs": 32, "scaling.rule": "recipe"}), 1)
  assert r.minibatch_size == 32 * 128 // 4 and r.learning_rate == 2.5e-3
  assert r.ppo.num_minibatches == (1 << 20) * 128 // 1024
  assert r.total_gradient_steps == r.num_updates * r.ppo.update_epochs * r.ppo.num_minibatches


def _errors(**overrides):
  return config_lib.check(_config(**overrides), 1)


def test_scaling_errors_name_key_and_rule():
  assert _errors(minibatch_size=32) == [
      "config.minibatch_size=32: exactly one of num_minibatches / minibatch_size may be set (the other is derived); "
      "set the other to 0"]
  assert _errors(minibatch_size=-1) == [
      "config.minibatch_size=-1: must be a non-negative integer (0 = derive it from num_minibatches)"]
  assert _errors(**{"scaling.rule": "linear"}) == [
      "config.scaling.rule='linear': must be one of ['none', 'recipe', 'fixed_minibatches', 'sqrt_lr']"]
  assert _errors(**{"scaling.base_num_envs": 0}) == ["config.scaling.base_num_envs=0: must be a positive integer"]
  assert _errors(num_minibatches=0, minibatch_size=48, **{"scaling.rule": "recipe"}) == [
      "config.minibatch_size=48: must divide the base batch scaling.base_num_envs * num_steps = 128 "
      "(scaling.rule='recipe')"]
  assert _errors(num_envs=2, **{"scaling.rule": "recipe"}) == [
      "config.num_envs=2: the base minibatch size 64 must divide the batch num_envs * num_steps = 32 "
      "(scaling.rule='recipe')"]
  assert _errors(num_envs=1, num_steps=1, total_env_steps=64, num_minibatches=4, **{
      "scaling.rule": "fixed_minibatches", "scaling.base_num_envs": 4}) == [
      "config.num_envs=1: the 4 minibatches must divide the batch num_envs * num_steps = 1 "
      "(scaling.rule='fixed_minibatches')"]
  assert _errors(**{"ewma.center_of_mass": -1.0}) == [
      "config.ewma.center_of_mass=-1.0: must be a non-negative number (0 = the current params)"]
  assert _errors(**{"diagnostics.kl_quantile": 1.0}) == ["config.diagnostics.kl_quantile=1.0: must be in (0, 1)"]


def test_trainer_optimizer_uses_the_scaled_learning_rate():
  # Adam's first step moves every coordinate by ~lr (|m / sqrt(v)| = 1), so the step shows the learning rate used.
  config = _config(num_envs=32, env_name="cue", **{"scaling.rule": "sqrt_lr"})
  resolved = config_lib.resolve(config, 1)
  opt = trainer.build_agent(config, resolved).optimizer
  params = {"w": jnp.zeros((3,))}
  updates, _ = opt.update({"w": jnp.array([1e-3, -1e-3, 2e-3])}, opt.init(params), params)
  np.testing.assert_allclose(jnp.abs(updates["w"]), 2e-3, rtol=1e-2)


def test_dry_run_shows_million_env_recipe():
  """The issue's exact command: the default total_env_steps is less than one such batch, which a dry run waives."""
  env = dict(os.environ, XLA_FLAGS="")
  proc = subprocess.run([sys.executable, "-m", "launch.train", "--dry_run", "--nodry_run_memory",
                         "--config.num_envs=1048576", "--config.scaling.rule=recipe"], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 0, proc.stderr
  out = json.loads(proc.stdout)
  assert "raise total_env_steps" in out["warnings"][0] and out["derived"]["num_updates"] == 0
  derived = out["derived"]
  assert derived["minibatch_size"] == 1024 and derived["learning_rate"] == 2.5e-3  # the base run's (32 envs)
  assert derived["num_minibatches"] == 1048576 * 128 // 1024


def test_dry_run_at_the_papers_scale():
  """A trillion transitions at 2^20 envs, the programs compiled (as --dry_run does by default): 3.9e9 optimizer
  steps, more than int32 holds (learner/optimizer.py counts the anneal in updates and steps within one)."""
  flags = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f)  # one device
  proc = subprocess.run([sys.executable, "-m", "launch.train", "--dry_run", "--config.num_envs=1048576",
                         "--config.scaling.rule=recipe", "--config.total_env_steps=1000000000000"], cwd=REPO,
                        env=dict(os.environ, XLA_FLAGS=flags), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout)
  derived = out["derived"]
  assert derived["num_updates"] == 10**12 // (1048576 * 128) and derived["total_gradient_steps"] > 2**31
  assert out["memory"]["programs"]["update"]["needed"] > 0
