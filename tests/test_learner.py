"""The PPO loss on a hand-made batch, the distributions, and the network heads."""
import math

import jax
import jax.numpy as jnp
import numpy as np

from envs import base
from learner import distributions, losses, networks


def test_ppo_loss_hand_made_batch():
  # A "network" whose outputs are the params themselves, so the loss is computable by hand.
  logits = jnp.log(jnp.array([[0.5, 0.5], [0.2, 0.8], [0.9, 0.1], [0.5, 0.5]]))
  values = jnp.array([1.0, 0.0, 2.0, -1.0])
  params = {"logits": logits, "values": values}
  apply_fn = lambda p, obs: (p["logits"], p["values"])
  mb = losses.Minibatch(
      obs=jnp.zeros((4, 1)), action=jnp.array([0, 1, 0, 1], jnp.int32),
      log_prob=jnp.log(jnp.array([0.25, 0.8, 0.5, 0.5])), value=jnp.array([0.5, 0.5, 0.5, 0.5]),
      advantage=jnp.array([1.0, -1.0, 2.0, 0.0]), target=jnp.array([1.0, 1.0, 1.0, 1.0]))
  loss, aux = losses.ppo_loss(params, mb, apply_fn=apply_fn, dist=distributions.Categorical(2), clip_eps=0.2,
                              vf_coef=0.5, ent_coef=0.01)

  ratio = np.array([0.5 / 0.25, 0.8 / 0.8, 0.9 / 0.5, 0.5 / 0.5])
  adv = np.array([1.0, -1.0, 2.0, 0.0])
  adv = (adv - adv.mean()) / (adv.std() + 1e-8)
  surr = np.minimum(ratio * adv, np.clip(ratio, 0.8, 1.2) * adv)
  policy_loss = -surr.mean()
  v, old_v, tgt = np.array([1.0, 0.0, 2.0, -1.0]), 0.5, 1.0
  v_clip = old_v + np.clip(v - old_v, -0.2, 0.2)
  value_loss = 0.5 * np.maximum((v - tgt)**2, (v_clip - tgt)**2).mean()
  p = np.array([[0.5, 0.5], [0.2, 0.8], [0.9, 0.1], [0.5, 0.5]])
  entropy = (-(p * np.log(p)).sum(1)).mean()
  np.testing.assert_allclose(aux.policy_loss, policy_loss, rtol=1e-5)
  np.testing.assert_allclose(aux.value_loss, value_loss, rtol=1e-5)
  np.testing.assert_allclose(aux.entropy, entropy, rtol=1e-5)
  np.testing.assert_allclose(loss, policy_loss + 0.5 * value_loss - 0.01 * entropy, rtol=1e-5)
  np.testing.assert_allclose(aux.clip_fraction, 0.5)  # ratios 2.0 and 1.8 are outside [0.8, 1.2]
  np.testing.assert_allclose(aux.approx_kl, ((ratio - 1) - np.log(ratio)).mean(), rtol=1e-5)


def test_gaussian_log_prob_and_entropy():
  dist = distributions.DiagGaussian(2)
  params = jnp.array([0.5, -1.0, math.log(2.0), math.log(0.5)])
  a = jnp.array([1.0, 0.0])
  std = np.array([2.0, 0.5])
  z = (np.array([1.0, 0.0]) - np.array([0.5, -1.0])) / std
  expected = (-0.5 * z**2 - np.log(std) - 0.5 * np.log(2 * np.pi)).sum()
  np.testing.assert_allclose(dist.log_prob(params, a), expected, rtol=1e-6)
  np.testing.assert_allclose(dist.entropy(params), (0.5 * np.log(2 * np.pi * np.e * std**2)).sum(), rtol=1e-6)
  samples = jax.vmap(lambda k: dist.sample(k, params))(jax.random.split(jax.random.PRNGKey(0), 20000))
  np.testing.assert_allclose(samples.mean(0), [0.5, -1.0], atol=0.05)
  np.testing.assert_allclose(samples.std(0), std, rtol=0.05)


def test_multi_categorical():
  dist = distributions.MultiCategorical((2, 3))
  logits = jnp.log(jnp.array([0.25, 0.75, 0.2, 0.3, 0.5]))
  np.testing.assert_allclose(dist.log_prob(logits, jnp.array([1, 2])), np.log(0.75 * 0.5), rtol=1e-6)
  np.testing.assert_array_equal(dist.mode(logits), [1, 2])
  h = -(0.25 * np.log(0.25) + 0.75 * np.log(0.75)) - (0.2 * np.log(0.2) + 0.3 * np.log(0.3) + 0.5 * np.log(0.5))
  np.testing.assert_allclose(dist.entropy(logits), h, rtol=1e-6)


def test_heads_follow_action_space():
  for space, head_size in ((base.Discrete(3), 3), (base.MultiDiscrete((2, 4)), 6), (base.Box((-1.0,) * 2,
                                                                                             (1.0,) * 2, (2,)), 4)):
    for shared in (False, True):
      model = networks.ActorCritic(distributions.for_action_space(space), (8, 8), "relu", shared)
      params = model.init(jax.random.PRNGKey(0), jnp.zeros((5,)))
      head, value = model.apply(params, jnp.zeros((7, 5)))
      assert head.shape == (7, head_size) and value.shape == (7,)
      np.testing.assert_allclose(model.apply(params, jnp.ones((7, 5)), method=networks.ActorCritic.value),
                                 model.apply(params, jnp.ones((7, 5)))[1], rtol=1e-6)
