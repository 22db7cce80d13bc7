"""PPO on Kinetix random levels (default: size s) as the paper runs it: entity observations, the entity
transformer, solve rates on kinetix-env's hand-designed levels. From kinetix-env's documented setting
(configs/learning/ppo-base.yaml at its initial release: 2,048 envs, 32 minibatches, 8 epochs, lr 5e-5 not
annealed, gamma 0.995, GAE lambda 0.9, clip 0.2, entropy 0.01, value coefficient 0.5, grad clip 1.0 (later
versions of that file say 0.5), filtered random levels; model-transformer.yaml: 2 layers, 8 heads, encoder width
128, qkv width 16, "dummy and mean" pooling; model-base.yaml: 5 × 128 tanh actor and critic layers, no RNN).
Differences: no RNN, resets from a reset pool (a filtered level costs ~128 physics steps), and the network
differences listed in learner/entity_network.py. Solve rates: every eval_every updates on all 74 shipped levels
(s 10, m 24, l 40), 20 sampled attempts each. `:flat` is the flat observation with an MLP; `:sfl` adds SFL's
level curriculum (pipeline/sfl.py, kinetix-env's ued/sfl settings); `:debug` is tiny.

  python -m launch.train --workdir=/tmp/kinetix --config=launch/configs/kinetix.py
  python -m launch.train --workdir=/tmp/kinetix --config=launch/configs/kinetix.py --config.env_name=kinetix:m@entity
  python -m launch.train --workdir=/tmp/kinetix --config=launch/configs/kinetix.py \\
      --config.env_name=kinetix:l/h0_angrybirds@entity
  python -m launch.train --workdir=/tmp/kinetix_dbg --config=launch/configs/kinetix.py:debug
  python -m launch.train --workdir=/tmp/kinetix --config=launch/configs/kinetix.py --dry_run --config.num_envs=1048576

Needs kinetix-env, which requires jax<=0.9.0: run it in .venv-kinetix (bash scripts/test_kinetix.sh creates it).
"""
from launch.configs import default


def get_config(arg: str | None = None):
  config = default.get_config()
  config.env_name = "kinetix:s@entity"
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
  config.max_grad_norm = 1.0
  config.log_every = 10
  config.eval_every = 100
  config.eval_episodes = 64
  config.network.kind = "entity"
  config.network.hidden_sizes = (128,) * 5
  config.eval.solve_levels = "s,m,l"
  if arg == "flat":
    config.env_name, config.network.kind, config.network.hidden_sizes = "kinetix:s@flat", "mlp", (256, 256, 256)
    config.eval.solve_levels = "s"  # a flat observation's size is its level size: the MLP plays only that size
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
    config.network.entity_width, config.network.entity_layers, config.network.entity_qkv = 16, 1, 8
    config.eval.solve_levels, config.eval.solve_attempts = "s/h0_weak_thrust,s/h2_one_wheel_car", 2
    config.reset_pool.size = 8
    config.reset_pool.refresh = 2
    config.mesh.data = 1
  elif arg == "sfl":  # the released agents' level curriculum: Sampling For Learnability, kinetix-env's ued/sfl settings
    config.level_sampler.kind = "sfl"
  elif arg not in (None, "", "flat"):
    raise ValueError(f"unknown variant {arg!r} (use :debug, :flat, :sfl or nothing)")
  config.scaling.base_num_envs = config.num_envs  # scaling rules start from this config's own sizes
  return config
