"""The bar for benchmarks/throughput.py: the common single-file PureJaxRL-style PPO, written the usual way.

Same algorithm and hyperparameters as the trainer (auto-reset CartPole, truncation bootstrapped from V(final obs),
GAE that stops at every episode end, per-minibatch advantage normalisation, clipped value loss, clip → Adam with a
linear anneal), but built as that code usually is: a Flax module holding separate actor and critic MLPs, vmapped
envs, a lax.scan rollout, and every epoch a full-batch permutation gather (`jnp.take` of the whole flattened batch)
reshaped into minibatches. One update is one jitted pure function, like the body of PureJaxRL's `train` scan.
"""
from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training.train_state import TrainState

from envs import base


class ActorCritic(nn.Module):
  action_dim: int

  @nn.compact
  def __call__(self, x):
    init = lambda s: nn.initializers.orthogonal(s)
    a = nn.tanh(nn.Dense(64, kernel_init=init(np.sqrt(2)), bias_init=nn.initializers.zeros)(x))
    a = nn.tanh(nn.Dense(64, kernel_init=init(np.sqrt(2)), bias_init=nn.initializers.zeros)(a))
    logits = nn.Dense(self.action_dim, kernel_init=init(0.01), bias_init=nn.initializers.zeros)(a)
    c = nn.tanh(nn.Dense(64, kernel_init=init(np.sqrt(2)), bias_init=nn.initializers.zeros)(x))
    c = nn.tanh(nn.Dense(64, kernel_init=init(np.sqrt(2)), bias_init=nn.initializers.zeros)(c))
    value = nn.Dense(1, kernel_init=init(1.0), bias_init=nn.initializers.zeros)(c)
    return logits, jnp.squeeze(value, axis=-1)


class Transition(NamedTuple):
  terminated: jnp.ndarray
  truncated: jnp.ndarray
  action: jnp.ndarray
  value: jnp.ndarray
  reward: jnp.ndarray
  log_prob: jnp.ndarray
  obs: jnp.ndarray
  truncation_value: jnp.ndarray


class RunnerState(NamedTuple):
  train_state: TrainState
  env_state: object
  obs: jnp.ndarray
  key: jnp.ndarray


def make_naive(env: base.Environment, *, num_envs: int, num_steps: int, update_epochs: int, num_minibatches: int,
               learning_rate: float, total_updates: int, gamma: float = 0.99, gae_lambda: float = 0.95,
               clip_eps: float = 0.2, ent_coef: float = 0.01, vf_coef: float = 0.5, max_grad_norm: float = 0.5):
  """Returns (init(key) -> RunnerState, update(RunnerState) -> (RunnerState, loss)). `update` is not jitted."""
  network = ActorCritic(env.action_space.n)
  batch_size = num_envs * num_steps
  minibatch_size = batch_size // num_minibatches
  schedule = optax.linear_schedule(learning_rate, 0.0, total_updates * update_epochs * num_minibatches)

  def init(key):
    key, net_key, env_key = jax.random.split(key, 3)
    params = network.init(net_key, jnp.zeros(env.observation_shape, jnp.float32))
    tx = optax.chain(optax.clip_by_global_norm(max_grad_norm), optax.adam(schedule, eps=1e-5))
    train_state = TrainState.create(apply_fn=network.apply, params=params, tx=tx)
    env_state, obs = jax.vmap(env.reset)(jax.random.split(env_key, num_envs))
    return RunnerState(train_state, env_state, obs, key)

  def env_step(runner, _):
    train_state, env_state, obs, key = runner
    key, act_key, step_key = jax.random.split(key, 3)
    logits, value = network.apply(train_state.params, obs)
    action = jax.random.categorical(act_key, logits)
    log_prob = jnp.take_along_axis(jax.nn.log_softmax(logits), action[:, None], axis=-1)[:, 0]
    out = jax.vmap(base.auto_reset_step, in_axes=(None, 0, 0, 0))(
        env, jax.random.split(step_key, num_envs), env_state, action)
    _, final_value = network.apply(train_state.params, out.final_obs)
    truncation_value = jnp.where(out.truncated, final_value, 0.0)
    transition = Transition(out.terminated, out.truncated, action, value, out.reward, log_prob, obs,
                            truncation_value)
    return RunnerState(train_state, out.state, out.obs, key), transition

  def calculate_gae(traj, last_value):
    def step(carry, t):
      gae, next_value = carry
      bootstrap = jnp.where(t.truncated, t.truncation_value, next_value)
      bootstrap = jnp.where(t.terminated, 0.0, bootstrap)
      delta = t.reward + gamma * bootstrap - t.value
      gae = delta + gamma * gae_lambda * (1.0 - (t.terminated | t.truncated)) * gae
      return (gae, t.value), gae
    _, advantages = jax.lax.scan(step, (jnp.zeros_like(last_value), last_value), traj, reverse=True)
    return advantages, advantages + traj.value

  def loss_fn(params, traj, gae, targets):
    logits, value = network.apply(params, traj.obs)
    log_softmax = jax.nn.log_softmax(logits)
    log_prob = jnp.take_along_axis(log_softmax, traj.action[:, None], axis=-1)[:, 0]
    value_clipped = traj.value + jnp.clip(value - traj.value, -clip_eps, clip_eps)
    value_loss = 0.5 * jnp.maximum(jnp.square(value - targets), jnp.square(value_clipped - targets)).mean()
    ratio = jnp.exp(log_prob - traj.log_prob)
    gae = (gae - gae.mean()) / (gae.std() + 1e-8)
    actor_loss = -jnp.minimum(ratio * gae, jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * gae).mean()
    entropy = -jnp.sum(jnp.exp(log_softmax) * log_softmax, axis=-1).mean()
    return actor_loss + vf_coef * value_loss - ent_coef * entropy

  def update_minibatch(train_state, minibatch):
    traj, advantages, targets = minibatch
    loss, grads = jax.value_and_grad(loss_fn)(train_state.params, traj, advantages, targets)
    return train_state.apply_gradients(grads=grads), loss

  def update_epoch(carry, _):
    train_state, traj, advantages, targets, key = carry
    key, perm_key = jax.random.split(key)
    permutation = jax.random.permutation(perm_key, batch_size)
    batch = jax.tree.map(lambda x: x.reshape((batch_size,) + x.shape[2:]), (traj, advantages, targets))
    shuffled = jax.tree.map(lambda x: jnp.take(x, permutation, axis=0), batch)
    minibatches = jax.tree.map(lambda x: x.reshape((num_minibatches, minibatch_size) + x.shape[1:]), shuffled)
    train_state, losses = jax.lax.scan(update_minibatch, train_state, minibatches)
    return (train_state, traj, advantages, targets, key), losses

  def update(runner):
    runner, traj = jax.lax.scan(env_step, runner, None, num_steps)
    _, last_value = network.apply(runner.train_state.params, runner.obs)
    advantages, targets = calculate_gae(traj, last_value)
    carry = (runner.train_state, traj, advantages, targets, runner.key)
    (train_state, *_, key), losses = jax.lax.scan(update_epoch, carry, None, update_epochs)
    return runner._replace(train_state=train_state, key=key), losses.mean()

  return init, update
