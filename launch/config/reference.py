"""docs/config.md, the reference of every config key, generated from the schema (launch/config/schema.py):

  python -m launch.config.reference > docs/config.md

The page holds what `python -m launch.train --describe_config` prints for the default config — each key's default,
type, rule, resume policy and one-line doc — as tables, one per group of keys. tests/test_config_reference.py fails
when the page is stale.
"""
from __future__ import annotations

from launch.config.keys import Key, Schema
from launch.config.schema import SCHEMA

HEADER = """# Config reference

Every key of the trainer's config, generated from `launch/config/schema.py` by
`python -m launch.config.reference > docs/config.md` (a test fails when this page is stale). Set a key on the command
line with `--config.KEY=VALUE`, or start from another config file with `--config=launch/configs/NAME.py`;
`python -m launch.train --describe_config [--config=...]` lists the same keys with that config's values, and
`--dry_run` adds the derived sizes (batch, minibatches, learning rate, updates) and the memory plan.

A bad value stops the run before anything compiles, with one line per broken rule and exit code 2.

Resume policies: how a key may change when a run resumes from its own checkpoint.

| policy | meaning |
| --- | --- |
| must_match | the saved state depends on it (the reason says how): a change is refused |
| warn | changes the run: it resumes with a warning that it is no longer the uninterrupted run |
| free | does not change the trajectory at all (placement, logging, checkpoint cadence) |
"""

GROUP_TITLES = {
    "": "The task, PPO, logging and checkpoints",
}


def _cell(text: str) -> str:
  return str(text).replace("|", "\\|").replace("\n", " ")


def _row(key: Key) -> str:
  resume = key.resume.policy + (f" ({key.resume.reason})" if key.resume.reason else "")
  rule = key.rule.summary or key.rule.message
  return "| " + " | ".join(_cell(c) for c in (f"`{key.name}`", f"`{key.default!r}`", key.type.__name__, key.doc,
                                                 rule, resume)) + " |"


def group(name: str) -> str:
  """A key's group: the part of its dotted name before the last dot ("" for top-level keys)."""
  return name.rsplit(".", 1)[0] if "." in name else ""


def render(schema: Schema = SCHEMA) -> str:
  """The whole page (Markdown)."""
  sections: dict[str, list[Key]] = {}
  for key in schema:
    sections.setdefault(group(key.name), []).append(key)
  lines = [HEADER]
  for name, keys in sections.items():
    lines += [f"## {GROUP_TITLES.get(name, f'`{name}.*`')}", "",
              "| key | default | type | what it does | rule | on resume |", "| --- | --- | --- | --- | --- | --- |"]
    lines += [_row(k) for k in keys] + [""]
  return "\n".join(lines)


if __name__ == "__main__":
  print(render(), end="")
