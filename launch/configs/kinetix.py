"""PPO on Kinetix random levels (default: size s), from the paper's setting as kinetix-env documents it
(configs/learning/ppo-base.yaml): 2,048 envs, 32 minibatches, 8 epochs, lr 5e-5 (not annealed), gamma 0.995,
GAE lambda 0.9, clip 0.2, entropy 0.01, value coefficient 0.5, grad clip 0.5, filtered random levels. Differences:
observations are kinetix-env's flat symbolic vector fed to an MLP (kinetix-env's baseline uses entity observations
with a transformer and an RNN), and resets come from a reset pool because a filtered level costs ~128 physics steps.
`:debug` is tiny.

  python -m launch.train --workdir=/tmp/kinetix --config=launch/configs/kinetix.py
  python -m launch.train --workdir=/tmp/kinetix --config=launch/configs/kinetix.py --config.env_name=kinetix:m
  python -m launch.train --workdir=/tmp/kinetix --config=launch/configs/kinetix.py \\
      --config.env_name=kinetix:l/h0_angrybirds
  python -m launch.train --workdir=/tmp/kinetix_dbg --config=launch/configs/kinetix.py:debug

Needs kinetix-env, which requires jax<=0.9.0: run it in .venv-kinetix (bash scripts/test_kinetix.sh creates it).
"""
from launch.configs import default


def get_config(arg: str | None = None):
  config = default.get_config()
  config.env_name = "kinetix:s"
  config.num_envs = 2048
  config.num_steps = 256  # kinetix-env's num_steps (one full episode of max_timesteps=256 per rollout)
  config.total_env_steps = 1_073_741_824  # kinetix-env's total_timesteps (2^30)
  config.update_epochs = 8
  config.num_minibatches = 32
  config.learning_rate = 5e-5
  config.anneal_lr = False
  config.gamma = 0.995
  config.gae_lambda = 0.9
  config.clip_eps = 0.2
  config.ent_coef = 0.01
  config.vf_coef = 0.5
  config.max_grad_norm = 0.5
  config.log_every = 10
  config.eval_every = 100
  config.eval_episodes = 64
  config.network.hidden_sizes = (256, 256, 256)
  config.reset_pool.size = 2048
  config.reset_pool.refresh = 64
  if arg == "debug":
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
