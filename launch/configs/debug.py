"""A tiny run for smoke tests and debugging: compiles fast, finishes in seconds.

  python -m launch.train --workdir=/tmp/debug --config=launch/configs/debug.py
"""
from launch.configs import default


def get_config(arg: str | None = None):
  if arg:
    raise ValueError(f"unknown variant {arg!r} (debug.py has none)")
  config = default.get_config()
  config.num_envs = 8
  config.num_steps = 16
  config.total_env_steps = 8 * 16 * 10
  config.update_epochs = 2
  config.num_minibatches = 2
  config.log_every = 5
  config.eval_every = 5
  config.eval_episodes = 4
  config.network.hidden_sizes = (16, 16)
  config.scaling.base_num_envs = 8
  config.mesh.data = 1
  return config
