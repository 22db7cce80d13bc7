"""One PPO update (rollout → GAE → SGD) as a single pure function, and the train state's initialisation.

`make_iteration` returns `TrainState -> (TrainState, UpdateMetrics)`; launch/run/programs.py jits it with explicit shardings
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
from learner import diagnostics as diagnostics_lib, distributions, ewma as ewma_lib, losses, networks
from learner import obs_store as obs_store_lib
from learner import outer_step as outer_step_lib
from pipeline.train_state import TrainState
from pipeline import batch_rows, gae as gae_lib
from pipeline import obs_norm as obs_norm_lib
from pipeline import rollout as rollout_lib
from pipeline import sfl as sfl_lib
from pipeline import sgd as sgd_lib


@dataclasses.dataclass(frozen=True)
class PPOSettings:
  """The algorithm's resolved hyperparameters (derived from the config in one place: launch/config/resolve.py)."""
  num_envs: int
  num_steps: int
  update_epochs: int
  num_minibatches: int
  gamma: float
  gae_lambda: float
  clip_eps: float
  vf_coef: float
  ent_coef: float
  sgd_chunk_size: int | None = None  # samples per gradient chunk (divides the minibatch); None: whole minibatch
  diagnostics: bool = True  # compute learner/diagnostics.py's per-update statistics
  kl_quantile: float = 0.9  # which quantile of the per-state KL to report
  local_shuffle: bool = False  # each learner device draws its share of every minibatch from its own samples
  ewma_decay: float | None = None  # PPO-EWMA: proximal params = EWMA of params with this decay; None = off
  obs_norm: bool = False  # normalise observations with running statistics
  reset_pool_size: int = 0  # 0: plain auto-reset; else finished episodes restart from a pool of this many states
  reset_pool_refresh: int = 0  # pool entries re-sampled per env step
  outer_step: outer_step_lib.OuterSettings | None = None  # learning rate controlled from the measured KL; None = off
  sfl: sfl_lib.SFLSettings | None = None  # level sampler: Sampling For Learnability (pipeline/sfl.py); None = uniform

  @property
  def batch_size(self) -> int:
    return self.num_envs * self.num_steps


_PLAIN = PPOSettings(num_envs=0, num_steps=0, update_epochs=0, num_minibatches=0, gamma=0.0, gae_lambda=0.0,
                     clip_eps=0.0, vf_coef=0.0, ent_coef=0.0)  # the optional parts' defaults (all off)


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
  diagnostics: diagnostics_lib.Diagnostics | None = None  # None when diagnostics are off
  sfl: sfl_lib.SFLMetrics | None = None  # None unless level_sampler.kind=sfl


@struct.dataclass
class LearnAux:
  """What the learn stage reports besides the new params: SGD statistics and the update's diagnostics."""
  loss: losses.LossAux  # averaged over all minibatch steps
  diagnostics: diagnostics_lib.Diagnostics | None = None  # None when diagnostics are off


@dataclasses.dataclass(frozen=True)
class Agent:
  """The pieces the pipeline needs to act and learn, built once from the config."""
  env: base.Environment
  model: networks.ActorCritic  # or learner/entity_network.EntityActorCritic: the same interface
  dist: distributions.Distribution
  optimizer: optax.GradientTransformation
  # The observations' precision (learner/obs_store.py): every use of the policy — acting, bootstrapping, learning,
  # evaluating — goes through `apply` / `value`, which see observations rounded as the trajectory stores them.
  obs_store: str = "float32"

  def apply(self, params, obs):
    return self.model.apply(params, obs_store_lib.view(obs, self.obs_store))

  def value(self, params, obs):
    return self.model.apply(params, obs_store_lib.view(obs, self.obs_store), method=type(self.model).value)


def _global_norm(tree) -> jax.Array:
  return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def init_train_state(agent: Agent, key: jax.Array, num_envs: int, ppo: PPOSettings | None = None) -> TrainState:
  """The state before the first update. `ppo` switches on the optional parts: PPO-EWMA's proximal params (starting
  at the initial params), observation statistics and a reset pool (in the runner)."""
  ppo = ppo or _PLAIN
  key, params_key, env_key = jax.random.split(key, 3)
  params = agent.model.init(params_key, base.zeros_like_spec(agent.env.observation_spec))
  runner = rollout_lib.init_runner(agent.env, env_key, num_envs, obs_norm=ppo.obs_norm,
                                   reset_pool_size=ppo.reset_pool_size,
                                   level_buffer_size=ppo.sfl.buffer_size if ppo.sfl else 0)
  return TrainState(params=params, opt_state=agent.optimizer.init(params), runner=runner, key=key,
                    update=jnp.zeros((), jnp.int32),
                    proximal=ewma_lib.init(params) if ppo.ewma_decay is not None else None,
                    outer=outer_step_lib.init() if ppo.outer_step is not None else None)


