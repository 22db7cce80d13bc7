"""One prepared check for an accelerator machine: correctness, resume, throughput, memory, in one command.

  python -m benchmarks.accelerator_check --out_dir=DIR          # on whatever devices JAX sees (≤ 8 min on one GPU)
  bash scripts/accelerator_check.sh --out_dir=DIR               # the same, after installing .whl/ offline
  python -m benchmarks.accelerator_check --cpu_smoke --out_dir=DIR   # tiny sizes on CPU (CI)

Sections, each recorded even if another fails (DIR/accelerator_check.json is rewritten after each one, so a run cut
short keeps what it measured; DIR/accelerator_check.md is the table):
  memory       the compiled update's memory per device (launch/run/memory.py) for the reference config at
               --memory_envs (1,048,576) envs, and the default Kinetix config's when kinetix-env is importable;
               compile-only, nothing allocated
  correctness  --correctness_updates updates of the reference config on the devices == the same run on CPU in a
               subprocess (JAX_PLATFORMS=cpu, PPO_PORTABLE=1: the CPU runs the accelerators' code), per-update
               losses, entropy, KL and param norm within --rtol
  resume       a short run through the trainer's checkpointing, its last checkpoint removed and rerun on the
               devices: every metrics row == the uninterrupted run's
  determinism  the reference config (and, beside --cpu_smoke, entity observations on cue_entities) built and run
               twice on the devices, each its own compile: params and metrics bit for bit equal (the GPU's
               xla_gpu_deterministic_ops and the accelerator forms, learner/code_path.py); and the update's time with
               XLA's default options beside it (the option's cost)
  throughput   ours vs the naive PPO (benchmarks/throughput.py's functions: compile excluded, median of
               --repeats) at --num_envs, with compile times, peak host RSS and peak device memory
  kinetix      the default Kinetix config's SPS (compile excluded, median of --repeats), if kinetix-env imports
  overlap      pipeline.mode overlap vs sync through the trainer, when there are ≥ 2 devices
"""
from __future__ import annotations

import datetime
import importlib.util
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

import jax
from absl import app, flags, logging

from benchmarks import throughput
from launch.run import memory, programs, trainer
from launch.report.metrics_file import read_jsonl
from learner import code_path

FLAGS = flags.FLAGS
# --num_envs, --repeats, --impls and --naive_max_envs are benchmarks/throughput.py's flags.
throughput.define_flags()
FLAGS.set_default("num_envs", ["2048", "65536", "1048576"])
FLAGS.set_default("naive_max_envs", 1048576)
flags.DEFINE_string("out_dir", "runs/accelerator_check", "Where accelerator_check.json and .md are written.")
flags.DEFINE_bool("cpu_smoke", False, "Tiny sizes on CPU, to keep the check from rotting (CI runs it).")
flags.DEFINE_list("sections", ["memory", "correctness", "resume", "determinism", "throughput", "kinetix",
                               "overlap"],
                  "Sections to run, in this order.")
flags.DEFINE_integer("memory_envs", 1048576, "num_envs of the reference config whose compiled memory is reported.")
flags.DEFINE_integer("correctness_envs", 2048, "num_envs of the correctness run.")
flags.DEFINE_integer("correctness_updates", 4, "Updates compared against the CPU reference (4 = --repeats + 1: the "
                     "throughput run's config, so that a persistent compilation cache serves both).")
flags.DEFINE_float("rtol", 1e-2, "Relative tolerance of the per-update metrics against the CPU reference (float order "
                   "and the device's matmul precision differ; a sampled action can flip).")
flags.DEFINE_string("matmul_precision", "", "If set (e.g. highest), jax_default_matmul_precision for the whole check; "
                    "default: JAX's (on recent GPUs float32 products may then run as TF32).")
flags.DEFINE_string("reference_out", None, "Internal: compute the correctness run here and write its metrics.")

