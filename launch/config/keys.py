"""The pieces of the config schema (launch/config/schema.py): a `Key` = default, type, doc, `Rule`, `Resume` policy,
and `Schema`, the keys in order. The keys themselves are in launch/config/schema.py."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import ml_collections

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


def is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def is_number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def positive_int(message: str = "must be a positive integer") -> Rule:
  return Rule(lambda v: is_int(v) and v > 0, message)


def non_negative_int(message: str = "must be a non-negative integer", summary: str = "") -> Rule:
  return Rule(lambda v: is_int(v) and v >= 0, message, summary)


def positive_number() -> Rule:
  return Rule(lambda v: is_number(v) and v > 0, "must be a positive number")


def non_negative_number(message: str = "must be a non-negative number") -> Rule:
  return Rule(lambda v: is_number(v) and v >= 0, message)


def unit_interval(open_: bool = False) -> Rule:
  if open_:
    return Rule(lambda v: is_number(v) and 0 < v < 1, "must be in (0, 1)")
  return Rule(lambda v: is_number(v) and 0 <= v <= 1, "must be in [0, 1]")


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
