"""Every compiled program of a run, built in one place from the agent, the resolved config and the meshes.

eval_shape(init) → shardings → jit(init, out_shardings); the fused update (or the staged pipeline's stages) jitted
with in/out shardings and donated state, lowered and compiled ahead of time with the backend's compiler options
(launch/run/xla_options.py); the evaluation likewise. The trainer, the tests and the benchmarks all take their programs
from here, so what a test checks and what a benchmark times is the program a run executes.

  progs = programs.build(config)                     # the trainer's programs for `config` on its mesh
  state = progs.init(jax.random.PRNGKey(0))          # created already sharded
  state, metrics = progs.update(state)               # fused mode (donates `state`)
  results = dataflow.Pipeline(progs.pipeline, lag).run(dataflow.Snapshot(state), n)   # sync / overlap
"""
from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import ml_collections
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import envs
from launch.config import resolve as config_lib
from launch.run import xla_options
from learner import distributions, entity_network, networks, optimizer as optimizer_lib
from pipeline.train_state import TrainState
from pipeline import dataflow
from pipeline import evaluate as evaluate_lib
from pipeline import solve_rate as solve_rate_lib
from pipeline import iteration as iteration_lib
from pipeline import rollout as rollout_lib
from sharding import Layout, make_mesh, split_mesh


@dataclasses.dataclass(frozen=True)
class Programs:
  """A run's programs and where its state lives. `update` is set in fused mode, `pipeline` in sync / overlap."""
  resolved: config_lib.Resolved
  agent: iteration_lib.Agent
  layout: Layout  # the learner's mesh (in fused mode the whole mesh)
  actor_layout: Layout  # the actors' mesh: `layout` itself unless pipeline.actor_devices > 0
  state_shardings: TrainState  # of shardings: the runner on the actors' mesh, the rest on the learner's
  abstract_state: TrainState  # of ShapeDtypeStructs placed per state_shardings: a restore target, a lowering input
  init: Callable  # key -> TrainState, placed per state_shardings (jitted; compiled on its first call)
  update: Callable | None = None  # TrainState -> (TrainState, UpdateMetrics), donating its input (with SFL, the
  #   re-scoring program first where it is due: `SFLUpdate`)
  pipeline: dataflow.PipelineFns | None = None  # the staged pipeline's compiled stages, bound to their meshes
  evaluate: Callable | None = None  # (params, key, obs_norm) -> mean deterministic return
  resize_runner: Callable | None = None  # (runner at another num_envs, key) -> runner placed per state_shardings
  solve_rates: Callable | None = None  # (params, key, obs_norm) -> {level: solve rate}, per config.eval.solve_levels
  rescore: Callable | None = None  # SFL's re-scoring, TrainState -> TrainState with a new level buffer (donating)
  compile_time: float = 0.0  # seconds spent compiling update / stages and evaluation
  compiled: dict = dataclasses.field(default_factory=dict)  # name -> jax.stages.Compiled (for memory_analysis)

  def eval_obs_norm(self, state: TrainState):
    """The actors' observation statistics (None when off), moved next to the learner's params for evaluation."""
    return jax.device_put(state.runner.obs_norm, self.layout.replicated)

  def evaluate_state(self, state: TrainState, key: jax.Array) -> jax.Array:
    return self.evaluate(state.params, key, self.eval_obs_norm(state))

  def solve_rates_state(self, state: TrainState, key: jax.Array) -> dict[str, float]:
    return self.solve_rates(state.params, key, self.eval_obs_norm(state))


