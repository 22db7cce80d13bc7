"""Compare runs' learning curves and outer-loop diagnostics (the plotting itself: launch/report/plots.py).

  python -m launch.plot --out=curves.png DIR1 DIR2 ...     # also curves_diagnostics.png (--diagnostics_out=...)
In the diagnostics figure, runs whose saved configs differ only in `seed` (and in keys that do not change the
trajectory: logging, placement) are drawn as one: the seeds' mean, and their range as a band.
"""
from __future__ import annotations

import os
import sys

from launch.report import plots


def main(argv: list[str]) -> None:
  out, diagnostics_out = "learning_curves.png", None
  dirs = []
  for a in argv:
    if a.startswith("--out="):
      out = a.split("=", 1)[1]
    elif a.startswith("--diagnostics_out="):
      diagnostics_out = a.split("=", 1)[1]
    else:
      dirs.append(a)
  if not dirs:
    sys.exit("usage: python -m launch.plot [--out=FILE.png] [--diagnostics_out=FILE.png] WORKDIR [WORKDIR ...]")
  print(plots.plot_runs(dirs, out))
  print(plots.plot_diagnostics(dirs, diagnostics_out or os.path.splitext(out)[0] + "_diagnostics.png"))


if __name__ == "__main__":
  main(sys.argv[1:])
