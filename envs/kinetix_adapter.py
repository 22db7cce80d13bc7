"""Adapter for Kinetix (kinetix-env), the paper's domain: flat or entity observations, multi-discrete actions.

- `kinetix:<s|m|l>`: a random level of that size at every reset, sampled as kinetix-env's PPO setting documents
  (configs/learning/ppo-base.yaml: filter_levels, level_filter_sample_ratio=2, level_filter_n_steps=64): draw 2
  levels, run each for 64 steps with the all-zeros action, and keep one that doing nothing does not solve (solved
  levels keep weight 0.001, as in kinetix-env). A reset therefore costs ~2×64 physics steps: use the reset pool.
- `kinetix:<level file>`: a hand-designed level shipped with kinetix-env (e.g. `s/h0_weak_thrust`) or a path to a
  level json; every episode starts from it.
- A suffix picks the observation: `@flat` (default: kinetix-env's flat symbolic vector, for the MLP) or `@entity`
  (kinetix-env's entity observation as envs/entities.EntityObs: shapes, joints, thrusters, masks, indexes and the
  4-channel attention mask, for network.kind=entity), e.g. `kinetix:s@entity`.

Kinetix's `done` covers reaching the goal, touching a bad shape, NaN physics and the time limit. The time limit is
reported as truncation unless the goal was reached on the same step; a bad contact exactly at the time limit is
indistinguishable from it in kinetix-env's outputs and counts as truncation.
kinetix-env requires jax <= 0.9.0, so it lives in its own virtual environment (bash scripts/test_kinetix.sh creates
.venv-kinetix, or: pip install -e ".[kinetix]" in a venv with jax<=0.9.0).
"""
from __future__ import annotations

import functools

import glob
import os

import jax
import jax.numpy as jnp

from envs import base, entities, extras

SIZES = ("s", "m", "l")
FILTER_SAMPLE_RATIO = 2  # kinetix-env ppo-base.yaml: level_filter_sample_ratio
FILTER_STEPS = 64  # kinetix-env ppo-base.yaml: level_filter_n_steps
SOLVED_WEIGHT = 0.001  # kinetix-env's weight for levels that the no-op policy solves
NOTE = (" in a virtual environment with jax<=0.9.0 (kinetix-env requires it); bash scripts/test_kinetix.sh creates one "
        "(.venv-kinetix) and runs the Kinetix tests")
OBSERVATIONS = ("flat", "entity")


def import_kinetix():
  extras.require("kinetix", "kinetix", "kinetix", NOTE)
  from kinetix.environment import env as kenv  # pylint: disable=import-outside-toplevel
  from kinetix.environment import env_state, spaces, utils  # pylint: disable=import-outside-toplevel
  from kinetix.environment.ued import ued  # pylint: disable=import-outside-toplevel
  from kinetix.util import saving  # pylint: disable=import-outside-toplevel
  return kenv, env_state, spaces, utils, ued, saving


def shipped_levels() -> list[str]:
  """Names of the hand-designed levels that kinetix-env ships, e.g. `s/h0_weak_thrust`."""
  import kinetix  # pylint: disable=import-outside-toplevel
  root = os.path.join(os.path.dirname(kinetix.__file__), "levels")
  return sorted(os.path.relpath(p, root)[:-len(".json")] for p in glob.glob(os.path.join(root, "*", "*.json")))