def build_agent(config: ml_collections.ConfigDict, resolved: config_lib.Resolved) -> iteration_lib.Agent:
  """The env, network, action distribution and optimizer that `config` describes."""
  env = envs.make(config.env_name, config.get("sticky_actions", 0.0))
  dist = distributions.for_action_space(env.action_space)
  net = config.network
  if net.kind == "entity":
    model = entity_network.EntityActorCritic(dist=dist, hidden_sizes=tuple(net.hidden_sizes), activation=net.activation,
                                             width=net.entity_width, layers=net.entity_layers, heads=net.entity_heads,
                                             qkv_features=net.entity_qkv)
  else:
    model = networks.ActorCritic(dist=dist, hidden_sizes=tuple(net.hidden_sizes), activation=net.activation,
                                 shared_trunk=net.shared_trunk)
  # After a change of num_envs the anneal continues from the share of the learning rate it had left (elastic.py).
  optimizer = optimizer_lib.make_optimizer(resolved.learning_rate * resolved.lr_fraction, config.max_grad_norm,
                                           config.anneal_lr, config.update_epochs * resolved.ppo.num_minibatches,
                                           resolved.num_updates, resolved.first_update)
  return iteration_lib.Agent(env=env, model=model, dist=dist, optimizer=optimizer, obs_store=config.obs_store)


def build(config: ml_collections.ConfigDict, mesh: Mesh | None = None, *,
          resolved: config_lib.Resolved | None = None, agent: iteration_lib.Agent | None = None,
          mode: str | None = None, eval_episodes: int | None = None, **kwargs) -> Programs:
  """The programs `config` runs: its agent, on `mesh` (default make_mesh(config.mesh.data)) split into actor and
  learner sub-meshes per config.pipeline.actor_devices, in config.pipeline.mode (or `mode`), evaluating
  config.eval_episodes episodes (or `eval_episodes`; 0: no evaluate program).

  `resolved` defaults to config_lib.resolve(config, jax.device_count()); other arguments go to `make_programs`.
  """
  resolved = resolved or config_lib.resolve(config, num_devices=jax.device_count())
  agent = agent or build_agent(config, resolved)
  actor_mesh, learner_mesh = split_mesh(mesh if mesh is not None else make_mesh(config.mesh.data),
                                        config.pipeline.actor_devices)
  progs = make_programs(agent, resolved, Layout(learner_mesh), Layout(actor_mesh), mode=mode or config.pipeline.mode,
                        eval_episodes=config.eval_episodes if eval_episodes is None else eval_episodes,
                        eval_sampled=config.eval.get("policy", "mode") == "sampled", **kwargs)
  if not config.eval.solve_levels or not progs.evaluate:
    return progs
  t0 = time.time()
  solve = solve_rate_program(agent, _kinetix_level_groups(agent, config.eval.solve_levels),
                             config.eval.solve_attempts, progs, kwargs.get("aot"))
  return dataclasses.replace(progs, solve_rates=solve, compile_time=progs.compile_time + time.time() - t0)


def _kinetix_level_groups(agent, spec: str) -> list[LevelGroup]:
  """config.eval.solve_levels as one group per level size (kinetix-env's shipped levels)."""
  from envs import kinetix_adapter  # pylint: disable=import-outside-toplevel
  shipped, groups = kinetix_adapter.shipped_levels(), []
  for names in kinetix_adapter.solve_levels(spec).values():
    env, levels = kinetix_adapter.stacked_levels(names, agent.env.observation)
    ids = jax.numpy.asarray([shipped.index(n) for n in names], jax.numpy.int32)
    groups.append(LevelGroup(names, env, levels, ids))
  return groups


class LevelGroup(NamedTuple):
  """Levels of one size: their names, the env that plays them, their start states stacked [L, ...] and ids [L]."""
  names: list[str]
  env: object
  levels: object
  ids: jax.Array


def solve_rate_program(agent, groups: list[LevelGroup], attempts: int, progs: Programs,
                       aot: Callable | None = None) -> Callable:
  """Solve rates (pipeline/solve_rate.py), one compiled program per group, next to the learner's params and fed the
  run's observation statistics as evaluation is: `(params, key, obs_norm) -> {level: solve rate}`. `aot` as
  make_programs' (default: compiled with XLA's default options)."""
  aot = aot or (lambda name, jitted, *args: jitted.lower(*args).compile())
  params, compiled = progs.abstract_state.params, []
  obs_norm = _placed(progs.abstract_state.runner.obs_norm,
                     jax.tree.map(lambda _: progs.layout.replicated, progs.abstract_state.runner.obs_norm))
  for group in groups:
    levels, ids = jax.device_put((group.levels, group.ids), jax.tree.leaves(params)[0].sharding)  # next to params
    fn = jax.jit(solve_rate_lib.make_solve_rates(group.env, agent.apply, agent.dist, attempts))
    key = jax.eval_shape(jax.random.PRNGKey, 0)
    compiled.append((group.names, aot(f"solve_rates_{len(compiled)}", fn, params, key, levels, ids, obs_norm),
                     levels, ids))

  def solve_rates(params, key, obs_norm) -> dict[str, float]:
    out = {}
    for names, fn, levels, ids in compiled:
      out.update(zip(names, (float(r) for r in jax.device_get(fn(params, key, levels, ids, obs_norm)))))
    return out

  return solve_rates


