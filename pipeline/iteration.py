"""One PPO update (rollout → GAE → SGD) as a single pure function, and the train state's initialisation.

`make_iteration` returns `TrainState -> (TrainState, UpdateMetrics)`; the trainer jits it with explicit shardings
and donates the state. Nothing inside syncs with the host.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from envs import base
from learner import diagnostics as diagnostics_lib, distributions, ewma as ewma_lib, losses, networks
from learner.state import TrainState
from pipeline import gae as gae_lib
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
  diagnostics: bool = True  # compute learner/diagnostics.py's per-update statistics
  kl_quantile: float = 0.9  # which quantile of the per-state KL to report
  ewma_decay: float | None = None  # PPO-EWMA: proximal params = EWMA of params with this decay; None = off

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
  diagnostics: Any = None  # learner.diagnostics.Diagnostics, or None when diagnostics are off


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


def init_train_state(agent: Agent, key: jax.Array, num_envs: int, ewma: bool = False) -> TrainState:
  """`ewma`: also create PPO-EWMA's proximal params (starting at the initial params)."""
  key, params_key, env_key = jax.random.split(key, 3)
  params = agent.model.init(params_key, jnp.zeros(agent.env.observation_shape, jnp.float32))
  return TrainState(params=params, opt_state=agent.optimizer.init(params),
                    runner=rollout_lib.init_runner(agent.env, env_key, num_envs), key=key,
                    update=jnp.zeros((), jnp.int32), proximal=ewma_lib.init(params) if ewma else None)


def make_iteration(agent: Agent, ppo: PPOSettings,
                   constrain_envs: Callable = lambda tree, axis=0: tree) -> Callable:
  """Returns the pure update `TrainState -> (TrainState, UpdateMetrics)`.

  `constrain_envs(tree, axis)` pins the env axis of intermediate arrays to the mesh (sharding.Layout.constrain_envs).
  """
  loss_fn = functools.partial(losses.ppo_loss, apply_fn=agent.apply, dist=agent.dist, clip_eps=ppo.clip_eps,
                              vf_coef=ppo.vf_coef, ent_coef=ppo.ent_coef)

  def iteration(state: TrainState) -> tuple[TrainState, UpdateMetrics]:
    key, rollout_key, sgd_key = jax.random.split(state.key, 3)
    runner, traj, last_value, stats = rollout_lib.rollout(
        state.params, state.runner, rollout_key, env=agent.env, apply_fn=agent.apply, value_fn=agent.value,
        dist=agent.dist, num_steps=ppo.num_steps, constrain=constrain_envs)
    traj = constrain_envs(traj, 1)
    advantages, targets = gae_lib.gae(traj.reward, traj.value, traj.terminated, traj.truncated,
                                      traj.truncation_value, last_value, gamma=ppo.gamma,
                                      gae_lambda=ppo.gae_lambda)
    batch = losses.Minibatch(obs=traj.obs, action=traj.action, log_prob=traj.log_prob, value=traj.value,
                             advantage=advantages, target=targets)
    params, opt_state, aux, proximal, noise = sgd_lib.sgd_epochs(
        state.params, state.opt_state, batch, sgd_key, loss_fn=loss_fn, optimizer=agent.optimizer,
        update_epochs=ppo.update_epochs, num_minibatches=ppo.num_minibatches, constrain=constrain_envs,
        proximal=state.proximal, ewma_decay=ppo.ewma_decay, track_grad_noise=ppo.diagnostics)
    new_state = TrainState(params=params, opt_state=opt_state, runner=runner, key=key, update=state.update + 1,
                           proximal=proximal)
    diagnostics = None
    if ppo.diagnostics:
      diagnostics = diagnostics_lib.compute(state.params, params, traj.obs, traj.head, traj.value, targets, noise,
                                            apply_fn=agent.apply, dist=agent.dist, kl_quantile=ppo.kl_quantile)
    metrics = UpdateMetrics(policy_loss=aux.policy_loss, value_loss=aux.value_loss, entropy=aux.entropy,
                            approx_kl=aux.approx_kl, clip_fraction=aux.clip_fraction,
                            param_norm=_global_norm(params), episode_return_sum=stats.return_sum,
                            episode_count=stats.count, diagnostics=diagnostics)
    return new_state, metrics

  return iteration
