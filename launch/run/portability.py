"""Every program a run builds, lowered for GPU and TPU on a machine without them, and checked for ops those platforms
run non-deterministically or cannot run.

  python -m launch.train --dry_run --dry_run_platforms=cuda,tpu [--config=...]   # 8 CPU devices stand for the mesh

The programs are those launch/run/programs.build makes for the config (init, the fused update or the pipeline's
stages, SFL's re-scoring, evaluation, solve rates, the runner's resize), traced with the accelerators' forms
(learner/code_path.accelerator) on the config's mesh with their real shardings, then exported per platform by
`jax.export` (its cross-platform lowering: no device of that platform is needed). Each StableHLO module is scanned:

  flagged (exit 1)
    a host callback or CPU kernel    (a custom call named for the CPU or a Python callback) most fail to lower at all
    a float scatter-add in this      cuda, rocm: XLA:GPU sums colliding indices with atomics, so the order (and the
      project's code (or no place)   sum) varies from run to run; this project's forms avoid them (learner/code_path.py)
  listed as notes
    a float scatter-add in an env    cuda, rocm: Brax's and jax2d's physics; xla_gpu_deterministic_ops (the GPU's
      library's code                 compile option, launch/run/xla_options.py) makes them deterministic, at a cost
    a scatter-set, indices not       cuda, rocm: which of two colliding writes wins varies; a vmapped `x.at[i].set(v)`
      marked unique                  is one, whose batch elements write disjoint rows and never collide
A program that does not lower is reported with the lowering's error. Where an op comes from is its innermost
caller outside JAX, Flax and Optax in the module's debug locations. TPUs have no atomics (XLA:TPU serializes
scatters), so nothing is flagged there for scatters. Exit 0 only when every program lowers for every platform and
nothing is flagged.
"""
from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence

import jax
import ml_collections

from launch.config import resolve as config_lib
from learner import code_path

PLATFORMS = ("cuda", "rocm", "tpu")
_GPUS = ("cuda", "rocm")
_HOST_TARGET = re.compile(r"(cpu|lapack|ducc|python|callback)", re.IGNORECASE)
_OP = re.compile(r'(?<![#\w.])"?stablehlo\.(scatter|custom_call)"?(?=[\s(@])')
_FLOAT = re.compile(r"tensor<[0-9x?]*(f16|bf16|f32|f64|complex<f32>|complex<f64>)>")


@dataclasses.dataclass(frozen=True)
class Lowering:
  """One program for one platform: whether it lowered (else `error`), and what the scan flagged."""
  program: str
  platform: str
  lowered: bool
  flags: tuple[str, ...] = ()
  error: str | None = None
  notes: tuple[str, ...] = ()  # what the GPU's deterministic-ops option covers (env libraries' scatters)

  @property
  def ok(self) -> bool:
    return self.lowered and not self.flags

  def line(self) -> str:
    if not self.lowered:
      return f"{self.program:<16} {self.platform:<5} did not lower: {self.error}"
    return (f"{self.program:<16} {self.platform:<5} lowered" +
            (f"; FLAGGED: {'; '.join(self.flags)}" if self.flags else ", nothing flagged") +
            (f" (note: {'; '.join(self.notes)})" if self.notes else ""))


def check_platforms(platforms: Sequence[str]) -> list[str]:
  """The platforms, validated: ConfigError (exit 2) naming --dry_run_platforms for an unknown or CPU one."""
  out = [p.strip().lower() for p in platforms if p.strip()]
  bad = [p for p in out if p not in PLATFORMS]
  if bad or not out:
    raise config_lib.ConfigError(f"--dry_run_platforms={','.join(platforms)}: each must be one of "
                                 f"{', '.join(PLATFORMS)} (this machine's own platform is what --dry_run compiles for)")
  return out


def record(config: ml_collections.ConfigDict) -> dict[str, tuple]:
  """name -> (jitted function, abstract arguments) for every program `config` builds, with the accelerators' forms,
  on the mesh of this process's devices. Nothing is compiled."""
  from launch.run import programs  # pylint: disable=import-outside-toplevel  (programs imports the world)
  recorded = {}

  def aot(name, jitted, *args):
    recorded[name] = (jitted, args)
    return jitted

  resolved = config_lib.resolve(config, num_devices=jax.device_count(), planning=True,
                                num_processes=jax.process_count())
  with code_path.accelerator():
    programs.build(config, resolved=resolved, aot=aot)
  return recorded


def lower(name: str, jitted, args: tuple, platform: str) -> Lowering:
  """`jitted(*args)` exported for `platform` and scanned."""
  from jax import export  # pylint: disable=import-outside-toplevel
  try:
    with code_path.accelerator():
      text = export.export(jitted, platforms=[platform])(*args).mlir_module()
  except Exception as e:  # pylint: disable=broad-except  (any lowering failure is the finding)
    message = " ".join(str(e).split())
    return Lowering(name, platform, False, error=(message[:300] + " ...") if len(message) > 300 else message)
  findings = _findings(text, platform)  # the module scanned once for both lists
  return Lowering(name, platform, True, flags=tuple(scan(text, platform, findings)),
                  notes=tuple(notes(text, platform, findings)))