COMPARED = ("policy_loss", "value_loss", "entropy", "approx_kl", "param_norm")
TIMING = ("wall_time", "sps", "compile_time", "first_update_time")
# Smoke sizes reuse programs: with a persistent compilation cache (JAX_COMPILATION_CACHE_DIR, as the CI test sets),
# the memory, correctness, resume and throughput sections compile one update between them.
SMOKE = {"num_envs": [64], "memory_envs": 64, "correctness_envs": 64, "repeats": 3}


def _sizes() -> dict:
  if FLAGS.cpu_smoke:
    return dict(SMOKE)
  return {"num_envs": [int(n) for n in FLAGS.num_envs], "memory_envs": FLAGS.memory_envs,
          "correctness_envs": FLAGS.correctness_envs, "repeats": FLAGS.repeats}


def _metrics_rows(num_envs: int, num_updates: int) -> list[dict]:
  """Per-update metrics of the reference config's first updates, on this process's devices."""
  config = throughput.reference_config(num_envs, num_updates)
  progs = programs.build(config, eval_episodes=0)
  state, rows = progs.init(jax.random.PRNGKey(config.seed)), []
  for _ in range(num_updates):
    state, metrics = progs.update(state)
    rows.append({k: float(getattr(metrics, k)) for k in COMPARED})
  return rows


# ---- sections ----

def memory_section(sizes) -> dict:
  out = {}
  t0 = time.perf_counter()
  progs = programs.build(throughput.reference_config(sizes["memory_envs"], sizes["repeats"] + 1), eval_episodes=0)
  out["reference"] = dict(memory.analyse(progs).as_dict(), num_envs=sizes["memory_envs"],
                          num_steps=throughput.NUM_STEPS, compile_s=time.perf_counter() - t0)
  del progs
  if importlib.util.find_spec("kinetix") is not None:
    from launch.configs import kinetix  # pylint: disable=import-outside-toplevel
    t0 = time.perf_counter()
    progs = programs.build(kinetix.get_config(), eval_episodes=0)
    out["kinetix"] = dict(memory.analyse(progs).as_dict(), compile_s=time.perf_counter() - t0)
  else:
    out["kinetix"] = "kinetix-env not importable"
  return out


def correctness_section(sizes) -> dict:
  n, k = sizes["correctness_envs"], FLAGS.correctness_updates
  t0 = time.perf_counter()
  ours = _metrics_rows(n, k)
  device_s = time.perf_counter() - t0
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "reference.json")
    xla = [f for f in os.environ.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join(xla), **{code_path.ENV_VAR: "1"})  # 1 device
    proc = subprocess.run([sys.executable, "-m", "benchmarks.accelerator_check", f"--reference_out={path}",
                           f"--correctness_envs={n}", f"--correctness_updates={k}"],
                          env=env, capture_output=True, text=True, timeout=600, check=False,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if proc.returncode:
      raise RuntimeError(f"CPU reference failed: {proc.stderr[-2000:]}")
    with open(path, encoding="utf-8") as f:
      reference = json.load(f)
  rel = {key: max(abs(a[key] - b[key]) / max(abs(b[key]), 1e-6) for a, b in zip(ours, reference))
         for key in COMPARED}
  return {"num_envs": n, "updates": k, "rtol": FLAGS.rtol, "max_rel_diff": rel,
          "passed": all(v <= FLAGS.rtol for v in rel.values()), "device": ours, "cpu_reference": reference,
          "device_s": device_s}


def resume_section(sizes) -> dict:
  config = throughput.reference_config(sizes["correctness_envs"], 4)  # 4 updates, checkpoints at 2 and 4
  config.log_every, config.eval_every, config.checkpoint_every, config.eval_episodes = 1, 2, 2, 8
  with tempfile.TemporaryDirectory() as workdir:
    trainer.train_and_evaluate(config, workdir)
    full = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    shutil.rmtree(os.path.join(workdir, "checkpoints", "4"))
    trainer.train_and_evaluate(config, workdir)
    resumed = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING} for r in rows]
  differing = sorted({k for a, b in zip(strip(full), strip(resumed)) for k in a if a.get(k) != b.get(k)})
  return {"updates": len(full), "resumed_after": 2, "passed": strip(full) == strip(resumed) and len(full) == 4,
          "differing_keys": differing}