def make_programs(agent: iteration_lib.Agent, resolved: config_lib.Resolved, layout: Layout,
                  actor_layout: Layout | None = None, *, mode: str = "fused", eval_episodes: int = 0,
                  eval_sampled: bool = False, compile_update: bool = True, num_seeds: int | None = None,
                  updates_per_call: int = 1,
                  compiler_options: dict[str, str] | None = None, aot: Callable | None = None) -> Programs:
  """Builds and compiles the programs of a run from its parts.

  mode: "fused" (one update program) or "sync" / "overlap" (the pipeline's stages; the lag is the Pipeline's).
  eval_episodes: parallel episodes of the evaluate program (0: no evaluate program).
  eval_sampled: the evaluate program draws actions as in training instead of taking the mode (eval.policy).
  compile_update: False builds only the init and the state's placement (e.g. a restore target).
  num_seeds: S independent runs in one program (fused only): init takes keys [S], every state leaf and metric gets
    a leading seed axis (never split over devices), the update and evaluation are vmapped over it.
  updates_per_call: k > 1 scans k fused updates per call; the metrics then have a leading axis of k.
  compiler_options: default xla_options.compiler_options(jax.default_backend()).
  aot: `(name, jitted, *abstract_args) -> program` replaces lowering and compiling (default: compile with
    `compiler_options`); the cross-platform dry run (launch/run/portability.py) records the programs with it.
  With level_sampler.kind=sfl the re-scoring is a program of its own (`rescore`), and `update` runs it before
  updates 1, 1 + rescore_every, ... (`SFLUpdate`); benchmarks/sfl_cost.py times the two apart.
  """
  actor_layout = actor_layout or layout
  ppo = resolved.ppo
  if compiler_options is None:
    compiler_options = xla_options.compiler_options(jax.default_backend())
  compiled, recording = {}, aot is not None
  aot = aot or _compiler(compiler_options, compiled)
  if mode == "fused" and actor_layout.mesh is not layout.mesh:
    raise ValueError("the fused update runs on one mesh: actors and learner must share it")
  if mode != "fused" and (num_seeds or updates_per_call != 1):
    raise ValueError("num_seeds and updates_per_call apply to the fused update only")
  if (num_seeds or updates_per_call != 1) and ppo.sfl:  # the host decides when the re-scoring program runs
    raise ValueError("num_seeds and updates_per_call with level_sampler.kind='sfl' are not supported: build one "
                     "program per seed, one update per call")
  seeded = (lambda f: jax.vmap(f)) if num_seeds else (lambda f: f)

  # Shard: shapes → shardings → an init that creates the state already placed.
  init_fn = init_function(agent, ppo, num_seeds)
  key = jax.eval_shape(jax.random.PRNGKey, 0)
  if num_seeds:
    key = jax.ShapeDtypeStruct((num_seeds, *key.shape), key.dtype)
  shapes = jax.eval_shape(init_fn, key)
  learner_shardings = _with_seed_axis(layout.train_state_shardings(_per_seed(shapes, num_seeds)), num_seeds)
  state_shardings = learner_shardings.replace(
      runner=_with_seed_axis(actor_layout.runner_shardings(_per_seed(shapes.runner, num_seeds)), num_seeds))
  abstract_state = _placed(shapes, state_shardings)
  init_jit = jax.jit(init_fn, out_shardings=learner_shardings)

  def init(key):
    state = init_jit(key)
    if actor_layout.mesh is not layout.mesh:  # one jit cannot write to two meshes: the runner moves to the actors
      state = state.replace(runner=jax.device_put(state.runner, state_shardings.runner))
    return state

  # A checkpoint of another num_envs (launch/run/elastic.py): its runner, rebuilt at this run's count (rollout.py).
  resize_runner = jax.jit(functools.partial(rollout_lib.resize_runner, agent.env, num_envs=ppo.num_envs),
                          out_shardings=state_shardings.runner) if not num_seeds else None
  progs = Programs(resolved=resolved, agent=agent, layout=layout, actor_layout=actor_layout,
                   state_shardings=state_shardings, abstract_state=abstract_state, init=init,
                   resize_runner=resize_runner)
  if recording:  # these two compile on their first call in a run; the dry run lowers them as well
    aot("init", init_jit, key)
    if resize_runner is not None:
      aot("resize_runner", resize_runner, abstract_state.runner, abstract_state.key)
  if not compile_update:
    return progs

  # Update step(s) and evaluation, compiled ahead of time.
  t0 = time.time()
  update = pipeline = evaluate = rescore = None
  if mode == "fused":
    step = seeded(iteration_lib.make_iteration(agent, ppo, layout.constrain_envs,
                                               flat_gather=layout.num_shards == 1, shards=layout.num_shards))
    if updates_per_call > 1:
      step = functools.partial(_scanned, step, updates_per_call)
    update = aot("update", jax.jit(step, in_shardings=(state_shardings,), donate_argnums=0,
                                   out_shardings=(state_shardings, layout.replicated)), abstract_state)
    if ppo.sfl:
      rescore = aot("rescore", jax.jit(iteration_lib.make_rescore(agent, ppo, layout.constrain_envs),
                                       in_shardings=(state_shardings,), out_shardings=state_shardings,
                                       donate_argnums=0), abstract_state)
      update = SFLUpdate(update, rescore, ppo.sfl.rescore_every)
  else:
    pipeline = _compile_stages(agent, ppo, actor_layout, layout, abstract_state, aot)
  if eval_episodes:
    evaluate_fn = seeded(evaluate_lib.make_evaluate(agent.env, agent.apply, agent.dist, eval_episodes,
                                                    sampled=eval_sampled))
    replicated = _with_seed_axis(layout.replicated, num_seeds)
    obs_norm = _placed(abstract_state.runner.obs_norm,
                       jax.tree.map(lambda _: replicated, abstract_state.runner.obs_norm))
    evaluate = aot("evaluate", jax.jit(evaluate_fn), abstract_state.params, key, obs_norm)
  return dataclasses.replace(progs, update=update, pipeline=pipeline, evaluate=evaluate, rescore=rescore,
                             compile_time=time.time() - t0, compiled=compiled)


