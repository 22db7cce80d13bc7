"""Every config key, described once: default, type, one-line doc, validation rule and resume policy.

launch/configs/default.py builds its ConfigDict from `SCHEMA`, launch/config_lib.py checks each key against its
rule (rules that relate several keys, the devices or the processes stay there), and the resume check takes its
MUST_MATCH (key → reason) and FREE_KEYS from here. List everything: `python -m launch.train --describe_config` (with
`--config=...` it shows that config's values), or `python -m launch.config_schema`.

Resume policies — how a key may change when a run resumes from its own checkpoint:
  must_match  the saved state depends on it (the reason says how): a change is refused
  warn        changes the run: it resumes with a warning that it is no longer the uninterrupted run
  free        does not change the trajectory at all (placement, logging, checkpoint cadence)
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import ml_collections

from learner import networks

POLICIES = ("must_match", "warn", "free")


@dataclasses.dataclass(frozen=True)
class Resume:
  """How a key may change on resume; `reason` (required for must_match) says what in the saved state depends on it."""
  policy: str
  reason: str = ""

  def __post_init__(self):
    if self.policy not in POLICIES:
      raise ValueError(f"resume policy {self.policy!r}: must be one of {list(POLICIES)}")
    if self.policy == "must_match" and not self.reason:
      raise ValueError("a must_match resume policy needs the reason (what in the saved state depends on the key)")


def must_match(reason: str) -> Resume:
  return Resume("must_match", reason)


WARN = Resume("warn")
_SHAPES = "the saved params have these shapes"
FREE = Resume("free")


@dataclasses.dataclass(frozen=True)
class Rule:
  """A per-key validation rule: `ok(value)`, else `message` (reported as "config.KEY=VALUE: message").

  `summary` replaces the message in listings where the message alone would mislead (it may assume a cross-key rule).
  """
  ok: Callable[[Any], bool]
  message: str
  summary: str = ""

  def __call__(self, value: Any) -> str | None:
    return None if self.ok(value) else self.message


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def positive_int(message: str = "must be a positive integer") -> Rule:
  return Rule(lambda v: _is_int(v) and v > 0, message)


def non_negative_int(message: str = "must be a non-negative integer", summary: str = "") -> Rule:
  return Rule(lambda v: _is_int(v) and v >= 0, message, summary)


def positive_number() -> Rule:
  return Rule(lambda v: _is_number(v) and v > 0, "must be a positive number")


def non_negative_number(message: str = "must be a non-negative number") -> Rule:
  return Rule(lambda v: _is_number(v) and v >= 0, message)


def unit_interval(open_: bool = False) -> Rule:
  if open_:
    return Rule(lambda v: _is_number(v) and 0 < v < 1, "must be in (0, 1)")
  return Rule(lambda v: _is_number(v) and 0 <= v <= 1, "must be in [0, 1]")


def one_of(*choices: str) -> Rule:
  return Rule(lambda v: v in choices, f"must be one of {list(choices)}")


BOOL = Rule(lambda v: isinstance(v, bool), "must be True or False")


@dataclasses.dataclass(frozen=True)
class Key:
  """One config key. `name` is dotted ("network.activation"); every field is required."""
  name: str
  default: Any
  type: type
  doc: str
  rule: Rule
  resume: Resume

  def __post_init__(self):
    where = f"config schema key {self.name!r}"
    if not isinstance(self.resume, Resume):
      raise TypeError(f"{where}: resume must be must_match(reason), WARN or FREE, not {self.resume!r}")
    if not isinstance(self.rule, Rule):
      raise TypeError(f"{where}: rule must be a Rule, not {self.rule!r}")
    if not self.doc or "\n" in self.doc:
      raise ValueError(f"{where}: needs a one-line doc")
    if not isinstance(self.default, self.type) or self.rule(self.default) is not None:
      raise ValueError(f"{where}: default {self.default!r} is not a valid {self.type.__name__}")


class Schema:
  """The keys in order, looked up by dotted name; refuses duplicates."""

  def __init__(self, *keys: Key):
    self._keys = {}
    for key in keys:
      if not isinstance(key, Key):
        raise TypeError(f"config schema: {key!r} is not a Key")
      if key.name in self._keys:
        raise ValueError(f"config schema: {key.name!r} is defined twice")
      self._keys[key.name] = key

  def __iter__(self) -> Iterator[Key]:
    return iter(self._keys.values())

  def __getitem__(self, name: str) -> Key:
    return self._keys[name]

  def __contains__(self, name: str) -> bool:
    return name in self._keys

  def names(self) -> tuple[str, ...]:
    return tuple(self._keys)

  def config(self) -> ml_collections.ConfigDict:
    """A new ConfigDict holding every key's default (groups as nested ConfigDicts)."""
    config = ml_collections.ConfigDict()
    for key in self:
      *groups, leaf = key.name.split(".")
      node = config
      for g in groups:
        if g not in node:
          node[g] = ml_collections.ConfigDict()
        node = node[g]
      node[leaf] = key.default
    return config

  def must_match(self) -> dict[str, str]:
    """must_match keys → reason, in schema order."""
    return {k.name: k.resume.reason for k in self if k.resume.policy == "must_match"}

  def free_keys(self) -> tuple[str, ...]:
    return tuple(k.name for k in self if k.resume.policy == "free")

  def listing(self, values: dict[str, Any] | None = None) -> str:
    """Human-readable: per key its value (default, unless `values` has it), type, rule, resume policy and doc."""
    lines = ["resume policies: must_match = a change is refused on resume; warn = allowed, resuming warns that it is "
             "no longer the uninterrupted run; free = does not change the trajectory", ""]
    for k in self:
      value = k.default if values is None else values.get(k.name, k.default)
      note = "" if values is None or value == k.default else f" (default {k.default!r})"
      resume = k.resume.policy + (f" ({k.resume.reason})" if k.resume.reason else "")
      lines += [f"{k.name}: {k.type.__name__} = {value!r}{note}", f"    {k.doc}",
                f"    rule: {k.rule.summary or k.rule.message}; resume: {resume}"]
    return "\n".join(lines)


