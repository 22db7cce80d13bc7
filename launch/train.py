"""Entry point: parses flags and the ml_collections config, then trains.

  python -m launch.train --workdir=DIR [--config=launch/configs/NAME.py[:ARG]] [--config.KEY=VALUE ...]
  python -m launch.train --workdir=DIR --dry_run ...   # print the resolved config, code path and compiled
                                                       # programs' memory per device as JSON, and exit
  python -m launch.train --dry_run --dry_run_platforms=cuda,tpu ...   # also lower every program for GPU and TPU
                                                       # (launch/run/portability.py); exit 1 if one fails or is flagged
  python -m launch.train --describe_config [--config=...]   # every key: value, type, doc, rule, resume policy

Exit codes (each non-zero exit ends with one line saying what happened and what to do):
  0    done.
  1    with --dry_run_platforms: a program did not lower for a platform, or was flagged (the lines on stderr say which).
  2    invalid config or flags; compiled programs that do not fit in device memory (launch/run/memory.py: the message
       names the memory needed and the keys to change); a workdir that cannot be used: in use by another run (its
       lock names the host and pid), not writable (no space, read-only, a path under a file: the message names the path, the cause and the
       checkpoint a rerun resumes from), metrics rows with no checkpoint to resume them (rerun with --fresh to start
       over), checkpoints this config cannot resume; or a multi-process start in which a peer never registered.
  3    stopped by SIGTERM/SIGINT/preemption: after saving a checkpoint, or before the first update with nothing to
       save (rerun the same command to resume).
  4    a loss or the params became non-finite (the message names the update and the last good checkpoint; that
       state was not saved).
  130  (143) a second SIGINT (SIGTERM) stopped the run at once without saving the current update (the message names
       the newest checkpoint, which a rerun resumes from).

The console shows one start line, the progress bar, one line per checkpoint with --config.log_checkpoints, and a
summary; the libraries' INFO lines and warnings are shown with -v 0 (absl's --verbosity).
"""
import contextlib
import dataclasses
import json
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from launch.config import describe as config_cli, resolve as config_lib, schema as config_schema
from launch.report import cli, console

EXIT_CONFIG_ERROR = 2
EXIT_PREEMPTED = 3
EXIT_NONFINITE = 4
EXIT_INTERRUPTED = 128 + 2  # a second SIGINT (the shell's convention; SIGTERM: 143, see launch/run/preemption.py)


def _fail(message: str):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(EXIT_CONFIG_ERROR)


def _config_file(args: list[str]) -> str | None:
  """The FILE of the last `--config=FILE[:ARG]` (or `--config FILE[:ARG]`), if any: the one absl uses."""
  found = None
  for i, arg in enumerate(args):
    if arg.startswith("--config="):
      found = arg[len("--config="):].split(":", 1)[0]
    elif arg == "--config" and i + 1 < len(args):
      found = args[i + 1].split(":", 1)[0]
  return found


if __name__ == "__main__":
  # config_flags loads the file and applies `--config.KEY=VALUE` overrides as the flag is defined, failing with a long
  # traceback: a missing file and unknown keys are caught first.
  _file = _config_file(sys.argv[1:])
  if _file is not None and not os.path.isfile(_file):
    _configs = sorted(n for n in os.listdir(os.path.join(os.path.dirname(__file__), "configs"))
                      if n.endswith(".py") and not n.startswith("_"))
    _fail(f"could not load --config={_file}: no such file (the configs in launch/configs/ are {', '.join(_configs)})")
  _unknown = config_cli.unknown_override_keys(sys.argv[1:])
  if _unknown:
    _fail("invalid config:\n  " + "\n  ".join(
        f"config.{k}: unknown key (known keys are those of launch/configs/default.py)" for k in _unknown))

_DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "configs", "default.py")
FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for metrics, TensorBoard, plots (and checkpoints).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for a multi-process run (else auto-detected "
                    "under SLURM / Cloud TPU / Open MPI).")
flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-process run.")
flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
flags.DEFINE_bool("dry_run", False, "Validate the config, print it fully resolved as one JSON object, and exit.")
flags.DEFINE_bool("dry_run_memory", True, "With --dry_run: also compile the programs from abstract shapes (no state "
                  "is allocated) and print their memory per device (launch/run/memory.py).")
flags.DEFINE_list("dry_run_platforms", [], "With --dry_run: also lower every program for these platforms (cuda, rocm, "
                  "tpu) without their devices, and flag ops they run non-deterministically or cannot run "
                  "(launch/run/portability.py); exit 1 when any program does not lower or is flagged.")
flags.DEFINE_integer("dry_run_devices", 8, "With --dry_run_platforms: CPU devices standing for the mesh (sets "
                     "--xla_force_host_platform_device_count unless XLA_FLAGS sets it).")
flags.DEFINE_bool("describe_config", False, "Print every config key (this config's value, type, one-line doc, rule, "
                  "resume policy; see launch/config/schema.py) and exit.")
flags.DEFINE_bool("fresh", False, "Start the run over: move this workdir's metrics, TensorBoard events and checkpoints "
                  "aside (into WORKDIR/previous-<time>/) first. Without it, a workdir with metrics rows but no "
                  "checkpoint to resume them from is refused.")
config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Config file, optionally FILE.py:ARG.", lock_config=True)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl parsing, with bad flag values (and a config file that fails to load) reported in one line, exit code 2."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    text = str(e)
    if "Traceback (most recent call last)" in text:  # config_flags: the config file raised (e.g. an unknown variant)
      last = [line for line in text.split("Traceback (most recent call last)", 1)[1].splitlines() if line.strip()]
      _fail(f"could not load {text.split(': Error whilst', 1)[0].removeprefix('flag ')}: {last[-1].strip()}")
    _fail(f"{e}; pass --helpshort to see the flags")
  except Exception as e:  # pylint: disable=broad-except  (config_flags: the config file raised, e.g. a bad variant)
    _fail(f"could not load --config: {_root(e)}")