@struct.dataclass
class ActorOutput:
  """What the act stage hands downstream for one batch."""
  runner: rollout_lib.RunnerState
  traj: batch_rows.Rows  # the trajectory as rows [T, N, F] (rollout_lib.Trajectory's columns)
  last_value: jax.Array
  stats: rollout_lib.EpisodeStats


@dataclasses.dataclass(frozen=True)
class Stages:
  """The update split into its pure stages; `make_iteration` composes them, pipeline/dataflow.py runs them apart.

  act(params, runner, key) -> ActorOutput
  advantage(traj, last_value) -> batch_rows.Rows of a losses.Minibatch ([T, N, F], the trajectory's rows updated)
  learn(params, opt_state, proximal, batch, key) -> (params, opt_state, proximal, LearnAux)
  metrics(aux, params, stats) -> UpdateMetrics
  """
  act: Callable
  advantage: Callable
  learn: Callable
  metrics: Callable


def split_update_key(key: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The key schedule: key_u -> (key_{u+1}, rollout key of update u, SGD key of update u)."""
  next_key, rollout_key, sgd_key = jax.random.split(key, 3)
  return next_key, rollout_key, sgd_key


def make_stages(agent: Agent, ppo: PPOSettings, actor_constrain: Callable = lambda tree, axis=0: tree,
                learner_constrain: Callable | None = None, *, flat_gather: bool = False,
                learner_shards: int = 1) -> Stages:
  """`*_constrain(tree, axis)` pin the env axis of intermediates to the actors' / learner's mesh; `flat_gather`:
  the learner's batch is on one device, so minibatches gather rows by flat index (batch_rows.at: faster);
  `learner_shards`: devices the learner's env axis is split over (with ppo.local_shuffle each permutes its own)."""
  learner_constrain = learner_constrain or actor_constrain
  loss_fn = functools.partial(losses.ppo_loss, apply_fn=agent.apply, dist=agent.dist, clip_eps=ppo.clip_eps,
                              vf_coef=ppo.vf_coef, ent_coef=ppo.ent_coef)

  def act(params, runner, key) -> ActorOutput:
    runner, traj, last_value, stats = rollout_lib.rollout(
        params, runner, key, env=agent.env, apply_fn=agent.apply, value_fn=agent.value, dist=agent.dist,
        num_steps=ppo.num_steps, gamma=ppo.gamma, constrain=actor_constrain, keep_head=ppo.diagnostics,
        pool_refresh=ppo.reset_pool_refresh, buffer_ratio=ppo.sfl.buffer_ratio if ppo.sfl else 0.0,
        obs_store=agent.obs_store)
    return ActorOutput(runner=runner, traj=actor_constrain(traj, 1), last_value=last_value, stats=stats)

  def advantage(traj: batch_rows.Rows, last_value) -> batch_rows.Rows:
    rows = gae_lib.advantages_in_rows(traj, last_value, gamma=ppo.gamma, gae_lambda=ppo.gae_lambda)
    return rows.relabel(lambda t: losses.Minibatch(obs=t.obs, action=t.action, log_prob=t.log_prob, value=t.value,
                                                   advantage=t.reward, target=t.done, behaviour_head=t.head))

  def learn(params, opt_state, proximal, batch: batch_rows.Rows, key, lr_scale=None):
    sgd = sgd_lib.sgd_epochs(
        params, opt_state, batch, key, loss_fn=loss_fn, optimizer=agent.optimizer, update_epochs=ppo.update_epochs,
        num_minibatches=ppo.num_minibatches, chunk_size=ppo.sgd_chunk_size, constrain=learner_constrain,
        proximal=proximal, ewma_decay=ppo.ewma_decay, track_grad_noise=ppo.diagnostics, lr_scale=lr_scale,
        flat_gather=flat_gather, local_shards=learner_shards if ppo.local_shuffle else 0)
    diagnostics = None
    if ppo.diagnostics:
      states = lambda row: (lambda mb: (mb.obs, mb.behaviour_head))(batch_rows.unpack(batch, row))
      diagnostics = diagnostics_lib.compute(params, sgd.params, batch.data, batch_rows.column(batch, ".value"),
                                            batch_rows.column(batch, ".target"), sgd.grad_noise, states=states,
                                            apply_fn=agent.apply, dist=agent.dist,
                                            kl_quantile=ppo.kl_quantile,
                                            key=jax.random.fold_in(key, 1))  # apart from the epochs' split(key)
    return sgd.params, sgd.opt_state, sgd.proximal, LearnAux(loss=sgd.loss, diagnostics=diagnostics)

  def metrics(aux: LearnAux, params, stats: rollout_lib.EpisodeStats) -> UpdateMetrics:
    loss = aux.loss
    return UpdateMetrics(policy_loss=loss.policy_loss, value_loss=loss.value_loss, entropy=loss.entropy,
                         approx_kl=loss.approx_kl, clip_fraction=loss.clip_fraction,
                         param_norm=_global_norm(params), episode_return_sum=stats.return_sum,
                         episode_count=stats.count, diagnostics=aux.diagnostics)

  return Stages(act=act, advantage=advantage, learn=learn, metrics=metrics)


def make_rescore(agent: Agent, ppo: PPOSettings, constrain_envs: Callable = lambda tree, axis=0: tree) -> Callable:
  """SFL's re-scoring (pipeline/sfl.py) as `TrainState -> TrainState` with a new level buffer in the runner, drawn
  with the update's key folded with sfl.SFL_STREAM; the policy sees observations normalised with the runner's
  statistics, as in the rollout. It is a program of its own (launch/run/programs.py runs it before updates 1,
  1 + rescore_every, ...): inside the update under lax.cond, both would be one program, which at Kinetix's size
  did not finish compiling in 20 minutes on CPU."""

  def rescore(state: TrainState) -> TrainState:
    runner = state.runner
    stats = runner.obs_norm
    normalize = (lambda obs: obs) if stats is None else (lambda obs: obs_norm_lib.normalize(stats, obs))
    buffer = sfl_lib.rescore(state.params, jax.random.fold_in(state.key, sfl_lib.SFL_STREAM), env=agent.env,
                             apply_fn=agent.apply, dist=agent.dist, settings=ppo.sfl, normalize=normalize,
                             constrain=constrain_envs)
    return state.replace(runner=runner.replace(level_buffer=buffer))

  return rescore


def make_iteration(agent: Agent, ppo: PPOSettings, constrain_envs: Callable = lambda tree, axis=0: tree, *,
                   flat_gather: bool = False, shards: int = 1) -> Callable:
  """Returns the fused update `TrainState -> (TrainState, UpdateMetrics)`: all stages in one function.

  `constrain_envs(tree, axis)` pins the env axis of intermediate arrays to the mesh (sharding.Layout.constrain_envs);
  `flat_gather`, `shards` (make_stages' learner_shards): as make_stages'.
  """
  stages = make_stages(agent, ppo, constrain_envs, flat_gather=flat_gather, learner_shards=shards)

  def iteration(state: TrainState) -> tuple[TrainState, UpdateMetrics]:
    key, rollout_key, sgd_key = split_update_key(state.key)
    out = stages.act(state.params, state.runner, rollout_key)
    batch = stages.advantage(out.traj, out.last_value)
    outer = state.outer
    params, opt_state, proximal, aux = stages.learn(state.params, state.opt_state, state.proximal, batch, sgd_key,
                                                    lr_scale=None if outer is None else outer.lr_scale)
    if outer is not None:  # the next update's learning-rate scale, from this one's measured KL
      outer = outer_step_lib.step(ppo.outer_step, outer, aux.diagnostics.kl_mean, aux.diagnostics.samples)
    new_state = TrainState(params=params, opt_state=opt_state, runner=out.runner, key=key, update=state.update + 1,
                           proximal=proximal, outer=outer)
    metrics = stages.metrics(aux, params, out.stats)
    if ppo.sfl:  # the buffer of the last re-scoring (make_rescore), and this rollout's share of resets from it
      metrics = metrics.replace(sfl=sfl_lib.metrics(out.runner.level_buffer, out.stats.buffer_resets,
                                                    out.stats.count))
    return new_state, metrics

  return iteration
