"""docs/config.md is the schema's reference page (launch/config/reference.py): not stale, and it says of every key
what `python -m launch.train --describe_config` says of it."""
from __future__ import annotations

import os
import re
import subprocess
import sys

from launch.config import reference
from launch.config.schema import SCHEMA

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGE = os.path.join(ROOT, "docs", "config.md")


def _page() -> str:
  with open(PAGE, encoding="utf-8") as f:
    return f.read()


def test_the_page_is_generated_from_the_schema():
  assert _page() == reference.render(), "docs/config.md is stale: python -m launch.config.reference > docs/config.md"


def test_the_page_says_what_describe_config_says():
  out = subprocess.run([sys.executable, "-m", "launch.train", "--describe_config"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300, check=True).stdout
  described = re.findall(r"^(\S+): (\w+) = (.*)\n    (.*)\n    rule: (.*); resume: (.*)$", out, flags=re.M)
  assert [d[0] for d in described] == list(SCHEMA.names())
  rows = {line.split(" | ")[0][3:-1]: line for line in _page().splitlines() if line.startswith("| `")}
  for name, type_name, value, doc, rule, resume in described:
    cells = [c.replace("\\|", "|") for c in re.split(r"(?<!\\) \| ", rows[name].strip("| "))]
    assert cells == [f"`{name}`", f"`{value}`", type_name, doc, rule, resume], name
