"""launch.evaluate: episodes of a run's newest checkpoint, the video, and the renderers (CartPole's drawn here)."""
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

import envs
from envs import cartpole, render
from launch import evaluate
from launch.checkpoint import saved_run
from launch.run import trainer
from launch.configs import debug

pytestmark = pytest.mark.usefixtures("no_plots")  # runs skip their figures: tested elsewhere

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def cartpole_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("evaluate") / "run")
  config = debug.get_config()
  config.total_env_steps = 8 * 16 * 2
  trainer.train_and_evaluate(config, workdir)
  return workdir


def test_evaluate_cli_prints_returns_and_writes_a_gif(cartpole_run, tmp_path):
  gif = str(tmp_path / "episode.gif")
  proc = subprocess.run([sys.executable, "-m", "launch.evaluate", f"--workdir={cartpole_run}", "--episodes=8",
                         f"--video={gif}"], cwd=REPO, capture_output=True, text=True,
                        env=dict(os.environ, XLA_FLAGS=""))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "checkpoint " + os.path.join(cartpole_run, "checkpoints", "2") in proc.stdout
  mean, std = map(float, re.search(r"^return ([\d.]+) ± ([\d.]+)", proc.stdout, re.M).groups())
  assert 1 <= mean <= 500 and std >= 0
  images, stored, steps, video_return = map(float, re.search(
      r"\((\d+) images in (\d+) GIF frames, 360x240; one episode of (\d+) steps, return ([\d.]+)\)",
      proc.stdout).groups())
  assert images == steps + 1 and video_return == steps  # CartPole: +1 per step; the start state is a frame too
  with Image.open(gif) as im:
    assert im.n_frames == stored >= 2 and im.size == (360, 240)
  assert proc.stderr.strip() == ""  # quiet: no library logs


def test_episodes_returns_match_lengths_and_trainer_params(cartpole_run):
  run = saved_run.load(cartpole_run)
  assert run.update == 2 and run.config.env_name == "CartPole-v1" and run.policy.spec.obs_norm is None
  env = envs.make("CartPole-v1")
  out = evaluate.run_episodes(env, run.policy.act, 16, jax.random.PRNGKey(0), True)
  np.testing.assert_array_equal(out["returns"], out["lengths"])  # CartPole pays 1 per step
  assert out["success"] is None and np.all((out["lengths"] >= 1) & (out["lengths"] <= 500))
  states, ret = evaluate.record_episode(env, run.policy.act, jax.random.PRNGKey(0), True)
  assert len(states) == ret + 1
  last = states[-1].physics
  assert abs(last[0]) > cartpole.X_THRESHOLD or abs(last[2]) > cartpole.THETA_THRESHOLD or ret == 500
  assert all(abs(s.physics[2]) <= cartpole.THETA_THRESHOLD and abs(s.physics[0]) <= cartpole.X_THRESHOLD
             for s in states[:-1])  # the episode is cut at its first end


def _dark(img):
  return np.argwhere(img.sum(-1) < 200)  # black cart and track, [row, col]


def test_cartpole_frame_geometry():
  """Hand-placed: cart x=1 m lies 75 px (= 1 m at 360 px per 4.8 m) right of the centre; the pole leans the way
  theta points (positive: to the right, Gym's convention) and has the pole's colour."""
  upright, tilted = render.cartpole_frame(np.array([1.0, 0, 0, 0])), render.cartpole_frame(np.array([1.0, 0, 0.3, 0]))
  assert upright.shape == (240, 360, 3) and upright.dtype == np.uint8
  cart = _dark(upright)
  cart = cart[cart[:, 0] != 180]  # without the track row
  assert abs(cart[:, 1].mean() - (180 + 75)) <= 1
  pole = lambda img: np.argwhere(np.all(img == (202, 152, 101), axis=-1))
  top_upright, top_tilted = pole(upright)[0], pole(tilted)[0]  # the topmost pole pixel
  assert abs(top_upright[1] - 255) <= 3 and top_tilted[1] > 255 + 15 and top_tilted[0] > top_upright[0]


def test_envs_without_a_renderer_say_so():
  env = envs.make("cue")
  state, _ = env.reset(jax.random.PRNGKey(0))
  with pytest.raises(render.NoRenderer, match="CueEnv has no renderer"):
    render.frames(env, [state])
  with pytest.raises(ValueError, match=".gif or .mp4"):
    render.save_video("x.avi", [np.zeros((2, 2, 3), np.uint8)])


def test_gymnax_frames_through_its_renderer():
  pytest.importorskip("gymnax")
  pytest.importorskip("gymnasium")
  env = envs.make("gymnax:Pendulum-v1")
  s0, _ = env.reset(jax.random.PRNGKey(0))
  s1 = env.step(jax.random.PRNGKey(1), s0, np.ones((1,), np.float32)).state
  images = render.frames(env, [s0, s1])
  assert len(images) == 2 and images[0].ndim == 3 and images[0].shape[2] == 3 and images[0].std() > 0
  assert not np.array_equal(images[0], images[1])


def test_evaluations_count_their_distinct_episodes_and_sticky_or_sampled_ones_differ():
  """pipeline/evaluate.py on gymnax's SpaceInvaders-MinAtar, which resets and steps deterministically: the mode policy
  of an untrained network (its weights x10, so that its action depends on what it sees) plays one episode 64 times;
  sticky actions (p = 0.1) make several of them differ (6 here: an untrained policy dies early), sampled actions
  most (46)."""
  from learner import distributions, networks  # pylint: disable=import-outside-toplevel
  from pipeline import evaluate as evaluate_lib  # pylint: disable=import-outside-toplevel
  assert int(evaluate_lib.distinct_pairs(jax.numpy.array([1.0, 1.0, 2.0, 1.0]), jax.numpy.array([3, 3, 3, 4]))) == 3
  plain = envs.make("gymnax:SpaceInvaders-MinAtar")
  dist = distributions.for_action_space(plain.action_space)
  model = networks.ActorCritic(dist, (16,))
  obs = plain.reset(jax.random.PRNGKey(0))[1][None]
  params = jax.tree.map(lambda x: 10 * x, model.init(jax.random.PRNGKey(0), obs))
  out = {}
  for name, env, sampled in (("mode", plain, False), ("sticky", envs.make("gymnax:SpaceInvaders-MinAtar", 0.1), False),
                             ("sampled", plain, True)):
    evaluate = jax.jit(evaluate_lib.make_evaluate(env, model.apply, dist, 64, sampled=sampled))
    out[name] = jax.device_get(evaluate(params, jax.random.PRNGKey(1)))
  assert int(out["mode"].distinct) == 1, out
  assert int(out["sticky"].distinct) >= 4 and int(out["sampled"].distinct) >= 32, out