def _compiler(compiler_options: dict, compiled_out: dict) -> Callable:
  """The default `aot`: lowers and compiles with `compiler_options`, keeping each program in `compiled_out` by name."""
  def aot(name, jitted, *args):
    compiled_out[name] = jitted.lower(*args).compile(compiler_options=compiler_options)
    return compiled_out[name]
  return aot


@dataclasses.dataclass(frozen=True)
class SFLUpdate:
  """The fused update with SFL's re-scoring program run first before updates 1, 1 + every, ... (state.update % every
  == 0): the same TrainState -> (TrainState, UpdateMetrics), donating its input. Reads state.update, one scalar,
  from the device each call."""
  update: Callable
  rescore: Callable
  every: int

  def __call__(self, state: TrainState):
    if int(jax.device_get(state.update)) % self.every == 0:
      state = self.rescore(state)
    return self.update(state)


def init_function(agent: iteration_lib.Agent, ppo: iteration_lib.PPOSettings, num_seeds: int | None) -> Callable:
  """key -> TrainState, or with `num_seeds` keys [S] -> TrainState with a leading seed axis. The seeds' inits run
  one after the other (lax.map), not vmapped: a vmapped orthogonal initializer is a batched QR, whose CPU kernel
  (jaxlib 0.10's LAPACK FFI, ParallelBatchMap) waits for its batch's tasks on the same intra-op pool that runs it;
  with 16 seeds on 2 cores two such QRs running at once held both threads and deadlocked (2026-12-06)."""
  single = functools.partial(iteration_lib.init_train_state, agent, num_envs=ppo.num_envs, ppo=ppo)
  return functools.partial(jax.lax.map, single) if num_seeds else single


