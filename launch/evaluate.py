"""Evaluates a run's newest checkpoint: episodes on the run's env (or another with the same spaces), mean/std return,
the env's own success measure where it has one, and optionally one episode as a video.

  python -m launch.evaluate --workdir=DIR [--episodes=N] [--env_name=NAME] [--video=PATH.gif|PATH.mp4]
                            [--nodeterministic] [--seed=S]

Only the params (and, with obs_norm, the observation statistics) are used from the checkpoint, once the whole step
passed its checks (launch/checkpoint/reader.py); the network comes from the run's saved config
(launch/checkpoint/saved_run.py). Episodes run in parallel, each to its first end or the env's time
limit. The default policy is deterministic (the distribution's mode), as the trainer's evaluation;
`--nodeterministic` samples. Exit codes: 0 done; 2 bad flags, no readable checkpoint, storage that keeps failing, or an
env without a renderer for --video (the returns are printed first).
"""
from __future__ import annotations

import os

# Brax renders through MuJoCo, whose default OpenGL platform (GLFW) needs a display; EGL renders without one.
if not os.environ.get("DISPLAY"):
  os.environ.setdefault("MUJOCO_GL", "egl")
from typing import Any

from absl import app, flags

from launch.config import resolve as config_lib
from launch.files import fs_errors, workdir as workdir_lib
from launch.report import cli, console

FLAGS = flags.FLAGS


def run_episodes(env: Any, act: Any, num_episodes: int, key: Any, deterministic: bool) -> dict[str, Any]:
  """Returns, lengths and (where the env has `success`) successes of `num_episodes` parallel episodes, numpy."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  success_fn = getattr(env, "success", None)

  @jax.jit
  def episodes(key):
    reset_key, key = jax.random.split(key)
    state, obs = jax.vmap(env.reset)(jax.random.split(reset_key, num_episodes))
    zeros = jnp.zeros((num_episodes,), jnp.float32)
    done = jnp.zeros((num_episodes,), bool)
    init = (state, obs, zeros, zeros, done, done, key, jnp.zeros((), jnp.int32))

    def cond(carry):
      *_, done, _, _, t = carry
      return (t < env.max_episode_steps) & ~jnp.all(done)

    def body(carry):
      state, obs, ret, length, done, success, key, t = carry
      key, act_key, step_key = jax.random.split(key, 3)
      res = jax.vmap(env.step)(jax.random.split(step_key, num_episodes), state, act(obs, act_key, deterministic))
      live = ~done
      ret = ret + jnp.where(live, res.reward, 0.0)
      length = length + live
      if success_fn is not None:
        success = success | (live & jax.vmap(success_fn)(res))
      return res.state, res.obs, ret, length, done | res.terminated | res.truncated, success, key, t + 1

    _, _, ret, length, _, success, _, _ = jax.lax.while_loop(cond, body, init)
    return ret, length, success

  ret, length, success = jax.device_get(episodes(key))
  return {"returns": ret, "lengths": length, "success": success if success_fn is not None else None}


def record_episode(env: Any, act: Any, key: Any, deterministic: bool) -> tuple[list[Any], float]:
  """One episode's states (the start state, then one per step up to its end) and its return."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  reset_key, key = jax.random.split(key)

  @jax.jit
  def rollout(reset_key, key):
    state, obs = env.reset(reset_key)

    def step(carry, k):
      state, obs = carry
      act_key, step_key = jax.random.split(k)
      res = env.step(step_key, state, act(obs, act_key, deterministic))
      return (res.state, res.obs), (res.state, res.reward, res.terminated | res.truncated)

    _, (states, rewards, dones) = jax.lax.scan(step, (state, obs), jax.random.split(key, env.max_episode_steps))
    return state, states, rewards, dones

  first, states, rewards, dones = jax.device_get(rollout(reset_key, key))
  end = int(np.argmax(dones)) if dones.any() else len(dones) - 1
  seq = [first] + [jax.tree.map(lambda x, i=i: x[i], states) for i in range(end + 1)]
  return seq, float(rewards[:end + 1].sum())


_fail = cli.fail


