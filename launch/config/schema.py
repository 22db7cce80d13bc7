"""Every config key, described once: default, type, one-line doc, validation rule and resume policy.

launch/configs/default.py builds its ConfigDict from `SCHEMA`, launch/config/resolve.py checks each key against its
rule (rules that relate several keys, the devices or the processes stay there), and the resume check takes its
MUST_MATCH (key → reason) and FREE_KEYS from here. List everything: `python -m launch.train --describe_config` (with
`--config=...` it shows that config's values), or `python -m launch.config.schema`.

Resume policies — how a key may change when a run resumes from its own checkpoint:
  must_match  the saved state depends on it (the reason says how): a change is refused
  warn        changes the run: it resumes with a warning that it is no longer the uninterrupted run
  free        does not change the trajectory at all (placement, logging, checkpoint cadence)
"""
from __future__ import annotations


from launch.config.keys import (BOOL, FREE, POLICIES, WARN, Key, Resume, Rule, Schema, is_int, is_number,  # noqa: F401
                                must_match, non_negative_int, non_negative_number, one_of, positive_int,
                                positive_number, unit_interval)
from launch.config import schedule
from learner import networks, obs_store

_SHAPES = "the saved params have these shapes"


SCHEMA = Schema(
    # The task and the run.
    Key("env_name", "CartPole-v1", str, 'built-in, or "gymnax:<id>", "brax:<name>", "kinetix:<s|m|l|level>", '
        '"craftax:<id>"', Rule(lambda v: isinstance(v, str), "must be a string naming an env"),
        must_match("the saved env states and observations belong to that env")),
    Key("sticky_actions", 0.0, float, "probability that an env repeats its previous action instead of the agent's "
        "(Machado et al. 2018; MinAtar's original: 0.1), in training and every evaluation",
        Rule(lambda v: is_number(v) and 0 <= v < 1, "must be in [0, 1)"),
        must_match("the saved env states hold the previous action only with sticky actions, and the task differs")),
    Key("num_envs", 32, int, "parallel envs, split over the mesh's data axis", positive_int(),
        must_match("there is one saved env state per env")),
    Key("seed", 0, int, "the only source of randomness; results do not depend on the device count",
        Rule(is_int, "must be an integer"), must_match("the saved PRNG key continues that seed's run")),
    Key("num_steps", 128, int, "env steps per env per update (rollout length T)", positive_int(), WARN),
    Key("total_env_steps", 800_000, int, "stop after this many env steps (rounded down to whole updates)",
        positive_int(), WARN),
    # PPO.
    Key("update_epochs", 4, int, "SGD passes over each batch", positive_int(), WARN),
    Key("num_minibatches", 4, int, "minibatches per epoch at scaling.base_num_envs; 0 = derive from minibatch_size",
        non_negative_int("must be a positive integer", summary="must be a non-negative integer; exactly one of "
                         "num_minibatches / minibatch_size is > 0"), WARN),
    Key("minibatch_size", 0, int, "samples per minibatch at scaling.base_num_envs; 0 = derive from num_minibatches",
        non_negative_int("must be a non-negative integer (0 = derive it from num_minibatches)"), WARN),
    Key("sgd_chunk_size", 4096, int, "samples per gradient chunk, accumulated over the minibatch (speed/memory only)",
        positive_int(), WARN),
    Key("sgd.shuffle", "global", str, "global: minibatches drawn from the whole batch | local: each device permutes "
        "its own samples (no rows cross devices; results depend on the device count)", one_of("global", "local"),
        WARN),
    Key("learning_rate", 2.5e-3, float, "Adam step size at scaling.base_num_envs (initial, if annealed)",
        positive_number(), WARN),
    Key("anneal_lr", True, bool, "linearly anneal the learning rate to 0 over the run", BOOL,
        must_match("the saved optimizer state has the anneal's position only when annealing")),
    Key("gamma", 0.99, float, "discount", unit_interval(), WARN),
    Key("gae_lambda", 0.95, float, "GAE λ", unit_interval(), WARN),
    Key("clip_eps", 0.2, float, "PPO ratio clip (also clips the value update)", positive_number(), WARN),
    Key("ent_coef", 0.01, float, "entropy bonus weight", non_negative_number(), WARN),
    Key("vf_coef", 0.5, float, "value loss weight", non_negative_number(), WARN),
    Key("max_grad_norm", 0.5, float, "global-norm gradient clip", positive_number(), WARN),
    # Logging, evaluation, checkpoints.
    Key("log_every", 10, int, "updates between metrics lines (metrics are pulled from the device only then)",
        positive_int(), FREE),
    Key("eval_every", 50, int, "updates between evaluations (and always at the end)", positive_int(),
        FREE),
    Key("eval_episodes", 32, int, "episodes per evaluation, run in parallel", positive_int(), FREE),
    Key("checkpoint_every", 50, int, "updates between async full-state checkpoints in DIR/checkpoints (and at the end)",
        positive_int(), FREE),
    Key("keep_checkpoints", 2, int, "newest complete checkpoints kept (older ones are deleted after each save)",
        positive_int(), FREE),
    Key("restore_from", "", str, "a run's workdir (or its checkpoints/ or a step dir): start a new run from its params "
        "(and obs statistics, with obs_norm)",
        Rule(lambda v: isinstance(v, str), "must be a path (a run's workdir, its checkpoints/ dir or one step dir), "
             "or '' for none"), FREE),
    Key("log_checkpoints", False, bool, "print a console line for each checkpoint saved", BOOL, FREE),
    # Observations and resets.
    Key("obs_norm", False, bool, "normalise observations with running mean/var (kept in the TrainState, checkpointed)",
        BOOL, must_match("the saved runner holds observation statistics only when it is on")),
    Key("obs_store", "float32", str, "observations' float leaves as the policy sees and the batch stores them: "
        "float32 | bfloat16 (rounded, half the bytes)", one_of(*obs_store.STORES),
        must_match("the saved params were trained on observations at this precision")),
    Key("reset_pool.size", 0, int,
        ">0: finished episodes restart from a pool of this many pre-sampled states (0: reset)",
        non_negative_int("must be a non-negative integer (0 turns the pool off)"),
        must_match("the saved runner holds a reset pool of this size")),
    Key("reset_pool.refresh", 64, int, "pool entries re-sampled per env step; must divide reset_pool.size",
        positive_int(), WARN),
    # Level curriculum (pipeline/sfl.py): Sampling For Learnability, kinetix-env's ued/sfl defaults.
    Key("level_sampler.kind", "uniform", str, "uniform: levels as the env's reset draws them | sfl: a share of "
        "resets from the levels the policy solves about half the time", one_of("uniform", "sfl"),
        must_match("the saved runner holds SFL's level buffer only when it is on")),
    Key("level_sampler.batch_size", 4096, int, "sfl: random levels scored per batch (divided over the devices)",
        positive_int(), WARN),
    Key("level_sampler.num_batches", 3, int, "sfl: batches scored per re-scoring", positive_int(), WARN),
    Key("level_sampler.rollout_steps", 512, int, "sfl: sampled-policy steps per scored level", positive_int(), WARN),
    Key("level_sampler.buffer_size", 1024, int, "sfl: the most learnable levels kept (<= the levels scored)",
        positive_int(), must_match("the saved level buffer has this many levels")),
    Key("level_sampler.rescore_every", 128, int, "sfl: updates between re-scorings (the first before update 1)",
        positive_int(), WARN),
    Key("level_sampler.buffer_ratio", 0.5, float, "sfl: share of resets drawn from the buffer (the rest from the "
        "reset pool)", unit_interval(), WARN),
    # The network.
    Key("network.hidden_sizes", (64, 64), tuple, "MLP widths of each trunk",
        Rule(lambda v: isinstance(v, (tuple, list)) and bool(v) and all(is_int(s) and s > 0 for s in v),
             "must be a non-empty sequence of positive integers, e.g. (64, 64)"),
        must_match("the saved params have these shapes")),
    Key("network.activation", "tanh", str, "hidden-layer nonlinearity", one_of(*sorted(networks.ACTIVATIONS)),
        must_match("the saved params were trained for it")),
    Key("network.shared_trunk", False, bool, "one trunk for actor and critic instead of two", BOOL,
        must_match("the saved params have this structure")),
    # Entity observations (pytrees, e.g. "kinetix:s@entity"): the entity transformer, and Kinetix solve rates.
    Key("network.kind", "mlp", str, "mlp: flat observations | entity: transformer over entity observations",
        one_of("mlp", "entity"), must_match("the saved params have this structure")),
    Key("network.entity_width", 128, int, "entity network: embedding width", positive_int(), must_match(_SHAPES)),
    Key("network.entity_layers", 2, int, "entity network: transformer layers", positive_int(), must_match(_SHAPES)),
    Key("network.entity_heads", 8, int, "entity network: attention heads (a multiple of the attention-mask channels)",
        positive_int(), must_match(_SHAPES)),
    Key("network.entity_qkv", 16, int, "entity network: total query/key/value width over all heads",
        positive_int(), must_match(_SHAPES)),
    Key("eval.policy", "mode", str, "mode: evaluations act with the policy's most likely action | sampled: draw "
        "actions as in training (each row's eval_distinct counts the distinct episodes played)",
        one_of("mode", "sampled"), FREE),
    Key("eval.solve_levels", "", str, 'Kinetix solve rates at eval points: "s,m,l" (shipped levels), level names, ""',
        Rule(lambda v: isinstance(v, str), "must be a comma-separated list of sizes / level names"), FREE),
    Key("eval.solve_attempts", 20, int, "sampled-policy episodes per level for solve rates (kinetix-env: 20)",
        positive_int(), FREE),
    # The staged pipeline. mode / max_policy_lag are free here: fused and sync give identical results, and the
    # resume check refuses a change of the overlap policy lag on its own (it shapes the saved in-flight params).
    Key("pipeline.mode", "fused", str, "fused: one jitted update | sync: staged, identical results | overlap: "
        "actors run max_policy_lag versions ahead", one_of("fused", "sync", "overlap"), FREE),
    Key("pipeline.max_policy_lag", 1, int, "overlap: batch b is collected with params version b - max_policy_lag",
        non_negative_int("must be an integer >= 1 in overlap mode (>= 0 otherwise)"), FREE),
    Key("pipeline.actor_devices", 0, int,
        "0: actors and learner share the mesh; k: first k devices step envs, rest train",
        non_negative_int("must be a non-negative integer (0: actors and learner share the devices)"), FREE),
    # How sizes follow num_envs (docs/scaling.md).
    Key("scaling.rule", "none", str, "how minibatching and learning rate follow num_envs (docs/scaling.md)",
        one_of("none", "recipe", "fixed_minibatches", "sqrt_lr"), WARN),
    Key("scaling.base_num_envs", 32, int,
        "num_envs at which minibatch size / count and learning rate are as configured",
        positive_int(), WARN),
    Key("scaling.schedule", "", str, 'num_envs by env steps, e.g. "0:2048,2e9:65536"; "" = num_envs throughout',
        Rule(lambda v: v == "" or schedule.schedule_ok(v),
             'must be "" or "STEPS:NUM_ENVS,..." with increasing STEPS'), WARN),
    # Outer-step control (docs/scaling.md): the learning rate scaled per update from measured KL.
    Key("outer_step.mode", "none", str, "none | adaptive_kl (KL per update near kl_target) | samples_per_kl",
        one_of("none", "adaptive_kl", "samples_per_kl"), must_match("the saved state holds the scale only when on")),
    Key("outer_step.kl_target", 0.01, float, "adaptive_kl: KL per update aimed at; outside [/2, x2] the lr moves",
        positive_number(), WARN),
    Key("outer_step.samples_per_kl", 1e6, float, "samples_per_kl: batch size / KL per update aimed at",
        positive_number(), WARN),
    Key("outer_step.factor", 1.5, float, "the most the lr is multiplied or divided by per update",
        Rule(lambda v: is_number(v) and v > 1, "must be a number > 1"), WARN),
    Key("outer_step.max_scale", 10.0, float, "the controlled lr stays in [lr / max_scale, lr * max_scale]",
        Rule(lambda v: is_number(v) and v >= 1, "must be a number >= 1"), WARN),
    # Autoscale (docs/autoscale.md): num_envs grown by the run itself on a noise-limited plateau.
    Key("autoscale.enabled", False, bool, "grow num_envs by autoscale.factor on a noise-limited plateau (needs a "
        "scaling rule), up to autoscale.max_num_envs", BOOL, WARN),
    Key("autoscale.max_num_envs", 0, int, "the largest num_envs autoscale grows to (0: autoscale off)",
        non_negative_int(), WARN),
    Key("autoscale.factor", 4, int, "num_envs is multiplied by this at each growth (capped at max_num_envs)",
        Rule(lambda v: is_int(v) and v >= 2, "must be an integer >= 2"), WARN),
    Key("autoscale.window", 0.1, float, "the rule's window, a share of the run: judged once the current num_envs "
        "has run this long, over the last window against the one before", unit_interval(open_=True), WARN),
    Key("plateau.share", 0.25, float,
        "the plateau rule's window, a share of the run: advise more envs once on a noise-limited plateau (0: off)",
        unit_interval(), FREE),
    # Diagnostics and PPO-EWMA.
    Key("diagnostics.enabled", True, bool, "per-update KL, ‖Δθ‖, gradient noise scale, explained variance (small cost)",
        BOOL, WARN),
    Key("diagnostics.kl_quantile", 0.9, float, "the high quantile of per-state KL(behaviour ‖ updated) that is logged",
        unit_interval(open_=True), WARN),
    Key("ewma.enabled", False, bool, "PPO-EWMA: clip against an EWMA of past params instead of the behaviour policy",
        BOOL, must_match("the saved state holds PPO-EWMA's proximal params only when it is on")),
    Key("ewma.center_of_mass", 4.0, float, "mean age of the EWMA in optimizer steps; decay = com / (1 + com)",
        non_negative_number("must be a non-negative number (0 = the current params)"), WARN),
    # Devices.
    Key("mesh.data", -1, int, "devices on the `data` (env) axis; -1 = all visible devices",
        Rule(lambda v: is_int(v) and (v == -1 or v >= 1),
             "must be -1 (all devices) or between 1 and the number of visible devices"),
        FREE),
    # Weights & Biases (optional extra: pip install -e ".[wandb]"); logging only.
    Key("wandb.project", "", str, 'Weights & Biases project to log to; "" = off (needs pip install -e ".[wandb]")',
        Rule(lambda v: isinstance(v, str), "must be a string"), FREE),
    Key("wandb.entity", "", str, 'W&B team or user; "" = your default entity',
        Rule(lambda v: isinstance(v, str), "must be a string"), FREE),
    Key("wandb.name", "", str, 'W&B run name; "" = the workdir\'s name',
        Rule(lambda v: isinstance(v, str), "must be a string"), FREE),
    Key("wandb.mode", "online", str, "online | offline (written under DIR/wandb; upload with `wandb sync`) | disabled",
        one_of("online", "offline", "disabled"), FREE),
)


if __name__ == "__main__":
  print(SCHEMA.listing())
