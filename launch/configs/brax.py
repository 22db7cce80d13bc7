"""PPO on a Brax task (default: inverted_pendulum) with running observation normalisation; `:debug` is tiny.

  python -m launch.train --workdir=/tmp/brax --config=launch/configs/brax.py
  python -m launch.train --workdir=/tmp/brax --config=launch/configs/brax.py --config.env_name=brax:hopper
  python -m launch.train --workdir=/tmp/brax_dbg --config=launch/configs/brax.py:debug

Needs the brax extra: pip install -e ".[brax]". benchmarks/brax_learning.py checks that this config learns.
"""
from launch.configs import default


def get_config(arg: str | None = None):
  config = default.get_config()
  config.env_name = "brax:inverted_pendulum@spring"  # spring: the fastest Brax backend on CPU
  config.obs_norm = True
  config.num_envs = 64
  config.num_steps = 32
  config.total_env_steps = 64 * 32 * 800
  config.update_epochs = 4
  config.num_minibatches = 8
  config.learning_rate = 1e-3
  config.gamma = 0.97
  config.gae_lambda = 0.95
  config.ent_coef = 0.0
  config.log_every = 50
  config.eval_every = 100
  config.eval_episodes = 16
  config.network.hidden_sizes = (64, 64)
  if arg == "debug":
    config.num_envs = 8
    config.num_steps = 8
    config.total_env_steps = 8 * 8 * 4
    config.update_epochs = 1
    config.num_minibatches = 2
    config.log_every = 2
    config.eval_every = 4
    config.eval_episodes = 4
    config.network.hidden_sizes = (16, 16)
  elif arg:
    raise ValueError(f"unknown variant {arg!r} (use :debug or nothing)")
  config.scaling.base_num_envs = config.num_envs  # scaling rules start from this config's own sizes
  return config