def _scanned(step, length, state):
  return jax.lax.scan(lambda s, _: step(s), state, None, length=length)


def _placed(shapes, shardings):
  return jax.tree.map(lambda s, d: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=d), shapes, shardings)


def _per_seed(shapes, num_seeds):
  """The shapes of one seed's tree (what Layout's rules are written for)."""
  if not num_seeds:
    return shapes
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape[1:], s.dtype), shapes)


def _with_seed_axis(shardings, num_seeds):
  """Per-seed shardings with an unsplit leading seed axis."""
  if not num_seeds:
    return shardings
  return jax.tree.map(lambda s: NamedSharding(s.mesh, P(None, *s.spec)), shardings)


def _compile_stages(agent: iteration_lib.Agent, ppo: iteration_lib.PPOSettings, actor_layout: Layout,
                    learner_layout: Layout, example: TrainState, aot: Callable) -> dataflow.PipelineFns:
  """The pipeline's stages, each compiled (`aot`, by its function's name) with explicit shardings: act and advantage on
  the actors' mesh, learn, metrics and the key schedule on the learner's. `example`: the state's shapes (placement is
  decided here)."""
  stages = iteration_lib.make_stages(agent, ppo, actor_layout.constrain_envs, learner_layout.constrain_envs,
                                     flat_gather=learner_layout.num_shards == 1,
                                     learner_shards=learner_layout.num_shards)
  a_rep, l_rep = actor_layout.replicated, learner_layout.replicated

  def compiled(fn, out_shardings, *args, donate_argnums=()):
    return aot(fn.__name__, jax.jit(fn, out_shardings=out_shardings, donate_argnums=donate_argnums), *args)

  def replicated(tree, sharding):
    return _placed(tree, jax.tree.map(lambda _: sharding, tree))

  params_a, key_a = replicated(example.params, a_rep), replicated(example.key, a_rep)
  runner_a = _placed(example.runner, actor_layout.runner_shardings(example.runner))
  act_out = jax.eval_shape(stages.act, params_a, runner_a, key_a)
  act_sh = iteration_lib.ActorOutput(runner=actor_layout.runner_shardings(act_out.runner),
                                     traj=actor_layout.env_shardings(act_out.traj, axis=1),
                                     last_value=actor_layout.env_sharding(1),
                                     stats=jax.tree.map(lambda _: a_rep, act_out.stats))
  act = compiled(stages.act, act_sh, params_a, runner_a, key_a)
  act_out = _placed(act_out, act_sh)
  batch = jax.eval_shape(stages.advantage, act_out.traj, act_out.last_value)
  # The trajectory's rows are donated: GAE writes the advantages and targets into them in place.
  advantage = compiled(stages.advantage, actor_layout.env_shardings(batch, axis=1), act_out.traj, act_out.last_value,
                       donate_argnums=0)
  params_l, opt_l, key_l = (replicated(x, l_rep) for x in (example.params, example.opt_state, example.key))
  proximal_l = replicated(example.proximal, l_rep)
  batch_l = _placed(batch, learner_layout.env_shardings(batch, axis=1))
  stats_l = replicated(act_out.stats, l_rep)
  learn_args = (params_l, opt_l, proximal_l, batch_l, key_l)
  learn_out = jax.eval_shape(stages.learn, *learn_args)
  learn = compiled(stages.learn, jax.tree.map(lambda _: l_rep, learn_out), *learn_args)
  metrics = compiled(stages.metrics, l_rep, replicated(learn_out[3], l_rep), params_l, stats_l)
  split_key = compiled(iteration_lib.split_update_key, l_rep, key_l)
  return dataflow.bind_stages(act, advantage, learn, metrics, split_key, actor_layout, learner_layout)

