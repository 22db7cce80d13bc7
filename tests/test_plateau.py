"""The plateau rule (launch/run/plateau.py) on recorded metric sequences and hand-made ones: a noise-limited plateau
is advised once; a solved task, a converged policy, a batch above its gradient noise, a flat evaluation while the
training return rises are not.

Recorded (tests/data): `plateau_cartpole_default.jsonl`, the default CartPole run with an evaluation every 10 updates
(`python -m launch.train --workdir=/tmp/cp_dense --config.eval_every=10`, 2026-12-07); `plateau_breakout_n8.jsonl`,
seed 1 of docs/study's Breakout-MinAtar recipe arm at N = 8 (batch 256), the seed stuck at a training return of 6.2.
"""
import json
import math
import os

import pytest

from launch.configs import default, debug
from launch.run import plateau

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


def _recorded(name):
  with open(os.path.join(DATA, name), encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def _verdicts(rows, batch, window):
  out = []
  for i in range(1, len(rows) + 1):
    a = plateau.assess(rows[:i], batch, window)
    out.append(a and a.verdict)
  return out


def test_the_default_cartpole_run_is_rising_then_solved_and_never_advised():
  config = default.get_config()
  rows = _recorded("plateau_cartpole_default.jsonl")
  batch, window = config.num_envs * config.num_steps, config.plateau.share * config.total_env_steps
  verdicts = _verdicts(rows, batch, window)
  assert set(verdicts) == {None, "rising", "solved"} and verdicts[-1] == "solved", verdicts
  # A rule on the evaluation's best alone fired at env step 286,720: a lucky 500 at 81,920, the training return rising.
  at = [r["env_steps"] for r in rows].index(286720)
  assert verdicts[at] == "rising" and rows[1]["eval_return"] == 500.0 and rows[at]["episode_return"] < 495
  watch = plateau.Watch(config.copy_and_resolve_references(), "/tmp/run", config.total_env_steps)
  assert not any(watch.observe(dict(r)) for r in rows) and watch.last.verdict == "solved"


def test_the_stuck_breakout_seed_is_noise_limited_and_advised_once():
  rows = _recorded("plateau_breakout_n8.jsonl")
  budget, batch = 2097152, 256
  verdicts = _verdicts(rows, batch, 0.25 * budget)
  assert verdicts[-1] == "noise_limited" and "noise_limited" in verdicts[:10], verdicts
  last = plateau.assess(rows, batch, 0.25 * budget)
  assert 0.5 < last.kl_fraction <= 1 and batch < plateau.NOISE_MULTIPLE * last.grad_noise_scale
  config = debug.get_config()
  config.update_from_flattened_dict({"num_envs": 8, "num_steps": 32, "total_env_steps": budget})
  watch = plateau.Watch(config, "/tmp/run", budget)
  said = [watch.observe(dict(r)) for r in rows]
  hits = [i for i, a in enumerate(said) if a]
  assert hits == [verdicts.index("noise_limited")]
  advice = said[hits[0]]
  assert advice["suggested_num_envs"] == 32 and advice["samples_per_update"] == 256
  line = plateau.line(advice, rows[hits[0]], watch.command())
  for part in ("noise-limited: KL per update", "samples per update vs the policy gradient's noise scale",
               "--workdir=/tmp/run", "--config.num_envs=32", "--config.scaling.rule=recipe"):
    assert part in line, (part, line)
  # A resumed run that already said it does not say it again; share 0 turns it off.
  resumed = [dict(r) for r in rows[:hits[0] + 1]]
  resumed[-1]["plateau"] = advice
  again = plateau.Watch(config, "/tmp/run", budget, resumed)
  assert not any(again.observe(dict(r)) for r in rows[hits[0] + 1:])
  config.plateau.share = 0.0
  off = plateau.Watch(config, "/tmp/run", budget)
  assert not any(off.observe(dict(r)) for r in rows)


def _made(n=40, step=100, eval_return=lambda i: 5.0, episode_return=lambda i: 5.0, kl=lambda i: 0.01,
          noise=lambda i: 1e4):
  return [{"env_steps": (i + 1) * step, "eval_return": eval_return(i), "episode_return": episode_return(i),
           "kl_mean": kl(i), "samples_per_kl": 256 / kl(i), "grad_noise_scale_policy": noise(i)} for i in range(n)]


RISE_THEN_FLAT = lambda i: min(i, 10) + (0.3 if i % 2 else -0.3)  # learns for 10 rows, then a noisy plateau


@pytest.mark.parametrize("case,rows,verdict", [
    ("noise-limited", _made(episode_return=RISE_THEN_FLAT, eval_return=RISE_THEN_FLAT), "noise_limited"),
    ("converged: the step fell to 1% of its largest", _made(
        episode_return=RISE_THEN_FLAT, eval_return=RISE_THEN_FLAT, kl=lambda i: 0.01 * 0.9 ** i), "converged"),
    ("the batch is 100 noise scales", _made(
        episode_return=RISE_THEN_FLAT, eval_return=RISE_THEN_FLAT, noise=lambda i: 2.56), "batch_above_noise"),
    ("a flat, noisy evaluation while the training return rises", _made(
        eval_return=lambda i: 5.0 + (3 if i == 3 else 0), episode_return=lambda i: 0.1 * i), "rising"),
    ("a lucky early evaluation, then a slow steady rise of both", _made(
        eval_return=lambda i: 9.0 if i == 1 else 0.05 * i, episode_return=lambda i: 0.05 * i), "rising"),
    ("solved: every sampled episode at the best evaluation's return", _made(
        eval_return=lambda i: min(50 * i, 500), episode_return=lambda i: min(40 * i, 500)), "solved"),
])
def test_made_sequences(case, rows, verdict):
  window = 10 * 100  # a quarter of 40 rows
  got = plateau.assess(rows, 256, window)
  assert got is not None and got.verdict == verdict, (case, got)
  assert got.advise == (verdict == "noise_limited")


def test_nothing_is_judged_before_two_windows_or_without_enough_evaluations():
  rows = _made(n=15, episode_return=RISE_THEN_FLAT, eval_return=RISE_THEN_FLAT)
  assert plateau.assess(rows[:10], 256, 1000) is None  # one window old
  sparse = [dict(r, eval_return=r["eval_return"] if i % 5 == 4 else None) for i, r in enumerate(_made(n=40))]
  assert plateau.assess(sparse, 256, 1000) is None  # 2 evaluations in the window
  assert plateau.assess(sparse, 256, 1000, min_evals=2) is not None
  assert plateau._slope_t([(0, 1.0), (1, 2.0), (2, 3.0), (3, 4.0)]) == math.inf
