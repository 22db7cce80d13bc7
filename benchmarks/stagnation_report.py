"""Tables and plots for the stagnation sweep (benchmarks/stagnation.py) from its per-config JSON results.

Writes PNGs into the results directory and replaces the block between the `generated` markers of docs/results.md
(the hand-written analysis around it is kept).
"""
from __future__ import annotations

import glob
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

BEGIN, END = "<!-- generated:begin (benchmarks/stagnation_report.py) -->", "<!-- generated:end -->"
RULES = ("recipe", "fixed_minibatches", "sqrt_lr")
FINAL_POINTS = 4  # the final return is the mean training return over the last 4 of the curve's points


def load(out_dir: str) -> list[dict]:
  runs = []
  for path in sorted(glob.glob(os.path.join(out_dir, "*.json"))):
    with open(path, encoding="utf-8") as f:
      runs.append(json.load(f))
  return runs


def series(run: dict, key: str) -> np.ndarray:
  """[points, seeds]."""
  return np.array([p[key] for p in run["points"]], dtype=float)


def late_noise_scale(run: dict) -> float:
  """B_simple over the second half of training as the ratio of the averaged tr Σ and |G|² estimates.

  Per-update |G|² estimates are noisy and can be ≤ 0, so (as McCandlish et al. advise) numerator and denominator are
  averaged separately before dividing.
  """
  half = len(run["points"]) // 2
  return float(np.nanmean(series(run, "grad_trace_cov")[half:]) / np.nanmean(series(run, "grad_sq_norm")[half:]))


def final_return(run: dict) -> np.ndarray:
  return series(run, "return")[-FINAL_POINTS:].mean(0)


def _curves(run_of: dict, base: int) -> dict:
  """(rule, N, ewma) -> run, with the base run (shared by all rules) under every rule."""
  out = dict(run_of)
  for rule in RULES:
    if ("recipe", base, False) in run_of:
      out.setdefault((rule, base, False), run_of["recipe", base, False])
  return out


