"""Entry point: parses flags and the ml_collections config, then trains.

  python -m launch.train --workdir=DIR [--config=launch/configs/NAME.py[:ARG]] [--config.KEY=VALUE ...]
  python -m launch.train --workdir=DIR --dry_run ...   # print the resolved config, code path and compiled
                                                       # programs' memory per device as JSON, and exit
  python -m launch.train --describe_config [--config=...]   # every key: value, type, doc, rule, resume policy

Exit codes: 0 done; 2 invalid config or flags, a run whose compiled programs do not fit in device memory
(launch/memory.py), or a workdir whose checkpoints cannot be resumed with this config (one message naming each bad
key, no traceback); 3 stopped by SIGTERM/SIGINT/preemption after saving a checkpoint (rerun
the same command to resume); 4 a loss or the params became non-finite (the message names the update and the last
good checkpoint; that state was not saved).

The console shows one start line, the progress bar, one line per checkpoint with --config.log_checkpoints, and a
summary; the libraries' INFO lines and warnings are shown with -v 0 (absl's --verbosity).
"""
import json
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from launch import config_lib, config_schema, console

EXIT_CONFIG_ERROR = 2
EXIT_PREEMPTED = 3
EXIT_NONFINITE = 4


def _fail(message: str):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(EXIT_CONFIG_ERROR)


if __name__ == "__main__":
  # config_flags applies `--config.KEY=VALUE` overrides as the flag is defined, so unknown keys are caught first.
  _unknown = config_lib.unknown_override_keys(sys.argv[1:])
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
                  "is allocated) and print their memory per device (launch/memory.py).")
flags.DEFINE_bool("describe_config", False, "Print every config key (this config's value, type, one-line doc, rule, "
                  "resume policy; see launch/config_schema.py) and exit.")
config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Config file, optionally FILE.py:ARG.", lock_config=True)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl parsing, with bad flag values reported in one line and exit code 2."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    _fail(f"{e}\nPass --helpshort to see the flags.")


def main(argv):
  if len(argv) > 1:
    _fail(f"unexpected arguments: {argv[1:]}")
  console.configure_logging()  # quiet libraries unless --verbosity / -v is given
  try:
    config = FLAGS.config
    config.keys()  # config_flags defers a config file's load error to the first access
  except OSError as e:
    _fail(f"could not load --config: {e}")
  if FLAGS.describe_config:
    print(config_schema.SCHEMA.listing(config_lib.flat_keys(config)))
    return
  from sharding import distributed  # pylint: disable=import-outside-toplevel
  distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  import jax  # pylint: disable=import-outside-toplevel
  try:
    if FLAGS.dry_run:
      described = config_lib.describe(config, jax.device_count(), jax.process_count())
      from launch import memory  # pylint: disable=import-outside-toplevel
      from learner import code_path  # pylint: disable=import-outside-toplevel
      described["code_path"] = code_path.describe()  # "portable" with PPO_PORTABLE=1 or on an accelerator
      if FLAGS.dry_run_memory:
        report = memory.plan(config)
        described["memory"] = report.as_dict()
        if not report.fits:
          described.setdefault("warnings", []).append(f"does not fit in device memory: {report.summary()}")
      print(json.dumps(described, indent=2))
      return
    if not FLAGS.workdir:
      _fail("--workdir is required")
    from launch import checkpoint, trainer  # pylint: disable=import-outside-toplevel
    try:
      row = trainer.train_and_evaluate(config, FLAGS.workdir)
    except checkpoint.Preempted as e:
      print(str(e), file=sys.stderr)
      sys.exit(EXIT_PREEMPTED)
    except checkpoint.NonFiniteError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(EXIT_NONFINITE)
  except config_lib.ConfigError as e:
    _fail(str(e))
  logging.info("done: %s", row)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
