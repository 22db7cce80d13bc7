"""The default run: PPO on the built-in CartPole-v1, tuned to reach a perfect score in well under a minute on 2 CPU
cores. Every other config starts from this one and overrides some keys.

  python -m launch.train --workdir=/tmp/cartpole
  python -m launch.train --workdir=/tmp/cartpole --config=launch/configs/default.py --config.num_envs=64
  python -m launch.train --describe_config   # every key: default, type, one-line doc, rule, resume policy

Each key (its default, type, doc, validation rule and whether it may change on resume) is defined once, in
launch/config/schema.py; this config is those defaults.
"""
import ml_collections

from launch.config.schema import SCHEMA


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg:
    raise ValueError(f"unknown variant {arg!r} (default.py has none)")
  return SCHEMA.config()