def plot_returns(runs, base, path):
  fig, axes = plt.subplots(1, len(RULES), figsize=(15, 4), sharey=True)
  for ax, rule in zip(axes, RULES):
    for key, run in sorted(runs.items(), key=lambda kv: kv[0][1]):
      if key[0] != rule or key[2]:
        continue
      x, y = np.array(run["env_steps"]) / 1e6, series(run, "return")
      line, = ax.plot(x, y.mean(1), label=f"N={key[1]}")
      ax.fill_between(x, y.min(1), y.max(1), color=line.get_color(), alpha=0.2)
    ax.set_title(f"scaling.rule={rule} (base N={base})")
    ax.set_xlabel("env steps (M)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
  axes[0].set_ylabel("training episode return (mean of seeds; band = seed range)")
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def plot_diagnostics(runs, path):
  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  for rule, marker in zip(RULES, "osd"):
    keys = sorted(k for k in runs if k[0] == rule and not k[2])
    ns = [k[1] for k in keys]
    half = lambda run, key: np.nanmean(series(run, key)[len(run["points"]) // 2:])
    axes[0].plot(ns, [half(runs[k], "kl_mean") for k in keys], marker=marker, label=rule)
    b_simple = np.array([late_noise_scale(runs[k]) for k in keys])
    b_simple[b_simple <= 0] = np.nan  # an estimate with |G|² ≤ 0 is unresolved, not a scale: leave a gap
    axes[1].plot(ns, b_simple, marker=marker, label=rule)
    axes[2].plot(ns, [runs[k]["batch_size"] for k in keys] / b_simple, marker=marker, label=rule)
  for ax, title in zip(axes, ("KL(behaviour ‖ updated) per update", "gradient noise scale B_simple",
                              "batch size / B_simple (outer-loop signal)")):
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("num_envs N")
    ax.set_title(title + "\n(mean over the second half of training)", fontsize="small")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small")
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def plot_final(runs, path):
  fig, ax = plt.subplots(figsize=(7, 4))
  for rule, marker in zip(RULES, "osd"):
    keys = sorted(k for k in runs if k[0] == rule and not k[2])
    finals = [final_return(runs[k]) for k in keys]
    ns = [k[1] for k in keys]
    ax.errorbar(ns, [f.mean() for f in finals], yerr=[np.ptp(f) / 2 for f in finals], marker=marker, capsize=3,
                label=rule)
  keys = sorted(k for k in runs if k[2])
  if keys:
    finals = [final_return(runs[k]) for k in keys]
    ax.errorbar([k[1] for k in keys], [f.mean() for f in finals], yerr=[np.ptp(f) / 2 for f in finals], marker="*",
                capsize=3, linestyle="--", label="recipe + PPO-EWMA")
  ax.set_xscale("log", base=2)
  ax.set_xlabel("num_envs N (equal env-step budget)")
  ax.set_ylabel(f"final return (last {FINAL_POINTS} curve points)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize="small")
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def plot_ewma(runs, path):
  ns = sorted({k[1] for k in runs if k[2]})
  if not ns:
    return False
  fig, axes = plt.subplots(1, len(ns), figsize=(6 * len(ns), 4), squeeze=False)
  for ax, n in zip(axes[0], ns):
    for key, label in (((("recipe", n, False)), "PPO"), (("recipe", n, True), "PPO-EWMA")):
      if key in runs:
        x, y = np.array(runs[key]["env_steps"]) / 1e6, series(runs[key], "return")
        line, = ax.plot(x, y.mean(1), label=label)
        ax.fill_between(x, y.min(1), y.max(1), color=line.get_color(), alpha=0.2)
    ax.set_title(f"recipe, N={n}")
    ax.set_xlabel("env steps (M)")
    ax.set_ylabel("training episode return")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return True


def table(runs) -> str:
  lines = ["| rule | N | EWMA | minibatch | minibatches | lr | updates | final return (per seed) | mean | "
           "Δ last quarter | KL/update | KL q90 | B_simple | samples/KL | clip frac | run s |",
           "|" + " --- |" * 16]
  for key in sorted(runs, key=lambda k: (k[2], RULES.index(k[0]), k[1])):
    run = runs[key]
    ret = series(run, "return")
    q = len(ret) // 4
    late = lambda k: np.nanmean(series(run, k)[len(ret) // 2:])
    fin = final_return(run)
    lines.append(
        f"| {key[0]} | {key[1]} | {'yes' if key[2] else 'no'} | {run['minibatch_size']} | {run['num_minibatches']} | "
        f"{run['learning_rate']:.3g} | {run['num_updates']} | {', '.join(f'{v:.2f}' for v in fin)} | {fin.mean():.2f} | "
        f"{ret[-q:].mean() - ret[-2 * q:-q].mean():+.2f} | {late('kl_mean'):.2e} | {late('kl_quantile'):.2e} | "
        f"{late_noise_scale(run):.3g} | {run['batch_size'] / late('kl_mean'):.3g} | {late('clip_fraction'):.3f} | "
        f"{run['run_time']:.0f} |")
  return "\n".join(lines)


def write(out_dir: str, argv=None, results_md: str = "docs/results.md") -> None:
  loaded = load(out_dir)
  if not loaded:
    print(f"no results in {out_dir}")
    return
  base = min(r["num_envs"] for r in loaded)
  own = {(r["rule"], r["num_envs"], r["ewma"]): r for r in loaded}
  runs = _curves(own, base)
  plot_returns(runs, base, os.path.join(out_dir, "returns_vs_steps.png"))
  plot_diagnostics(runs, os.path.join(out_dir, "kl_and_noise_vs_n.png"))
  plot_final(runs, os.path.join(out_dir, "final_return_per_rule.png"))
  has_ewma = plot_ewma(runs, os.path.join(out_dir, "ewma.png"))
  rel = os.path.relpath(out_dir, os.path.dirname(results_md))
  block = [BEGIN, "", f"Base run N={base} (shared by all rules). Columns: final return = mean training-episode return "
           f"over the last {FINAL_POINTS} of {len(loaded[0]['points'])} curve points, per seed; Δ last quarter = "
           "mean return of the last quarter of the budget minus the quarter before (≈ 0: a plateau); KL and clip "
           "fraction are means over the second half of training, samples/KL = batch size / that mean KL; B_simple there is mean tr Σ / mean |G|² "
           "over the same updates (negative or missing when the |G|² estimate is ≤ 0: see the analysis).", "",
           table(own), "",
           f"![returns]({rel}/returns_vs_steps.png)", "", f"![diagnostics]({rel}/kl_and_noise_vs_n.png)", "",
           f"![final]({rel}/final_return_per_rule.png)", ""]
  if has_ewma:
    block += [f"![ewma]({rel}/ewma.png)", ""]
  block.append(END)
  text = ""
  if os.path.exists(results_md):
    with open(results_md, encoding="utf-8") as f:
      text = f.read()
  if BEGIN in text and END in text:
    text = text[:text.index(BEGIN)] + "\n".join(block) + text[text.index(END) + len(END):]
  else:
    text += "\n" + "\n".join(block) + "\n"
  with open(results_md, "w", encoding="utf-8") as f:
    f.write(text)
  print(f"wrote {results_md} and plots in {out_dir}")