SCHEMA = Schema(
    # The task and the run.
    Key("env_name", "CartPole-v1", str, 'built-in, or "gymnax:<id>", "brax:<name>", "kinetix:<s|m|l|level>", '
        '"craftax:<id>"', Rule(lambda v: isinstance(v, str), "must be a string naming an env"),
        must_match("the saved env states and observations belong to that env")),
    Key("num_envs", 32, int, "parallel envs, split over the mesh's data axis", positive_int(),
        must_match("there is one saved env state per env")),
    Key("seed", 0, int, "the only source of randomness; results do not depend on the device count",
        Rule(_is_int, "must be an integer"), must_match("the saved PRNG key continues that seed's run")),
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
    Key("learning_rate", 2.5e-3, float, "Adam step size at scaling.base_num_envs (initial, if annealed)",
        positive_number(), WARN),
    Key("anneal_lr", True, bool, "linearly anneal the learning rate to 0 over the run", BOOL,
        must_match("the saved optimizer state has the schedule's step count only when annealing")),
    Key("gamma", 0.99, float, "discount", unit_interval(), WARN),
    Key("gae_lambda", 0.95, float, "GAE λ", unit_interval(), WARN),
    Key("clip_eps", 0.2, float, "PPO ratio clip (also clips the value update)", positive_number(), WARN),
    Key("ent_coef", 0.01, float, "entropy bonus weight", non_negative_number(), WARN),
    Key("vf_coef", 0.5, float, "value loss weight", non_negative_number(), WARN),
    Key("max_grad_norm", 0.5, float, "global-norm gradient clip", positive_number(), WARN),
    # Logging, evaluation, checkpoints.
    Key("log_every", 10, int, "updates between metrics lines (metrics are pulled from the device only then)",
        positive_int(), FREE),
    Key("eval_every", 50, int, "updates between deterministic evaluations (and always at the end)", positive_int(),
        FREE),
    Key("eval_episodes", 32, int, "episodes per evaluation, run in parallel", positive_int(), FREE),
    Key("checkpoint_every", 50, int, "updates between async full-state checkpoints in DIR/checkpoints (and at the end)",
        positive_int(), FREE),
    Key("keep_checkpoints", 2, int, "newest complete checkpoints kept (older ones are deleted after each save)",
        positive_int(), FREE),
    Key("restore_from", "", str, "a run's workdir (or its checkpoints/ or a step dir): start a new run from its params",
        Rule(lambda v: isinstance(v, str), "must be a path (a run's workdir, its checkpoints/ dir or one step dir), "
             "or '' for none"), FREE),
    Key("log_checkpoints", False, bool, "print a console line for each checkpoint saved", BOOL, FREE),
    # Observations and resets.
    Key("obs_norm", False, bool, "normalise observations with running mean/var (kept in the TrainState, checkpointed)",
        BOOL, must_match("the saved runner holds observation statistics only when it is on")),
    Key("reset_pool.size", 0, int,
        ">0: finished episodes restart from a pool of this many pre-sampled states (0: reset)",
        non_negative_int("must be a non-negative integer (0 turns the pool off)"),
        must_match("the saved runner holds a reset pool of this size")),
    Key("reset_pool.refresh", 64, int, "pool entries re-sampled per env step; must divide reset_pool.size",
        positive_int(), WARN),
    # The network.
    Key("network.hidden_sizes", (64, 64), tuple, "MLP widths of each trunk",
        Rule(lambda v: isinstance(v, (tuple, list)) and bool(v) and all(_is_int(s) and s > 0 for s in v),
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
    # How sizes follow num_envs (README, "Scaling to more envs").
    Key("scaling.rule", "none", str, "how minibatching and learning rate follow num_envs (README)",
        one_of("none", "recipe", "fixed_minibatches", "sqrt_lr"), WARN),
    Key("scaling.base_num_envs", 32, int,
        "num_envs at which minibatch size / count and learning rate are as configured",
        positive_int(), WARN),
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
        Rule(lambda v: _is_int(v) and (v == -1 or v >= 1),
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
