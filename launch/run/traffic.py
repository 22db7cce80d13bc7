"""Bytes a compiled program moves between devices: its collectives, read from the optimized HLO, times the trip counts
of the loops around them.

  traffic.of(compiled)    # {"bytes": ..., "by_source": {...}, "largest": [...]} per call of the program

Each collective (all-reduce, all-gather, all-to-all, reduce-scatter, collective-permute) counts its buffer's size
(for an all-reduce the payload; a ring all-reduce sends about 2 (D - 1) / D of it per device) as often as it runs per
call: the product of the `known_trip_count`s of the while loops around it. Its source is read from the op's JAX name:
`minibatch gathers` (a gather whose rows are split over devices: each device gathers what it holds and an all-reduce
assembles the minibatch), `gradients` (the all-reduce of the params' gradient), or `other`. --dry_run reports the
update's (launch/train.py); docs/devices.md has the figures.
"""
from __future__ import annotations

import re
from typing import Any

_KINDS = ("all-reduce", "all-gather", "all-to-all", "reduce-scatter", "collective-permute")
_BYTES = {"f64": 8, "s64": 8, "u64": 8, "f32": 4, "s32": 4, "u32": 4, "bf16": 2, "f16": 2, "s16": 2, "u16": 2,
          "s8": 1, "u8": 1, "pred": 1}
_HEADER = re.compile(r"^(?:ENTRY )?%([\w.\-]+) \(.*\{$")
_SHAPE = re.compile(r"\b(" + "|".join(_BYTES) + r")\[([\d,]*)\]")
_OP = re.compile(r"^\s*(?:ROOT )?%[\w.\-]+ = (.*?) (" + "|".join(_KINDS) + r")(?:-start)?\(")


def of(compiled) -> dict[str, Any]:
  """The collectives of `compiled` (a jax.stages.Compiled) per call: total bytes, by source, the five largest."""
  return analyse(compiled.as_text())


def analyse(text: str) -> dict[str, Any]:
  bodies, entry, current = {}, None, None
  for line in text.splitlines():
    match = _HEADER.match(line)
    if match:
      current = match.group(1)
      bodies[current] = []
      entry = current if line.startswith("ENTRY") else entry
    elif current is not None:
      bodies[current].append(line)
  times = _multipliers(bodies, entry)
  ops, by_source, total = [], {}, 0
  for name, lines in bodies.items():
    for line in lines:
      match = _OP.match(line)
      if not match or times.get(name, 0) == 0:
        continue
      size = sum(_BYTES[dtype] * _product(dims) for dtype, dims in _SHAPE.findall(match.group(1)))
      op_name = re.search(r'op_name="([^"]*)"', line)
      source = _source(op_name.group(1) if op_name else "")
      count = times[name]
      total += size * count
      by_source[source] = by_source.get(source, 0) + size * count
      ops.append({"kind": match.group(2), "bytes": size, "times": count, "source": source,
                  "shape": match.group(1)[:120]})
  ops.sort(key=lambda o: -o["bytes"] * o["times"])
  return {"bytes": total, "by_source": by_source, "largest": ops[:5]}


def _product(dims: str) -> int:
  out = 1
  for d in filter(None, dims.split(",")):
    out *= int(d)
  return out


def _source(op_name: str) -> str:
  last = op_name.rsplit("/", 1)[-1]
  if last.startswith("gather"):
    return "minibatch gathers"
  if "transpose(" in op_name or "jvp(" in op_name:
    return "gradients"
  return "other"


def _multipliers(bodies: dict[str, list[str]], entry: str | None) -> dict[str, int]:
  """How many times each computation runs per call of `entry`: while bodies × their known trip counts (1 where XLA
  does not know it), called computations × 1."""
  edges: dict[str, list[tuple[str, int]]] = {}
  for name, lines in bodies.items():
    for line in lines:
      trips = re.search(r'"known_trip_count":\{"n":"(\d+)"', line)
      for attr, callee in re.findall(r"\b(body|condition|calls|to_apply|true_computation|false_computation)=%([\w.\-]+)",
                                     line):
        n = int(trips.group(1)) if trips and attr in ("body", "condition") else 1
        edges.setdefault(name, []).append((callee, n))
      for group in re.findall(r"branch_computations=\{([^}]*)\}", line):
        edges.setdefault(name, []).extend((c.strip().lstrip("%"), 1) for c in group.split(","))
  times: dict[str, int] = {}

  def visit(name: str, count: int, depth: int = 0) -> None:
    times[name] = times.get(name, 0) + count
    if depth < 64:
      for callee, n in edges.get(name, []):
        visit(callee, count * n, depth + 1)

  if entry is not None:
    visit(entry, 1)
  return times