class KinetixEnv(base.Environment):
  """Random levels of one size, or one fixed level."""

  def __init__(self, level: str, filter_levels: bool = True, observation: str = "flat"):
    kenv, env_state, spaces, utils, ued, saving = import_kinetix()
    if observation not in OBSERVATIONS:
      raise ValueError(f"observation {observation!r}: use one of {OBSERVATIONS}")
    self.level, self.filter_levels, self.observation = level, filter_levels, observation
    if level in SIZES:
      self._static = utils.static_env_params_from_size(level)
      self._params = env_state.EnvParams()
      self._sample_level = ued.make_reset_fn_sample_kinetix_level(self._params, self._static)
      self._fixed_level = None
    else:
      path = saving.get_correct_path_of_json_level(level)
      if not os.path.exists(path):
        raise FileNotFoundError(path)
      self._fixed_level, self._static, self._params = saving.load_from_json_file(path)
    obs_type = spaces.ObservationType.SYMBOLIC_ENTITY if observation == "entity" else spaces.ObservationType.SYMBOLIC_FLAT
    self._env = kenv.make_kinetix_env(spaces.ActionType.MULTI_DISCRETE, obs_type, None,
                                      self._params, self._static, auto_reset=False)
    nvec = self._env.action_type.number_of_dims_per_distribution
    self._space = base.MultiDiscrete(tuple(int(n) for n in nvec))
    # The observation's structure from an unfiltered level: the filter picks one of several such levels, and tracing
    # it (a batch of levels, a scan of physics steps) costs tens of seconds for the same answer.
    self._spec = jax.eval_shape(self._obs, self._fixed_level if self._fixed_level is not None
                                else jax.eval_shape(self._sample_level, jax.random.PRNGKey(0)))

  def __hash__(self):
    return hash((type(self), self.level, self.filter_levels, self.observation))

  def __eq__(self, other):
    return type(other) is type(self) and ((other.level, other.filter_levels, other.observation)
                                          == (self.level, self.filter_levels, self.observation))

  @property
  def observation_spec(self):
    return self._spec

  @property
  def observation_shape(self):
    if self.observation != "flat":
      raise NotImplementedError("entity observations are a pytree: see observation_spec")
    return self._spec.shape

  def _obs(self, state):
    obs = self._env.get_obs(state)
    if self.observation == "flat":
      return obs.astype(jnp.float32)
    fields = {f: getattr(obs, f) for f in entities.EntityObs.__dataclass_fields__}
    cast = {f: x.astype(bool if f.endswith("mask") else jnp.int32 if f.endswith("indexes") else jnp.float32)
            for f, x in fields.items()}
    return entities.EntityObs(**cast)

  @property
  def action_space(self):
    return self._space

  @property
  def max_episode_steps(self):
    return int(self._params.max_timesteps)

  def _noop_solved(self, level) -> jax.Array:
    """Whether the all-zeros action reaches the goal within FILTER_STEPS (first episode end has reward > 0.5)."""
    noop = jnp.zeros((len(self._space.nvec),), jnp.int32)

    def step(carry, key):
      state, done, solved = carry
      _, state, reward, now_done, _ = self._env.step_env(key, state, noop, self._params)
      solved = solved | (~done & now_done & (reward > 0.5))
      return (state, done | now_done, solved), None

    keys = jax.random.split(jax.random.PRNGKey(0), FILTER_STEPS)  # the physics ignores the key
    (_, _, solved), _ = jax.lax.scan(step, (level, jnp.zeros((), bool), jnp.zeros((), bool)), keys)
    return solved

  def _random_level(self, key):
    if not self.filter_levels:
      return self._sample_level(key)
    sample_key, choose_key = jax.random.split(key)
    levels = jax.vmap(self._sample_level)(jax.random.split(sample_key, FILTER_SAMPLE_RATIO))
    solved = jax.vmap(self._noop_solved)(levels)
    logits = jnp.log(jnp.where(solved, SOLVED_WEIGHT, 1.0))
    index = jax.random.categorical(choose_key, logits)
    return jax.tree.map(lambda x: x[index], levels)

  def reset(self, key):
    state = self._fixed_level if self._fixed_level is not None else self._random_level(key)
    return state, self._obs(state)

  def success(self, result: base.StepResult) -> jax.Array:
    """Kinetix's own success measure, for evaluation: this step ended the episode at the goal (the only episode end
    with reward > 0.5, as in the level filter above)."""
    return result.terminated & (result.reward > 0.5)

  def step(self, key, state, action):
    _, new_state, reward, done, info = self._env.step_env(key, state, action, self._params)
    time_out = new_state.timestep >= self._params.max_timesteps
    terminated = done & (~time_out | info["GoalR"])
    return base.StepResult(
        state=new_state,
        obs=self._obs(new_state),
        reward=jnp.asarray(reward, jnp.float32),
        terminated=jnp.asarray(terminated, bool),
        truncated=jnp.asarray(time_out, bool),
    )


def solve_levels(spec: str) -> dict[str, list[str]]:
  """`eval.solve_levels` ("s,m,l", sizes and / or shipped level names, comma-separated) -> size -> level names."""
  import_kinetix()
  shipped = shipped_levels()
  out: dict[str, list[str]] = {}
  for item in (x.strip() for x in spec.split(",") if x.strip()):
    names = [n for n in shipped if n.startswith(item + "/")] if item in SIZES else [item]
    for name in names:
      if name not in shipped:
        raise base.UnknownEnvError(f'"{name}" is neither a Kinetix size (s, m, l) nor a shipped level; kinetix-env ships: '
                              + ", ".join(shipped))
      size = name.split("/")[0]
      if name not in out.setdefault(size, []):
        out[size].append(name)
  return out


def stacked_levels(names: list[str], observation: str):
  """One env for levels of one size (its step and observations) and their start states stacked [L, ...]. Kept for
  the process: kinetix-env's loader takes ~2 s a level in eager JAX ops, and a run rebuilds its programs (with the
  solve levels) at every change of num_envs (elastic schedules, autoscale)."""
  return _stacked_levels(tuple(names), observation)


@functools.lru_cache(maxsize=8)
def _stacked_levels(names: tuple[str, ...], observation: str):
  _, _, _, _, _, saving = import_kinetix()
  loaded = [saving.load_from_json_file(saving.get_correct_path_of_json_level(n)) for n in names]
  if any(static != loaded[0][1] for _, static, _ in loaded):
    raise ValueError(f"levels {names} have different static env params: evaluate them apart")
  env = KinetixEnv(names[0], observation=observation)
  return env, jax.tree.map(lambda *x: jnp.stack(x), *[level for level, _, _ in loaded])