def determinism_section(sizes) -> dict:
  import hashlib  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  variants = {"reference": {}}
  if not FLAGS.cpu_smoke:
    variants["entity"] = {"env_name": "cue_entities", "network.kind": "entity"}
  out = {}
  for name, overrides in variants.items():
    config = throughput.reference_config(sizes["correctness_envs"], 3)
    config.update_from_flattened_dict(overrides)
    runs = []
    for options in (None, None, {}):  # this backend's options twice (two compiles), then XLA's defaults
      progs = programs.build(config, eval_episodes=0, compiler_options=options)
      state, digest, times = progs.init(jax.random.PRNGKey(config.seed)), hashlib.sha256(), []
      for _ in range(3):
        t0 = time.perf_counter()
        state, metrics = progs.update(state)
        jax.block_until_ready(state)
        times.append(time.perf_counter() - t0)
        for leaf in jax.tree.leaves(jax.device_get((state.params, metrics))):
          digest.update(np.asarray(leaf).tobytes())
      runs.append({"digest": digest.hexdigest()[:16], "update_s": times[1:]})
      del progs, state
    out[name] = {"num_envs": sizes["correctness_envs"], "passed": runs[0]["digest"] == runs[1]["digest"],
                 "digests": [r["digest"] for r in runs[:2]], "update_s": runs[0]["update_s"],
                 "xla_defaults_update_s": runs[2]["update_s"]}
  out["passed"] = all(v["passed"] for v in out.values())
  return out


def throughput_section(sizes) -> dict:
  ceiling = throughput.matmul_gflops()
  rows = []
  for n in sizes["num_envs"]:
    impls = [i for i in FLAGS.impls if i != "naive" or n <= FLAGS.naive_max_envs]
    try:
      measured = throughput.measure(n, impls, sizes["repeats"], ceiling)
    except Exception as e:  # pylint: disable=broad-except  (e.g. the naive PPO out of device memory)
      logging.warning("throughput at %d envs: %s; retrying ours alone", n, e)
      measured = throughput.measure(n, ["ours"], sizes["repeats"], ceiling)
      measured[0]["naive_error"] = str(e)[:300]
    by_impl = {r["impl"]: r for r in measured}
    if "naive" in by_impl:
      by_impl["ours"]["ratio_vs_naive"] = by_impl["ours"]["sps"] / by_impl["naive"]["sps"]
    peak = _device_peak_bytes()
    for r in measured:
      r["device_peak_bytes_so_far"] = peak
    rows += measured
    _log(f"throughput {n}: " + ", ".join(f"{r['impl']} {r['sps'] / 1e6:.3f}M SPS" for r in measured))
  return {"matmul_gflops": ceiling, "rows": rows}


def kinetix_section(sizes) -> dict:
  if importlib.util.find_spec("kinetix") is None:
    return {"skipped": "kinetix-env not importable"}
  from launch.configs import kinetix  # pylint: disable=import-outside-toplevel
  config = kinetix.get_config()
  repeats = sizes["repeats"]
  config.total_env_steps = config.num_envs * config.num_steps * (repeats + 1)
  progs = programs.build(config, eval_episodes=0)
  state = progs.init(jax.random.PRNGKey(0))
  times = []
  for i in range(repeats + 1):
    t = time.perf_counter()
    state, metrics = progs.update(state)
    jax.block_until_ready(metrics)
    if i:
      times.append(time.perf_counter() - t)
  return {"env_name": config.env_name, "num_envs": config.num_envs, "num_steps": config.num_steps,
          "sps": config.num_envs * config.num_steps / statistics.median(times), "update_s": times,
          "compile_s": progs.compile_time}


