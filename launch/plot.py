"""Learning-curve plots from metrics.jsonl: training and evaluation return against env steps.

The trainer writes DIR/learning_curve.png at the end of a run; to compare runs:
  python -m launch.plot --out=curves.png DIR1 DIR2 ...
"""
from __future__ import annotations

import io
import os
import sys

import matplotlib
from etils import epath

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position

from launch.sinks import read_jsonl  # pylint: disable=wrong-import-position


def plot_runs(workdirs: list[str], out_path: str) -> str:
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for workdir in workdirs:
    rows = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    label = os.path.basename(os.path.normpath(workdir))
    for ax, key in zip(axes, ("episode_return", "eval_return")):
      pts = [(r["env_steps"], r[key]) for r in rows if r.get(key) is not None]
      if pts:
        ax.plot(*zip(*pts), marker="." if key == "eval_return" else None, label=label)
  for ax, title in zip(axes, ("training episode return", "deterministic evaluation return")):
    ax.set_xlabel("env steps")
    ax.set_ylabel("return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.lines:
      ax.legend(fontsize="small")
  fig.tight_layout()
  png = io.BytesIO()
  fig.savefig(png, format="png", dpi=100)
  plt.close(fig)
  epath.Path(out_path).write_bytes(png.getvalue())  # local or remote (gs://...)
  return out_path


def main(argv: list[str]) -> None:
  out = "learning_curves.png"
  dirs = []
  for a in argv:
    if a.startswith("--out="):
      out = a.split("=", 1)[1]
    else:
      dirs.append(a)
  if not dirs:
    sys.exit("usage: python -m launch.plot [--out=FILE.png] WORKDIR [WORKDIR ...]")
  print(plot_runs(dirs, out))


if __name__ == "__main__":
  main(sys.argv[1:])
