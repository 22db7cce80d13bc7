"""Frames of an episode for videos: the built-in CartPole drawn here (numpy only), the suites through their own
renderers (gymnax's visualizer, Brax's MuJoCo renderer, Kinetix's and Craftax's pixel renderers).

`frames(env, states)` takes one env's states in order (host pytrees, unbatched) and returns uint8 [H, W, 3] images;
an env without a renderer raises NoRenderer with a message saying so. `save_video` writes them as .gif or .mp4.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from envs import base, cartpole

FPS = 50  # CartPole's tau = 0.02 s per step


class NoRenderer(Exception):
  """The env has no renderer (or its renderer cannot run here)."""


# CartPole, drawn like Gym's classic-control renderer at 3/5 of its 600 x 400 size.
_W, _H = 360, 240
_SCALE = _W / (2 * cartpole.X_THRESHOLD)  # pixels per metre: the track spans ±X_THRESHOLD
_CART_W, _CART_H = 30, 18
_POLE_W, _POLE_LEN = 6, _SCALE * 2 * cartpole.HALF_LENGTH
_TRACK_Y = _H - 60  # image row of the track
_YY, _XX = np.mgrid[0:_H, 0:_W].astype(np.float32)


def cartpole_frame(physics: np.ndarray) -> np.ndarray:
  """One frame of CartPole from its physics [x, x_dot, theta, theta_dot]."""
  x, _, theta, _ = (float(v) for v in physics)
  img = np.full((_H, _W, 3), 255, np.uint8)
  img[_TRACK_Y, :] = 0
  cx = _W / 2 + x * _SCALE
  top = _TRACK_Y - _CART_H
  img[max(top, 0):_TRACK_Y, max(int(cx - _CART_W), 0):max(int(cx + _CART_W), 0)] = 0  # the cart
  pivot_x, pivot_y = cx, top + 4
  # The pole: pixels whose offset from the pivot lies within the rotated rectangle (theta from upright, clockwise).
  ux, uy = math.sin(theta), -math.cos(theta)
  dx, dy = _XX - pivot_x, _YY - pivot_y
  along, across = dx * ux + dy * uy, dx * uy - dy * ux
  img[(along >= 0) & (along <= _POLE_LEN) & (np.abs(across) <= _POLE_W / 2)] = (202, 152, 101)
  img[dx * dx + dy * dy <= (_POLE_W / 2 + 1) ** 2] = (129, 132, 203)  # the axle
  return img


def _gymnax_frames(env: Any, states: Sequence[Any]) -> list[np.ndarray]:
  from gymnax.visualize import vis_gym  # pylint: disable=import-outside-toplevel
  inner, params = env._env, env._params  # pylint: disable=protected-access
  if inner.name in vis_gym.SUPPORTED_GYM_ENVS:
    return [np.asarray(vis_gym.render_gym_frame(inner.name, s, params), np.uint8)[..., :3] for s in states]
  from gymnax.visualize import visualizer  # pylint: disable=import-outside-toplevel
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  vis = visualizer.Visualizer(inner, params, list(states))
  vis.init()
  if not hasattr(vis, "im"):
    raise NoRenderer(f'gymnax has no renderer for "{inner.name}"')
  out = []
  for i in range(len(states)):
    vis.update(i)
    vis.fig.canvas.draw()
    out.append(np.asarray(vis.fig.canvas.buffer_rgba())[..., :3].copy())
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  plt.close(vis.fig)
  return out


def _brax_frames(env: Any, states: Sequence[Any]) -> list[np.ndarray]:
  from brax.io import image  # pylint: disable=import-outside-toplevel
  sys = env._env.sys  # pylint: disable=protected-access
  return [np.asarray(f, np.uint8) for f in image.render_array(sys, [s.inner.pipeline_state for s in states],
                                                              height=240, width=320)]


def _kinetix_frames(env: Any, states: Sequence[Any]) -> list[np.ndarray]:
  import jax  # pylint: disable=import-outside-toplevel
  from kinetix.render import renderer_pixels  # pylint: disable=import-outside-toplevel
  render = jax.jit(renderer_pixels.make_render_pixels(env._params, env._static))  # pylint: disable=protected-access
  # Kinetix draws x along the first axis with y up: transpose and flip into an image.
  return [np.asarray(render(s)).astype(np.uint8).transpose(1, 0, 2)[::-1] for s in states]


def _craftax_frames(env: Any, states: Sequence[Any]) -> list[np.ndarray]:
  import jax  # pylint: disable=import-outside-toplevel
  if "Classic" in env.env_id:
    from craftax.craftax_classic import renderer  # pylint: disable=import-outside-toplevel
  else:
    from craftax.craftax import renderer  # pylint: disable=import-outside-toplevel
  render = jax.jit(renderer.make_craftax_pixel_renderer(16))
  return [np.asarray(render(s)).astype(np.uint8) for s in states]


def frames(env: base.Environment, states: Sequence[Any]) -> list[np.ndarray]:
  """uint8 [H, W, 3] images of `states` (one env's, in order)."""
  kind = type(env).__name__
  try:
    if isinstance(env, cartpole.CartPole):
      return [cartpole_frame(np.asarray(s.physics)) for s in states]
    renderers = {"GymnaxEnv": _gymnax_frames, "BraxEnv": _brax_frames, "KinetixEnv": _kinetix_frames,
                 "CraftaxEnv": _craftax_frames}
    if kind not in renderers:
      raise NoRenderer(f"{kind} has no renderer")
    return renderers[kind](env, states)
  except NoRenderer:
    raise
  except Exception as e:  # pylint: disable=broad-except  (a library renderer that cannot run here, e.g. no OpenGL)
    raise NoRenderer(f"{kind}'s renderer failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                     + (" (Brax renders with MuJoCo: try MUJOCO_GL=egl or MUJOCO_GL=osmesa)"
                        if kind == "BraxEnv" else "")) from e


def save_video(path: str, images: Sequence[np.ndarray], fps: int = FPS) -> str:
  """Writes `images` as an animated GIF (Pillow, which matplotlib brings) or an MP4 (imageio + ffmpeg)."""
  ext = os.path.splitext(path)[1].lower()
  if os.path.dirname(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
  if ext == ".gif":
    from PIL import Image  # pylint: disable=import-outside-toplevel
    pics = [Image.fromarray(np.asarray(f, np.uint8)) for f in images]
    # GIF delays are in 1/100 s: 20 ms per frame is 50 fps.
    pics[0].save(path, save_all=True, append_images=pics[1:], duration=max(1000 // fps, 20), loop=0,
                 optimize=False)
  elif ext == ".mp4":
    try:
      import imageio.v2 as imageio  # pylint: disable=import-outside-toplevel
      with imageio.get_writer(path, fps=fps, macro_block_size=1) as writer:
        for f in images:
          writer.append_data(np.asarray(f, np.uint8))
    except (ImportError, ValueError, RuntimeError) as e:
      raise RuntimeError(f"writing .mp4 needs imageio with ffmpeg ({type(e).__name__}: {e}); install it with: "
                         'pip install -e ".[video]", or write a .gif') from e
  else:
    raise ValueError(f"{path}: the video must be a .gif or .mp4")
  return path