def overlap_section(sizes) -> dict:
  devices = jax.device_count()
  if devices < 2:
    return {"skipped": f"{devices} device: overlap needs an actor and a learner device"}
  n = sizes["num_envs"][0]
  sps = {}
  for mode in ("sync", "overlap"):
    config = throughput.reference_config(n, 8)
    config.pipeline.mode, config.pipeline.max_policy_lag = mode, 1
    config.pipeline.actor_devices = devices // 2
    config.log_every, config.eval_every, config.eval_episodes = 2, 10**6, 8
    with tempfile.TemporaryDirectory() as workdir:
      trainer.train_and_evaluate(config, workdir)
      rows = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    sps[mode] = statistics.median(r["sps"] for r in rows[1:-1] or rows)
  return {"num_envs": n, "actor_devices": devices // 2, "sync_sps": sps["sync"], "overlap_sps": sps["overlap"],
          "ratio": sps["overlap"] / sps["sync"]}


SECTIONS = {"memory": memory_section, "correctness": correctness_section, "resume": resume_section,
            "determinism": determinism_section, "throughput": throughput_section, "kinetix": kinetix_section, "overlap": overlap_section}


def _device_peak_bytes():
  try:
    stats = jax.local_devices()[0].memory_stats()
  except Exception:  # pylint: disable=broad-except
    stats = None
  return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def _log(msg: str):
  print(f"[accelerator_check] {msg}", flush=True)


def _meta() -> dict:
  devices = jax.devices()
  return {"date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "host": socket.gethostname(), "platform": platform.platform(), "python": platform.python_version(),
          "jax": jax.__version__, "backend": jax.default_backend(), "device_count": len(devices),
          "device_kind": devices[0].device_kind, "code_path": code_path.describe(), "cpu_count": os.cpu_count(),
          "load_average": os.getloadavg()[0], "cpu_smoke": FLAGS.cpu_smoke,
          "matmul_precision": FLAGS.matmul_precision or "default"}


def _gib(n) -> str:
  return "n/a" if n is None else f"{n / 2**30:.2f} GiB"


