"""The default run: PPO on the built-in CartPole-v1, tuned to reach a perfect score in well under a minute on 2 CPU
cores. Every other config starts from this one, so its keys are the full schema.

  python -m launch.train --workdir=/tmp/cartpole
  python -m launch.train --workdir=/tmp/cartpole --config=launch/configs/default.py --config.num_envs=64
"""
import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  config = ml_collections.ConfigDict()
  config.env_name = "CartPole-v1"  # built-in, or "gymnax:<id>", "brax:<name>", "kinetix:<s|m|l|level>", "craftax:<id>"
  config.seed = 0  # the only source of randomness; results do not depend on the device count
  config.num_envs = 32  # parallel envs, split over the mesh's data axis
  config.num_steps = 128  # env steps per env per update (rollout length T)
  config.total_env_steps = 800_000  # stop after this many env steps (rounded down to whole updates)
  config.update_epochs = 4  # SGD passes over each batch
  config.num_minibatches = 4  # minibatches per epoch at scaling.base_num_envs; 0 = derive from minibatch_size
  config.minibatch_size = 0  # samples per minibatch at scaling.base_num_envs; 0 = derive from num_minibatches
  config.sgd_chunk_size = 4096  # samples per gradient chunk, accumulated over the minibatch (speed/memory only)
  config.learning_rate = 2.5e-3  # Adam step size at scaling.base_num_envs (initial, if annealed)
  config.anneal_lr = True  # linearly anneal the learning rate to 0 over the run
  config.gamma = 0.99  # discount
  config.gae_lambda = 0.95  # GAE λ
  config.clip_eps = 0.2  # PPO ratio clip (also clips the value update)
  config.ent_coef = 0.01  # entropy bonus weight
  config.vf_coef = 0.5  # value loss weight
  config.max_grad_norm = 0.5  # global-norm gradient clip
  config.log_every = 10  # updates between metrics lines (metrics are pulled from the device only then)
  config.eval_every = 50  # updates between deterministic evaluations (and always at the end)
  config.eval_episodes = 32  # episodes per evaluation, run in parallel
  config.checkpoint_every = 50  # updates between async full-state checkpoints in DIR/checkpoints (and at the end)
  config.keep_checkpoints = 2  # newest complete checkpoints kept (older ones are deleted after each save)
  config.restore_from = ""  # a run's workdir (or its checkpoints/ or a step dir): start a new run from its params
  config.obs_norm = False  # normalise observations with running mean/var (kept in the TrainState, checkpointed)
  config.log_checkpoints = False  # print a console line for each checkpoint saved

  config.reset_pool = ml_collections.ConfigDict()
  config.reset_pool.size = 0  # >0: finished episodes restart from a pool of this many pre-sampled states (0: reset)
  config.reset_pool.refresh = 64  # pool entries re-sampled per env step; must divide reset_pool.size

  config.network = ml_collections.ConfigDict()
  config.network.hidden_sizes = (64, 64)  # MLP widths of each trunk
  config.network.activation = "tanh"  # tanh | relu | gelu | silu
  config.network.shared_trunk = False  # one trunk for actor and critic instead of two

  config.pipeline = ml_collections.ConfigDict()
  config.pipeline.mode = "fused"  # fused: one jitted update | sync: staged, identical results | overlap: see below
  config.pipeline.max_policy_lag = 1  # overlap: batch b is collected with params version b - max_policy_lag
  config.pipeline.actor_devices = 0  # 0: actors and learner share the mesh; k: first k devices step envs, rest train
  config.scaling = ml_collections.ConfigDict()
  config.scaling.rule = "none"  # none | recipe | fixed_minibatches | sqrt_lr: how sizes follow num_envs (README)
  config.scaling.base_num_envs = 32  # num_envs at which minibatch size / count and learning rate are as configured

  config.diagnostics = ml_collections.ConfigDict()
  config.diagnostics.enabled = True  # per-update KL, ‖Δθ‖, gradient noise scale, explained variance (small cost)
  config.diagnostics.kl_quantile = 0.9  # the high quantile of per-state KL(behaviour ‖ updated) that is logged

  config.ewma = ml_collections.ConfigDict()
  config.ewma.enabled = False  # PPO-EWMA: clip against an EWMA of past params instead of the behaviour policy
  config.ewma.center_of_mass = 4.0  # mean age of the EWMA in optimizer steps; decay = com / (1 + com)

  config.mesh = ml_collections.ConfigDict()
  config.mesh.data = -1  # devices on the `data` (env) axis; -1 = all visible devices

  config.wandb = ml_collections.ConfigDict()
  config.wandb.project = ""  # Weights & Biases project to log to; "" = off (needs pip install -e ".[wandb]")
  config.wandb.entity = ""  # W&B team or user; "" = your default entity
  config.wandb.name = ""  # W&B run name; "" = the workdir's name
  config.wandb.mode = "online"  # online | offline (written under DIR/wandb; upload with `wandb sync`) | disabled
  return config
