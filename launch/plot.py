"""Compare runs' learning curves and outer-loop diagnostics (the plotting itself: launch/report/plots.py).

  python -m launch.plot --out=curves.png DIR1 DIR2 ...     # also curves_diagnostics.png (--diagnostics_out=...)
In the diagnostics figure, runs whose saved configs differ only in `seed` (and in keys that do not change the
trajectory: logging, placement) are drawn as one: the seeds' mean, and their range as a band. A last row cut short
(a run writing it now, or killed while writing it) is left out. The libraries' warnings are shown with -v.
Exit codes: 0 done; 2 bad arguments, a directory without metrics.jsonl, a malformed line in one (the message names
its number), an output folder that does not exist.
"""
from __future__ import annotations

import os
import sys

from etils import epath

from launch.files import workdir as workdir_lib
from launch.report import cli, console, metrics_file

USAGE = "usage: python -m launch.plot [--out=FILE.png] [--diagnostics_out=FILE.png] [-v] WORKDIR [WORKDIR ...]"


def _check_inputs(dirs: list[str], outs: dict[str, str]) -> None:
  """One line and exit 2 for what would fail inside the plotting: a missing run or metrics file, a missing folder."""
  for path in dirs + list(outs.values()):
    try:
      workdir_lib.check_client(path)
    except workdir_lib.MissingClientError as e:
      cli.fail(str(e))
  for d in dirs:
    if not epath.Path(d).is_dir():
      cli.fail(f"{d}: no such directory (pass runs' workdirs)")
    if not epath.Path(d, "metrics.jsonl").exists():
      cli.fail(f"{d}: no metrics.jsonl (not a run's workdir, or a run that has not written a metrics row yet)")
  for flag, out in outs.items():
    folder = os.path.dirname(out)
    if folder and not epath.Path(folder).is_dir():
      cli.fail(f"{flag}={out}: the folder {folder} does not exist; create it first")


def main(argv: list[str]) -> None:
  out, diagnostics_out, verbose = "learning_curves.png", None, False
  dirs = []
  args = list(argv)
  while args:
    a = args.pop(0)
    if a.startswith("--out="):
      out = a.split("=", 1)[1]
    elif a.startswith("--diagnostics_out="):
      diagnostics_out = a.split("=", 1)[1]
    elif a in ("-v", "--verbosity") or a.startswith(("-v=", "--verbosity=")):
      verbose = True
      if "=" not in a and args and args[0].lstrip("-").isdigit():
        args.pop(0)  # absl's form: -v 1
    elif a.startswith("-"):
      cli.fail(f"unknown flag {a}; {USAGE}")
    else:
      dirs.append(a)
  if not dirs:
    cli.fail(USAGE)
  dirs = [workdir_lib.expand(d) for d in dirs]
  out = workdir_lib.expand(out)
  diagnostics_out = workdir_lib.expand(diagnostics_out or os.path.splitext(out)[0] + "_diagnostics.png")
  _check_inputs(dirs, {"--out": out, "--diagnostics_out": diagnostics_out})
  console.configure_logging(verbose=verbose)
  from launch.report import plots  # pylint: disable=import-outside-toplevel  (matplotlib: after the checks)
  try:
    print(plots.plot_runs(dirs, out))
    print(plots.plot_diagnostics(dirs, diagnostics_out))
  except metrics_file.MetricsFileError as e:
    cli.fail(f"{e}; fix or delete that line")


if __name__ == "__main__":
  main(sys.argv[1:])
