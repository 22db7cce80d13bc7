"""One PPO update (rollout → GAE → SGD) as a single pure function, and the train state's initialisation.

`make_iteration` returns `TrainState -> (TrainState, UpdateMetrics)`; the trainer jits it with explicit shardings
and donates the state. Nothing inside syncs with the host.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import struct

from envs import base
from envs import reset_pool as reset_pool_lib
from learner import distributions, losses, networks
from learner.state import TrainState
from pipeline import gae as gae_lib
from pipeline import obs_norm as obs_norm_lib
from pipeline import rollout as rollout_lib
from pipeline import sgd as sgd_lib


@dataclasses.dataclass(frozen=True)
class PPOSettings:
  """The algorithm's resolved hyperparameters (derived from the config in one place: launch/config_lib.py)."""
  num_envs: int
  num_steps: int
  update_epochs: int
  num_minibatches: int
  gamma: float
  gae_lambda: float
  clip_eps: float
  vf_coef: float
  ent_coef: float
  obs_norm: bool = False  # normalise observations with running statistics
  reset_pool_size: int = 0  # 0: plain auto-reset; else finished episodes restart from a pool of this many states
  reset_pool_refresh: int = 0  # pool entries re-sampled per env step

  @property
  def batch_size(self) -> int:
    return self.num_envs * self.num_steps


@struct.dataclass
class UpdateMetrics:
  """Scalars from one update; the host pulls them once per log interval."""
  policy_loss: jax.Array
  value_loss: jax.Array
  entropy: jax.Array
  approx_kl: jax.Array
  clip_fraction: jax.Array
  param_norm: jax.Array
  episode_return_sum: jax.Array
  episode_count: jax.Array


@dataclasses.dataclass(frozen=True)
class Agent:
  """The pieces the pipeline needs to act and learn, built once from the config."""
  env: base.Environment
  model: networks.ActorCritic
  dist: distributions.Distribution
  optimizer: optax.GradientTransformation

  def apply(self, params, obs):
    return self.model.apply(params, obs)

  def value(self, params, obs):
    return self.model.apply(params, obs, method=networks.ActorCritic.value)


def _global_norm(tree) -> jax.Array:
  return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def init_train_state(agent: Agent, key: jax.Array, num_envs: int, ppo: PPOSettings | None = None) -> TrainState:
  key, params_key, env_key = jax.random.split(key, 3)
  params = agent.model.init(params_key, jnp.zeros(agent.env.observation_shape, jnp.float32))
  obs_norm = pool = None
  if ppo is not None and ppo.reset_pool_size:
    pool = reset_pool_lib.init_pool(agent.env, jax.random.fold_in(env_key, 1), ppo.reset_pool_size)
    runner = rollout_lib.init_runner_from_pool(pool, env_key, num_envs)
  else:
    runner = rollout_lib.init_runner(agent.env, env_key, num_envs)
  if ppo is not None and ppo.obs_norm:  # start from the moments of the first observations, not the identity
    obs_norm = obs_norm_lib.update(obs_norm_lib.init(agent.env.observation_shape), runner.obs)
  return TrainState(params=params, opt_state=agent.optimizer.init(params), runner=runner, key=key,
                    update=jnp.zeros((), jnp.int32), obs_norm=obs_norm, reset_pool=pool)


def make_iteration(agent: Agent, ppo: PPOSettings,
                   constrain_envs: Callable = lambda tree, axis=0: tree) -> Callable:
  """Returns the pure update `TrainState -> (TrainState, UpdateMetrics)`.

  `constrain_envs(tree, axis)` pins the env axis of intermediate arrays to the mesh (sharding.Layout.constrain_envs).
  """
  loss_fn = functools.partial(losses.ppo_loss, apply_fn=agent.apply, dist=agent.dist, clip_eps=ppo.clip_eps,
                              vf_coef=ppo.vf_coef, ent_coef=ppo.ent_coef)

  def iteration(state: TrainState) -> tuple[TrainState, UpdateMetrics]:
    key, rollout_key, sgd_key = jax.random.split(state.key, 3)
    runner, traj, last_value, stats, obs_norm, pool = rollout_lib.rollout(
        state.params, state.runner, rollout_key, env=agent.env, apply_fn=agent.apply, value_fn=agent.value,
        dist=agent.dist, num_steps=ppo.num_steps, constrain=constrain_envs, obs_norm=state.obs_norm,
        reset_pool=state.reset_pool, pool_refresh=ppo.reset_pool_refresh)
    traj = constrain_envs(traj, 1)
    advantages, targets = gae_lib.gae(traj.reward, traj.value, traj.terminated, traj.truncated,
                                      traj.truncation_value, last_value, gamma=ppo.gamma,
                                      gae_lambda=ppo.gae_lambda)
    batch = losses.Minibatch(obs=traj.obs, action=traj.action, log_prob=traj.log_prob, value=traj.value,
                             advantage=advantages, target=targets)
    params, opt_state, aux = sgd_lib.sgd_epochs(
        state.params, state.opt_state, batch, sgd_key, loss_fn=loss_fn, optimizer=agent.optimizer,
        update_epochs=ppo.update_epochs, num_minibatches=ppo.num_minibatches, constrain=constrain_envs)
    new_state = TrainState(params=params, opt_state=opt_state, runner=runner, key=key, update=state.update + 1,
                           obs_norm=obs_norm, reset_pool=pool)
    metrics = UpdateMetrics(policy_loss=aux.policy_loss, value_loss=aux.value_loss, entropy=aux.entropy,
                            approx_kl=aux.approx_kl, clip_fraction=aux.clip_fraction,
                            param_norm=_global_norm(params), episode_return_sum=stats.return_sum,
                            episode_count=stats.count)
    return new_state, metrics

  return iteration
