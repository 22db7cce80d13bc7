"""Exports a run's newest policy for use outside the trainer: params (safetensors) + policy.json.

  python -m launch.export --workdir=DIR --out=POLICY_DIR
  # then, with nothing of the training loop:  from learner.policy import load_policy
  #   policy = load_policy("POLICY_DIR"); action = jax.jit(policy.act, static_argnums=2)(obs, key, True)

POLICY_DIR/params.safetensors holds the network params as flat "a/b/c" tensors (readable by any safetensors
reader; no pickle); POLICY_DIR/policy.json what rebuilds the policy: network kind, hidden sizes, activation, shared
trunk, distribution, action space, observation shape and the observation statistics when the run normalised
observations (format in learner/policy.py). Exit codes: 0 done; 2 bad flags, no readable checkpoint, or storage that
keeps failing (docs/checkpoints.md#readers-of-a-run).
"""
from __future__ import annotations

import os

from absl import app, flags

from launch.config import resolve as config_lib
from launch.files import fs_errors, workdir as workdir_lib
from launch.report import cli, console

FLAGS = flags.FLAGS


def export(workdir: str, out: str) -> str:
  """Writes the newest checkpoint's policy of `workdir` to directory `out`; returns the checkpoint step read."""
  from launch.checkpoint import saved_run  # pylint: disable=import-outside-toplevel
  from learner import policy as policy_lib  # pylint: disable=import-outside-toplevel
  run = saved_run.load(workdir)
  policy_lib.save_policy(out, run.policy.spec, run.policy.params)
  return run.step_dir


def _define_flags() -> None:
  """The CLI's flags, defined only when run as a program (tests import this module beside others with a --workdir)."""
  flags.DEFINE_string("workdir", None, "The run's workdir (or its checkpoints/ or one step directory).")
  flags.DEFINE_string("out", None, "Directory to write params.safetensors and policy.json into.")


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {argv[1:]}")
  console.configure_logging()
  if not FLAGS.workdir or not FLAGS.out:
    cli.fail("--workdir and --out are required")
  workdir, out = workdir_lib.expand(FLAGS.workdir), workdir_lib.expand(FLAGS.out)
  cli.start(workdir, out)
  try:
    step_dir = export(workdir, out)
  except (config_lib.ConfigError, fs_errors.WorkdirError) as e:
    cli.fail(str(e))
  from learner import policy as policy_lib  # pylint: disable=import-outside-toplevel
  print(f"exported {step_dir} -> {os.path.join(out, policy_lib.PARAMS_FILE)}, "
        f"{os.path.join(out, policy_lib.SPEC_FILE)}")


if __name__ == "__main__":
  _define_flags()
  app.run(main, flags_parser=cli.flags_parser)
