"""The training run: build everything from a validated config, then loop the jitted update and feed the sinks.

`train_and_evaluate(config, workdir)` is the whole run; launch/train.py only parses flags and calls it.
"""
from __future__ import annotations

import functools
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

import envs
from launch import config_lib, plot, sinks
from learner import distributions, networks, optimizer as optimizer_lib
from pipeline import evaluate as evaluate_lib
from pipeline import iteration as iteration_lib
from sharding import Layout, make_mesh

PROCESS_START = time.time()


def build_agent(config: ml_collections.ConfigDict, resolved: config_lib.Resolved) -> iteration_lib.Agent:
  env = envs.make(config.env_name)
  dist = distributions.for_action_space(env.action_space)
  model = networks.ActorCritic(dist=dist, hidden_sizes=tuple(config.network.hidden_sizes),
                               activation=config.network.activation, shared_trunk=config.network.shared_trunk)
  optimizer = optimizer_lib.make_optimizer(config.learning_rate, config.max_grad_norm, config.anneal_lr,
                                           resolved.total_gradient_steps)
  return iteration_lib.Agent(env=env, model=model, dist=dist, optimizer=optimizer)


def summarize(metrics: list[iteration_lib.UpdateMetrics]) -> dict[str, Any]:
  """Reduces the per-update metrics of one log interval (already on the host) to one row's values."""
  stacked = jax.tree.map(lambda *xs: np.stack(xs), *metrics)
  episodes = int(stacked.episode_count.sum())
  row = {
      "episode_return": float(stacked.episode_return_sum.sum() / episodes) if episodes else None,
      "episodes": episodes,
  }
  for key in ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction"):
    row[key] = float(getattr(stacked, key).mean())
  row["param_norm"] = float(stacked.param_norm[-1])
  return row


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains per `config`, writing metrics, TensorBoard and plots under `workdir`. Returns the last metrics row."""
  resolved = config_lib.resolve(config, num_devices=jax.device_count())
  agent = build_agent(config, resolved)
  lead = jax.process_index() == 0

  # Mesh.
  layout = Layout(make_mesh(config.mesh.data))
  logging.info("mesh: %s; %d env steps per update, %d updates", dict(layout.mesh.shape), resolved.batch_size,
               resolved.num_updates)

  # Train state, created already sharded.
  train_key, eval_key = jax.random.split(jax.random.PRNGKey(config.seed))
  init_fn = functools.partial(iteration_lib.init_train_state, agent, num_envs=config.num_envs, ppo=resolved.ppo)
  state_shardings = layout.train_state_shardings(jax.eval_shape(init_fn, train_key))
  state = jax.jit(init_fn, out_shardings=state_shardings)(train_key)

  # Update step and evaluation, compiled ahead of the clock.
  t0 = time.time()
  iteration = jax.jit(iteration_lib.make_iteration(agent, resolved.ppo, layout.constrain_envs),
                      in_shardings=(state_shardings,), out_shardings=(state_shardings, layout.replicated),
                      donate_argnums=0).lower(state).compile()
  evaluate = jax.jit(evaluate_lib.make_evaluate(agent.env, agent.apply, agent.dist, config.eval_episodes)).lower(
      state.params, eval_key, state.obs_norm).compile()
  compile_time = time.time() - t0
  logging.info("compiled in %.1fs", compile_time)

  # Train loop.
  out = sinks.MetricsSinks(workdir, resolved.env_steps, enabled=lead)
  pending: list[iteration_lib.UpdateMetrics] = []
  last_time, last_steps = time.time(), 0
  row: dict[str, Any] = {}
  for update in range(1, resolved.num_updates + 1):
    state, metrics = iteration(state)
    pending.append(metrics)
    is_last = update == resolved.num_updates
    if update % config.log_every and not is_last:
      continue
    row = {"update": update, "env_steps": update * resolved.batch_size}
    row.update(summarize(jax.device_get(pending)))
    pending = []
    if update % config.eval_every == 0 or is_last:
      row["eval_return"] = float(evaluate(state.params, jax.random.fold_in(eval_key, update), state.obs_norm))
    now = time.time()
    row["wall_time"] = now - PROCESS_START
    row["sps"] = (row["env_steps"] - last_steps) / max(now - last_time, 1e-9)
    if last_steps == 0:
      row["compile_time"] = compile_time
    last_time, last_steps = now, row["env_steps"]
    out.write(row)
    if not all(math.isfinite(row[k]) for k in ("policy_loss", "value_loss", "param_norm")):
      raise FloatingPointError(f"non-finite loss or params at update {update}: {row}")
  out.close()
  if lead:
    plot.plot_runs([workdir], f"{workdir}/learning_curve.png")
  return row