def _root(error: BaseException) -> str:
  """The innermost cause's message (config_flags wraps a config file's own error), as one line."""
  while error.__cause__ is not None or error.__context__ is not None:
    error = error.__cause__ or error.__context__
  return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def main(argv):
  if len(argv) > 1:
    _fail(f"unexpected arguments: {argv[1:]}")
  console.configure_logging()  # quiet libraries unless --verbosity / -v is given
  try:
    config = FLAGS.config
    config.keys()  # config_flags defers a config file's load error to the first access
  except Exception as e:  # pylint: disable=broad-except  (the file's own error: one line)
    _fail(f"could not load --config: {_root(e)}")
  if FLAGS.describe_config:
    print(config_schema.SCHEMA.listing(config_lib.flat_keys(config)))
    return
  if FLAGS.dry_run_platforms:
    if not FLAGS.dry_run:
      _fail("--dry_run_platforms needs --dry_run")
    if FLAGS.dry_run_devices < 1:
      _fail(f"--dry_run_devices={FLAGS.dry_run_devices}: must be a positive integer")
    if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):  # before the backend starts
      os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                 f" --xla_force_host_platform_device_count={FLAGS.dry_run_devices}").strip()
  cli.check_xla_flags()
  from sharding import distributed  # pylint: disable=import-outside-toplevel
  try:
    distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  except ValueError as e:
    _fail(str(e))
  cli.start_backend()
  import jax  # pylint: disable=import-outside-toplevel
  from launch.files import fs_errors as errors  # pylint: disable=import-outside-toplevel
  from launch.run import preemption
  errors.install_console_filters()
  preemption.EXIT_AT_ONCE = True  # this process is ours: a second signal, or a stop during compilation, ends it now
  try:
    if FLAGS.dry_run:
      # stdout carries the JSON alone: what libraries print while the programs are built goes to stderr
      with contextlib.redirect_stdout(sys.stderr):
        described = config_cli.describe(config, jax.device_count(), jax.process_count())
        from launch.run import memory  # pylint: disable=import-outside-toplevel
        from learner import code_path  # pylint: disable=import-outside-toplevel
        described["code_path"] = code_path.describe()  # "portable" with PPO_PORTABLE=1 or on an accelerator
        described["memory_per_transition"] = memory.per_transition(config)  # shapes only: any num_envs, no compile
        if FLAGS.dry_run_memory:
          from launch.run import traffic  # pylint: disable=import-outside-toplevel
          progs = memory.planned_programs(config)
          report = memory.analyse(progs)
          described["memory"] = report.as_dict()
          described["traffic_per_update"] = {  # bytes between devices: the collectives of the update (or learn stage)
              "devices": jax.device_count() if config.mesh.data == -1 else config.mesh.data,
              **traffic.of(progs.compiled.get("update") or progs.compiled["learn"])}
          if not report.fits:
            described.setdefault("warnings", []).append(f"does not fit in device memory: {report.summary()}")
        lowerings = []
        if FLAGS.dry_run_platforms:
          from launch.run import portability  # pylint: disable=import-outside-toplevel
          platforms = portability.check_platforms(FLAGS.dry_run_platforms)
          lowerings = portability.check(config, platforms)
          described["lowering"] = {"devices": jax.device_count(),
                                   "programs": [dataclasses.asdict(x) for x in lowerings]}
      print(json.dumps(described, indent=2))
      for lowering in lowerings:
        print(lowering.line(), file=sys.stderr)
      bad = [x for x in lowerings if not x.ok]
      if bad:
        print(f"error: {len(bad)} of {len(lowerings)} program lowerings failed or were flagged "
              f"({', '.join(sorted({f'{x.program} ({x.platform})' for x in bad}))})", file=sys.stderr)
        sys.exit(1)
      return
    if not FLAGS.workdir:
      _fail("--workdir is required")
    from launch import checkpoint  # pylint: disable=import-outside-toplevel
    from launch.files import workdir
    from launch.run import trainer
    workdir_path = workdir.expand(FLAGS.workdir)  # `--workdir=~/x`: the shell leaves the `~` to us
    try:
      workdir.check_client(workdir_path)
      row = trainer.train_and_evaluate(config, workdir_path, fresh=FLAGS.fresh)
    except (checkpoint.Preempted, preemption.StoppedBeforeStart) as e:
      print(str(e), file=sys.stderr)
      sys.exit(EXIT_PREEMPTED)
    except checkpoint.NonFiniteError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(EXIT_NONFINITE)
    except (errors.WorkdirError, workdir.HistoryError, workdir.MissingClientError) as e:
      _fail(str(e))
    except KeyboardInterrupt:  # a second Ctrl-C with several processes (one process: launch/run/preemption.py)
      print(f"\nerror: interrupted by a second SIGINT, without saving the current update; "
            f"{errors.what_is_safe(workdir_path)}", file=sys.stderr)
      sys.exit(EXIT_INTERRUPTED)
    except Exception as e:  # pylint: disable=broad-except  (a disk or workdir failure anywhere: one line; else raise)
      message = errors.workdir_message(e, workdir_path)
      if message is None:
        raise
      logging.debug("the workdir failure in full:", exc_info=True)
      _fail(message)
  except config_lib.ConfigError as e:
    _fail(str(e))
  logging.info("done: %s", row)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
