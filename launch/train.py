"""Entry point: parses flags and the ml_collections config, then trains.

  python -m launch.train --workdir=DIR [--config=launch/configs/NAME.py[:ARG]] [--config.KEY=VALUE ...]

Exit codes: 0 done; 2 invalid config (one message naming each bad key, no traceback).
"""
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from launch import config_lib

_DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "configs", "default.py")
FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for metrics, TensorBoard, plots (and checkpoints).", required=True)
config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Config file, optionally FILE.py:ARG.", lock_config=True)

EXIT_CONFIG_ERROR = 2


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from launch import trainer  # pylint: disable=import-outside-toplevel  (imports jax after flags parsed)
  try:
    row = trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except config_lib.ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(EXIT_CONFIG_ERROR)
  logging.info("done: %s", row)


if __name__ == "__main__":
  app.run(main)
