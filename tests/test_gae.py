"""GAE against hand-computed values, with a truncation and a termination in the same rollout, as the trainer runs
it: the truncation bootstrap folded into the stored reward, advantages and targets written into the packed rows."""
import jax
import jax.numpy as jnp
import numpy as np

from pipeline import batch_rows
from pipeline.gae import advantages_in_rows, bootstrap
from pipeline.rollout import Trajectory


def gae(reward, value, terminated, truncated, truncation_value, last_value, *, gamma, gae_lambda):
  """(advantages, targets) [T, N] through the trainer's path: bootstrap, pack as rollout rows, GAE in the rows."""
  num_steps, num_envs = value.shape
  traj = Trajectory(obs=jnp.full((num_steps, num_envs, 3), 7.0), action=jnp.ones((num_steps, num_envs), jnp.int16),
                    log_prob=jnp.full((num_steps, num_envs), -0.5), value=value,
                    reward=bootstrap(reward, terminated, truncated, truncation_value, gamma),
                    done=(terminated | truncated).astype(jnp.float32), head=None)
  rows = advantages_in_rows(batch_rows.pack(traj), last_value, gamma=gamma, gae_lambda=gae_lambda)
  back = batch_rows.unpack(rows, rows.data.reshape(num_steps * num_envs, -1))
  shape = lambda x: x.reshape(num_steps, num_envs, *x.shape[1:])
  # The other columns are untouched.
  np.testing.assert_array_equal(shape(back.obs), traj.obs)
  np.testing.assert_array_equal(shape(back.action), traj.action)
  np.testing.assert_array_equal(shape(back.value), value)
  return shape(back.reward), shape(back.done)


def test_gae_hand_computed_truncation_and_termination():
  gamma, lam = 0.9, 0.5
  # One env, 5 steps: step 1 is truncated (bootstrap from V(final obs) = 10), step 3 terminates (no bootstrap).
  reward = np.array([[1.0], [2.0], [3.0], [4.0], [5.0]], np.float32)
  value = np.array([[0.5], [1.0], [1.5], [2.0], [2.5]], np.float32)
  terminated = np.array([[0], [0], [0], [1], [0]], bool)
  truncated = np.array([[0], [1], [0], [0], [0]], bool)
  truncation_value = np.array([[0.0], [10.0], [0.0], [0.0], [0.0]], np.float32)
  last_value = np.array([3.0], np.float32)

  # By hand, backwards. delta_t = r_t + gamma * bootstrap_t - V_t.
  d4 = 5.0 + 0.9 * 3.0 - 2.5  # bootstraps from last_value
  a4 = d4
  d3 = 4.0 + 0.0 - 2.0  # terminated: no bootstrap, recursion cut
  a3 = d3
  d2 = 3.0 + 0.9 * 2.0 - 1.5
  a2 = d2 + 0.9 * 0.5 * a3
  d1 = 2.0 + 0.9 * 10.0 - 1.0  # truncated: bootstrap from V(final obs), recursion cut
  a1 = d1
  d0 = 1.0 + 0.9 * 1.0 - 0.5
  a0 = d0 + 0.9 * 0.5 * a1
  expected = np.array([a0, a1, a2, a3, a4], np.float32)[:, None]

  adv, target = gae(*map(jnp.asarray, (reward, value, terminated, truncated, truncation_value, last_value)), gamma=gamma, gae_lambda=lam)
  np.testing.assert_allclose(adv, expected, rtol=1e-6)
  np.testing.assert_allclose(target, expected + value, rtol=1e-6)


def test_gae_terminated_and_truncated_together_does_not_bootstrap():
  args = (np.ones((1, 1), np.float32), np.zeros((1, 1), np.float32), np.ones((1, 1), bool), np.ones((1, 1), bool),
          np.full((1, 1), 100.0, np.float32), np.full((1,), 50.0, np.float32))
  adv, _ = gae(*map(jnp.asarray, args), gamma=0.99, gae_lambda=0.95)
  np.testing.assert_allclose(adv, [[1.0]])


def test_gae_lambda_one_is_discounted_return_minus_value():
  rng = np.random.default_rng(0)
  reward = rng.normal(size=(6, 3)).astype(np.float32)
  value = rng.normal(size=(6, 3)).astype(np.float32)
  last = rng.normal(size=(3,)).astype(np.float32)
  no = np.zeros((6, 3), bool)
  adv, _ = gae(*map(jnp.asarray, (reward, value, no, no, np.zeros((6, 3), np.float32), last)), gamma=0.9,
               gae_lambda=1.0)
  ret = last.copy()
  expected = np.zeros_like(reward)
  for t in reversed(range(6)):
    ret = reward[t] + 0.9 * ret
    expected[t] = ret - value[t]
  np.testing.assert_allclose(adv, expected, rtol=1e-5, atol=1e-5)


def test_gae_writes_in_place():
  """The compiled GAE, its rows donated, aliases its output to them: no second copy of the batch."""
  traj = Trajectory(obs=jnp.zeros((8, 4096, 4)), action=jnp.zeros((8, 4096), jnp.int16),
                    log_prob=jnp.zeros((8, 4096)), value=jnp.zeros((8, 4096)), reward=jnp.zeros((8, 4096)),
                    done=jnp.zeros((8, 4096)), head=None)
  rows = batch_rows.pack(traj)
  fn = jax.jit(lambda r, v: advantages_in_rows(r, v, gamma=0.9, gae_lambda=0.9), donate_argnums=0)
  compiled = fn.lower(rows, jnp.zeros((4096,))).compile()
  memory = compiled.memory_analysis()
  assert memory.alias_size_in_bytes == rows.data.nbytes
  assert memory.temp_size_in_bytes < rows.data.nbytes / 4, memory


def test_gae_shape_annotations_are_checked():
  """The jaxtyping hook (conftest) must reject rewards paired with truncation values of another shape."""
  import jaxtyping
  import pytest
  z = jnp.zeros((4, 3))
  b = jnp.zeros((4, 3), bool)
  with pytest.raises(jaxtyping.TypeCheckError):
    bootstrap(z, b, b, jnp.zeros((4, 5)), 0.9)