def markdown(result: dict) -> str:
  meta = result["meta"]
  lines = [f"Accelerator check, {meta['date_utc']}: {meta['device_count']} × {meta['device_kind']} "
           f"({meta['backend']}, jax {meta['jax']}, code path {meta['code_path']}, host {meta['host']}, "
           f"load {meta['load_average']:.1f})", "", "| section | result |", "| --- | --- |"]
  for name in result["sections"]:
    if name not in result:  # not run yet
      continue
    sec = result[name]
    if "error" in sec:
      lines.append(f"| {name} | error: {sec['error'].splitlines()[-1][:200]} |")
      continue
    if name == "memory":
      ref = sec["reference"]
      update = ref["programs"].get("update", {})
      lines.append(f"| memory, reference config at {ref['num_envs']:,} × {ref['num_steps']} | update "
                   f"{_gib(update.get('needed'))} per device (arguments {_gib(update.get('argument'))}, "
                   f"temporaries {_gib(update.get('temp'))}, code {_gib(update.get('code'))}); limit "
                   f"{_gib(ref['limit_bytes'])} ({ref['limit_source']}); fits: {ref['fits']}; "
                   f"compiled in {ref['compile_s']:.1f} s |")
      kin = sec["kinetix"]
      lines.append(f"| memory, default Kinetix config | "
                   f"{kin if isinstance(kin, str) else _gib(kin['needed_bytes']) + ' per device'} |")
    elif name == "correctness":
      diffs = ", ".join(f"{k} {v:.1e}" for k, v in sec["max_rel_diff"].items())
      lines.append(f"| correctness: {sec['updates']} updates at {sec['num_envs']:,} envs vs CPU (portable) | "
                   f"{'passed' if sec['passed'] else 'FAILED'} (rtol {sec['rtol']}; max relative diffs: {diffs}) |")
    elif name == "resume":
      lines.append(f"| exact resume through checkpoints | {'passed' if sec['passed'] else 'FAILED'}"
                   f"{'' if sec['passed'] else ' (differing: ' + ', '.join(sec['differing_keys']) + ')'} |")
    elif name == "determinism":
      for variant, v in ((k, v) for k, v in sec.items() if k != "passed"):
        lines.append(f"| determinism, {variant} at {v['num_envs']:,} envs: two compiles, bit for bit | "
                     f"{'passed' if v['passed'] else 'FAILED'} (update {statistics.median(v['update_s']):.4f} s; "
                     f"with XLA's default options {statistics.median(v['xla_defaults_update_s']):.4f} s) |")
    elif name == "throughput":
      for r in sec["rows"]:
        ratio = f", {r['ratio_vs_naive']:.2f}× naive" if "ratio_vs_naive" in r else ""
        lines.append(f"| throughput {r['impl']} at {r['num_envs']:,} envs | {r['sps'] / 1e6:.3f}M SPS{ratio} "
                     f"(median of {len(r['update_s'])}: {r['update_s']} s; compile {r['compile_s']:.1f} s; peak "
                     f"RSS {r['peak_rss_gb']:.2f} GB; device peak so far {_gib(r['device_peak_bytes_so_far'])}) |")
    elif name == "kinetix":
      text = sec.get("skipped") or f"{sec['sps']:,.0f} SPS ({sec['env_name']}, {sec['num_envs']:,} envs)"
      lines.append(f"| Kinetix default config | {text} |")
    elif name == "overlap":
      text = sec.get("skipped") or (f"{sec['ratio']:.2f}× (sync {sec['sync_sps']:,.0f}, overlap "
                                    f"{sec['overlap_sps']:,.0f} SPS at {sec['num_envs']:,} envs)")
      lines.append(f"| overlap vs sync | {text} |")
  return "\n".join(lines) + "\n"


def _write(result: dict, out_dir: str):
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "accelerator_check.json"), "w", encoding="utf-8") as f:
    json.dump(result, f, indent=2, default=str)
  with open(os.path.join(out_dir, "accelerator_check.md"), "w", encoding="utf-8") as f:
    f.write(markdown(result))


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  if FLAGS.matmul_precision:
    jax.config.update("jax_default_matmul_precision", FLAGS.matmul_precision)
  if FLAGS.reference_out:  # the CPU reference of the correctness section
    rows = _metrics_rows(FLAGS.correctness_envs, FLAGS.correctness_updates)
    with open(FLAGS.reference_out, "w", encoding="utf-8") as f:
      json.dump(rows, f)
    return
  sizes = _sizes()
  result = {"meta": _meta(), "sizes": sizes, "sections": list(FLAGS.sections)}
  _log(f"{result['meta']}")
  start = time.perf_counter()
  for name in FLAGS.sections:
    t0 = time.perf_counter()
    try:
      result[name] = SECTIONS[name](sizes)
    except Exception:  # pylint: disable=broad-except  (record it; the other sections still run)
      result[name] = {"error": traceback.format_exc()}
    result[name + "_s"] = time.perf_counter() - t0
    _log(f"{name} done in {result[name + '_s']:.1f} s: {json.dumps(result[name], default=str)[:600]}")
    _write(result, FLAGS.out_dir)
  result["total_s"] = time.perf_counter() - start
  result["passed"] = all("error" not in result[k] and result[k].get("passed", True) for k in FLAGS.sections)
  _write(result, FLAGS.out_dir)
  print(markdown(result), flush=True)
  _log(f"wrote {FLAGS.out_dir}/accelerator_check.json and .md in {result['total_s']:.0f} s")


if __name__ == "__main__":
  app.run(main)