def _define_flags() -> None:
  """The CLI's flags, defined only when run as a program (tests import this module beside others with a --workdir)."""
  flags.DEFINE_string("workdir", None, "The run's workdir (or its checkpoints/ or one step directory).")
  flags.DEFINE_integer("episodes", 32, "Evaluation episodes, run in parallel.")
  flags.DEFINE_string("env_name", None, "Evaluate on this env instead of the run's (same observation and action space).")
  flags.DEFINE_string("video", None, "Write one episode as an animation to this .gif or .mp4 file.")
  flags.DEFINE_bool("deterministic", True, "Act with the distribution's mode (else sample).")
  flags.DEFINE_float("sticky_actions", None, "Probability that the env repeats its previous action (envs/sticky.py); "
                     "default: the run's config.sticky_actions.")
  flags.DEFINE_integer("seed", 0, "Seed of the episodes' start states (and sampled actions).")


def main(argv):
  if len(argv) > 1:
    _fail(f"unexpected arguments: {argv[1:]}")
  console.configure_logging()
  if not FLAGS.workdir:
    _fail("--workdir is required")
  if FLAGS.episodes < 1:
    _fail("--episodes must be a positive integer")
  if FLAGS.video and not FLAGS.video.lower().endswith((".gif", ".mp4")):
    _fail(f"--video={FLAGS.video}: must end in .gif or .mp4")
  workdir, video = workdir_lib.expand(FLAGS.workdir), FLAGS.video and workdir_lib.expand(FLAGS.video)
  cli.start(workdir)
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import envs  # pylint: disable=import-outside-toplevel
  from envs import render  # pylint: disable=import-outside-toplevel
  from launch.checkpoint import saved_run  # pylint: disable=import-outside-toplevel
  try:
    run = saved_run.load(workdir)
    env_name = FLAGS.env_name or run.config.env_name
    sticky = run.config.get("sticky_actions", 0.0) if FLAGS.sticky_actions is None else FLAGS.sticky_actions
    if not 0 <= sticky < 1:
      raise config_lib.ConfigError(f"--sticky_actions={sticky}: must be in [0, 1)")
    env = envs.make(env_name, sticky)
  except (config_lib.ConfigError, fs_errors.WorkdirError, envs.UnknownEnvError, ImportError) as e:
    _fail(str(e))
  spec = run.policy.spec
  from learner import policy as policy_lib  # pylint: disable=import-outside-toplevel
  observation = policy_lib.describe_observation(env.observation_spec)
  if observation != (spec.observation_shape, spec.observation_leaves) or env.action_space != spec.action_space:
    what = observation[1] or observation[0]
    _fail(f"--env_name={env_name}: its observation {what} / action space {env.action_space} "
          f"differ from the run's ({spec.observation_leaves or spec.observation_shape} / {spec.action_space})")
  key = jax.random.PRNGKey(FLAGS.seed)
  eval_key, video_key = jax.random.split(key)
  mode = "deterministic" if FLAGS.deterministic else "sampled"
  print(f"evaluate: {env_name} | checkpoint {run.step_dir} (update {run.update}) | {FLAGS.episodes} episodes | "
        f"{mode} actions" + (f" | sticky actions {sticky:g}" if sticky else ""))
  out = run_episodes(env, run.policy.act, FLAGS.episodes, eval_key, FLAGS.deterministic)
  ret = out["returns"]
  distinct = len(set(zip(ret.tolist(), out["lengths"].tolist())))
  print(f"return {ret.mean():.1f} ± {ret.std():.1f} (min {ret.min():.1f}, max {ret.max():.1f}) | "
        f"length {out['lengths'].mean():.1f} | {distinct} distinct (return, length) of {FLAGS.episodes}")
  if out["success"] is not None:
    print(f"success {out['success'].mean():.3f} ({int(out['success'].sum())}/{FLAGS.episodes})")
  if video:
    states, video_return = record_episode(env, run.policy.act, video_key, FLAGS.deterministic)
    try:
      images = render.frames(env, states)
    except render.NoRenderer as e:
      _fail(f"--video: {e}; no video written")
    try:
      render.save_video(video, images, fps=render.FPS)
    except RuntimeError as e:
      _fail(str(e))
    h, w = np.asarray(images[0]).shape[:2]
    stored = ""
    if video.lower().endswith(".gif"):  # a GIF stores a run of identical images as one longer frame
      from PIL import Image  # pylint: disable=import-outside-toplevel
      with Image.open(video) as gif:
        stored = f" in {gif.n_frames} GIF frames"
    print(f"video: {video} ({len(images)} images{stored}, {w}x{h}; one episode of {len(images) - 1} steps, "
          f"return {video_return:.1f})")


if __name__ == "__main__":
  _define_flags()
  app.run(main, flags_parser=cli.flags_parser)
