"""PPO on Craftax (default: Craftax-Symbolic-v1) with a reset pool, since generating a world costs ~20 steps; `:debug`
is tiny and uses Craftax-Classic (whose graph compiles several times faster).

  python -m launch.train --workdir=/tmp/craftax --config=launch/configs/craftax.py
  python -m launch.train --workdir=/tmp/craftax --config=launch/configs/craftax.py \\
      --config.env_name=craftax:Craftax-Classic-Symbolic-v1
  python -m launch.train --workdir=/tmp/craftax_dbg --config=launch/configs/craftax.py:debug

Needs the craftax extra: pip install -e ".[craftax]". Hyperparameters follow Craftax's PPO baseline (1,024 envs,
64 steps, 8 minibatches, 4 epochs, lr 2e-4, gamma 0.99, GAE lambda 0.8, entropy 0.01, grad clip 1.0,
512-wide tanh MLPs).
"""
from launch.configs import default


def get_config(arg: str | None = None):
  config = default.get_config()
  config.env_name = "craftax:Craftax-Symbolic-v1"
  config.num_envs = 1024
  config.num_steps = 64
  config.total_env_steps = 1_000_000_000
  config.update_epochs = 4
  config.num_minibatches = 8
  config.learning_rate = 2e-4
  config.gamma = 0.99
  config.gae_lambda = 0.8
  config.ent_coef = 0.01
  config.max_grad_norm = 1.0
  config.log_every = 10
  config.eval_every = 100
  config.eval_episodes = 64
  config.network.hidden_sizes = (512, 512, 512)
  config.reset_pool.size = 1024
  config.reset_pool.refresh = 64
  if arg == "debug":
    config.env_name = "craftax:Craftax-Classic-Symbolic-v1"
    config.num_envs = 8
    config.num_steps = 8
    config.total_env_steps = 8 * 8 * 4
    config.update_epochs = 1
    config.num_minibatches = 2
    config.log_every = 2
    config.eval_every = 4
    config.eval_episodes = 2
    config.network.hidden_sizes = (32, 32)
    config.reset_pool.size = 8
    config.reset_pool.refresh = 2
    config.mesh.data = 1
  elif arg:
    raise ValueError(f"unknown variant {arg!r} (use :debug or nothing)")
  config.scaling.base_num_envs = config.num_envs  # scaling rules start from this config's own sizes
  return config