def scan(text: str, platform: str, findings: list | None = None) -> list[str]:
  """What `platform` would run non-deterministically or not at all in the StableHLO module `text` (with its debug
  locations), one string per kind and place with its count: host callbacks and CPU kernels; on GPUs, float
  scatter-adds in this project's code (or at no known place)."""
  found: dict[str, int] = {}
  for kind, where, blocking in findings if findings is not None else _findings(text, platform):
    if blocking:
      found[f"{kind} at {where}"] = found.get(f"{kind} at {where}", 0) + 1
  return [f"{kind} x{count}" for kind, count in found.items()]


def notes(text: str, platform: str, findings: list | None = None) -> list[str]:
  """What `scan` leaves to the GPU's deterministic-ops option, counted per kind and package: float scatter-adds in an
  env library's code (Brax's, jax2d's physics), and scatter-sets whose indices are not marked unique (a vmapped
  `x.at[i].set(v)` becomes one; each batch element then writes its own row, so they do not collide)."""
  found: dict[str, dict[str, int]] = {}
  for kind, where, blocking in findings if findings is not None else _findings(text, platform):
    if not blocking:
      package = where.split("/", 1)[0] if "/" in where else where
      found.setdefault(kind, {})[package] = found.setdefault(kind, {}).get(package, 0) + 1
  return [f"{kind}: " + ", ".join(f"{package} x{n}" for package, n in sorted(by.items()))
          for kind, by in found.items()]


_ADD = "float scatter-add (XLA:GPU: atomics, the order varies run to run)"
_SET = "scatter-set with indices not marked unique"


def _findings(text: str, platform: str) -> list[tuple[str, str, bool]]:
  """(kind, where, blocking) per op found."""
  out = []
  locations = dict(re.findall(r"^(#loc\d+) = loc\((.*)\)$", text, re.M))
  for match in _OP.finditer(text):
    end = text.find("\n", match.end())
    if match.group(1) == "custom_call":
      line = text[match.start():end]
      target = re.search(r'@([\w.]+)|call_target_name = "([^"]+)"', line)
      name = (target.group(1) or target.group(2)) if target else "?"
      if _HOST_TARGET.search(name):
        out.append((f"custom call {name} (a host callback or CPU kernel)", "the program", True))
      continue
    if platform not in _GPUS:
      continue
    body_end = text.find("})", match.end())  # the scatter's update computation, then its signature and location
    sig_end = text.find("\n", body_end)
    body, head, signature = text[end:body_end], text[match.start():end], text[body_end:sig_end]
    operand = signature.split("(", 1)[1].split(",", 1)[0] if "(" in signature else ""
    ref = re.findall(r"loc\((#loc\d+)\)", signature)
    where, ours = _caller(ref[-1] if ref else "", locations)
    if re.search(r"stablehlo\.(add|multiply|subtract)", body) and _FLOAT.search(operand):
      out.append((_ADD if ours else "float scatter-add in env code, made deterministic by xla_gpu_deterministic_ops",
                  where, ours))
    elif "unique_indices = true" not in head and _returns_update(body):
      out.append((_SET, where, False))
  return out


_LIBRARIES = ("/jax/", "/jaxlib/", "/flax/", "/optax/", "/jaxtyping/")
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _caller(ref: str, locations: dict[str, str]) -> tuple[str, bool]:
  """The innermost frame outside JAX, Flax and Optax of the location `ref` as "path:line", and whether it is this
  project's code (not an installed package)."""
  frames: list[tuple[str, str]] = []

  def expand(r: str, depth: int = 0) -> None:
    for file, line, nested in re.findall(r'"([^"]+)":(\d+)|(#loc\d+)', locations.get(r, "")):
      if nested and depth < 64:
        expand(nested, depth + 1)
      elif file:
        frames.append((file, line))

  expand(ref)
  for file, line in frames:
    if not any(lib in file for lib in _LIBRARIES):
      ours = file.startswith(_ROOT + os.sep) and "site-packages" not in file
      return f"{os.path.relpath(file, _ROOT) if ours else _package(file)}:{line}", ours
  return "an unknown place", True


def _package(file: str) -> str:
  """`.../site-packages/brax/generalized/x.py` -> `brax/generalized/x.py`."""
  return file.split("site-packages/", 1)[1] if "site-packages/" in file else file


def _returns_update(body: str) -> bool:
  """The update computation returns its second argument unchanged (a scatter-set)."""
  args = re.findall(r"(%arg\d+): tensor", body)
  ret = re.search(r"stablehlo\.return (%arg\d+)", body)
  return bool(ret and len(args) >= 2 and ret.group(1) == args[-1])


def check(config: ml_collections.ConfigDict, platforms: Sequence[str]) -> list[Lowering]:
  """Every program of `config`, lowered for every platform."""
  return [lower(name, jitted, args, platform) for name, (jitted, args) in record(config).items()
          for platform in platforms]
