"""The Weights & Biases sink in offline mode (no network): the logged keys land in an offline run directory under
the workdir, a resumed run continues the same W&B run, and a missing extra names the install command."""
import glob
import os
import struct

import pytest

from launch.config import resolve as config_lib, rules as config_rules
from launch.report import wandb_sink
from launch.run import trainer
from launch.configs import debug

wandb = pytest.importorskip("wandb")


def _history_keys(run_file):
  """Keys of the history records in a .wandb file and env_steps of its metrics rows (W&B's record log: 7-byte header, 32 KiB blocks of
  [crc32, length, type] chunks, each record a protobuf)."""
  from wandb.proto import wandb_internal_pb2  # pylint: disable=import-outside-toplevel
  with open(run_file, "rb") as f:
    data = f.read()
  assert data[:4] == b":W&B"
  pos, block, buf, keys, steps = 7, 32768, b"", set(), []
  while pos + 7 <= len(data):
    left = block - pos % block
    if left < 7:
      pos += left
      continue
    _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
    if kind == 0 and length == 0:  # block padding
      pos += left
      continue
    chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
    buf = chunk if kind in (1, 2) else buf + chunk  # FULL, FIRST | MIDDLE, LAST
    if kind in (1, 4):
      record = wandb_internal_pb2.Record()
      record.ParseFromString(buf)
      if record.WhichOneof("record_type") == "history":
        items = {i.key or "/".join(i.nested_key): i.value_json for i in record.history.item}
        keys |= set(items)
        if "update" in items:  # a metrics row (the plot is a record of its own)
          steps.append(int(items["env_steps"]))
  return keys, steps


def _config(updates):
  config = debug.get_config()
  config.total_env_steps = 8 * 16 * updates
  config.wandb.project = "ppo-million-test"
  config.wandb.mode = "offline"
  return config


def test_offline_run_holds_the_logged_keys_and_a_resume_continues_it(workdir):
  trainer.train_and_evaluate(_config(5), workdir)
  run_id = open(os.path.join(workdir, wandb_sink.RUN_ID_FILE), encoding="utf-8").read().strip()
  (first,) = glob.glob(os.path.join(workdir, "wandb", f"offline-run-*-{run_id}", f"run-{run_id}.wandb"))
  keys, steps = _history_keys(first)
  for key in ("episode_return", "eval_return", "policy_loss", "value_loss", "entropy", "approx_kl", "param_norm",
              "sps", "wall_time", "env_steps", "update", "kl_mean", "explained_variance"):
    assert key in keys, key
  assert any(k.startswith("learning_curve") for k in keys)  # the plot at the end
  assert steps == [5 * 128]

  trainer.train_and_evaluate(_config(10), workdir)  # resumes from update 5
  runs = sorted(glob.glob(os.path.join(workdir, "wandb", "offline-run-*")))
  assert len(runs) == 2 and all(r.endswith(f"-{run_id}") for r in runs)  # the same W&B run, continued
  (second,) = glob.glob(os.path.join(runs[1], f"run-{run_id}.wandb"))
  assert _history_keys(second)[1] == [10 * 128]


def test_missing_extra_and_bad_mode_are_config_errors(monkeypatch):
  config = _config(5)
  config.wandb.mode = "sometimes"
  assert any("config.wandb.mode='sometimes': must be one of" in e for e in config_lib.check(config, 1))
  monkeypatch.setattr(config_rules, "wandb_installed", lambda: False)
  errors = config_lib.check(_config(5), 1)
  assert any(e.startswith("config.wandb.project=") and 'pip install -e ".[wandb]"' in e for e in errors), errors
