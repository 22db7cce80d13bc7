"""The console of `python -m launch.train`: one start line, the progress bar, checkpoint lines when asked for, and
a summary; no library's logs in between at the default verbosity, and all of them with -v 0."""
import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# absl's log prefix (I1201 21:25:11.568303 ...) and Python's default handler's (WARNING:absl:...).
LIBRARY_LINE = re.compile(r"^([IWEF]\d{4} \d\d:\d\d|(DEBUG|INFO|WARNING|ERROR|CRITICAL):)")


def _train(workdir, *flags):
  # As a user runs it: no forced platform (so JAX probes for a TPU, as on a fresh machine) and one CPU device.
  env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "XLA_FLAGS")}
  proc = subprocess.run([sys.executable, "-m", "launch.train", f"--workdir={workdir}",
                         "--config=launch/configs/debug.py", "--config.checkpoint_every=2",
                         "--config.log_checkpoints=True", *flags], cwd=REPO, env=env, stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:]
  return [line.strip() for line in re.split(r"[\r\n]", proc.stdout) if line.strip()]


def test_default_console_has_only_our_lines(tmp_path):
  workdir = str(tmp_path / "run")
  lines = _train(workdir)
  starts = [i for i, l in enumerate(lines) if l.startswith("start: ")]
  ends = [i for i, l in enumerate(lines) if l.startswith("summary: ")]
  assert len(starts) == 1 and len(ends) == 1 and starts[0] < ends[0], lines
  between = lines[starts[0] + 1:ends[0]]
  strays = [l for l in between if not l.startswith(("train: ", "checkpoint: "))]
  assert not strays, strays
  assert [l for l in between if l.startswith("checkpoint: ")] == [
      f"checkpoint: update {u} -> {workdir}/checkpoints/{u}" for u in (2, 4, 6, 8, 10)]
  assert any(re.search(r"\d+%\|.*\| 1\.28k/1\.28k", l) for l in between)  # the bar reached the end
  start = lines[starts[0]]
  for part in ("env CartPole-v1", "1 cpu device", "mesh data=1", "batch 128 = 8 envs x 16 steps", "10 updates",
               f"workdir {workdir}", "new run"):
    assert part in start, (part, start)
  summary = lines[ends[0]]
  assert re.search(r"eval return [\d.]+ final, [\d.]+ best \(update \d+\) \| 1,280 env steps \| wall time", summary)
  assert "SPS" in summary
  for name in ("checkpoint", "metrics", "plots"):
    assert any(l.startswith(name) and workdir in l for l in lines[ends[0] + 1:]), name
  assert not [l for l in lines if LIBRARY_LINE.match(l)]  # nor before the start line or after the summary

  # A resumed run says where it resumed from.
  lines = _train(workdir, "--config.total_env_steps=1536")
  start = next(l for l in lines if l.startswith("start: "))
  assert f"resumed from update 10 ({workdir}/checkpoints/10)" in start
  logged = [l for l in lines if LIBRARY_LINE.match(l)]  # only our own warning about the changed key, before "start"
  assert len(logged) == 1 and "compat.py" in logged[0] and "total_env_steps: 1280 -> 1536" in logged[0]
  assert lines.index(logged[0]) < lines.index(start)


def test_verbosity_flag_brings_library_logs_back(tmp_path):
  lines = _train(str(tmp_path / "run"), "-v", "0")
  library = [l for l in lines if LIBRARY_LINE.match(l)]
  assert any("xla_bridge" in l or "orbax" in l or "ocdbt" in l.lower() for l in library), library[:20]
  assert any(l.startswith("summary: ") for l in lines)
