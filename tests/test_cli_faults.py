"""Faults around the command lines, each one line and a documented exit code (docs/checkpoints.md#exit-codes): bad
flags, XLA_FLAGS that XLA rejects, an absent JAX_PLATFORMS backend, a gs:// path without its client, a workdir deep
under a file or a read-only ancestor, `~` in paths, launch.plot's inputs, too few file handles during a save; and a
resumed run whose metrics.jsonl lacks rows, or that has nothing left to do.

Most cases fail before anything compiles; those that train resume copies of one 12-update debug run
(tests/test_checkpoint.py's), sharing one persistent compilation cache.
"""
import errno
import json
import os
import resource
import shutil
import subprocess
import sys
import time

import pytest

from launch.files import fs_errors as errors, workdir as workdir_lib
from launch.report import metrics_file
from tests.test_checkpoint import ARGS, BATCH, REPO, _env, _rows

PY = sys.executable


@pytest.fixture(scope="module")
def jax_cache(tmp_path_factory):
  return str(tmp_path_factory.mktemp("jax_cache"))


def _cli(module, *args, env=None, cwd=REPO, timeout=300):
  return subprocess.run([PY, "-m", module, *map(str, args)], cwd=cwd, env=env or _env_plain(),
                        capture_output=True, text=True, timeout=timeout)


def _env_plain(**extra):
  return {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO, **extra}


def _one_line(proc, code, *expected):
  """Exit `code`, no traceback, and a last line (the only one on stderr) that says each of `expected`."""
  assert proc.returncode == code, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr[-3000:]
  lines = proc.stderr.strip().splitlines()
  assert lines and lines[-1].startswith("error: "), proc.stderr[-3000:]
  for text in expected:
    assert text in lines[-1], lines[-1]
  return lines[-1]


@pytest.fixture(scope="module")
def finished(jax_cache, tmp_path_factory):
  """The 12-update debug run (rows at 4, 8, 12; checkpoints 6, 9, 12), completed."""
  workdir = str(tmp_path_factory.mktemp("finished") / "run")
  proc = subprocess.run([PY, "-m", "launch.train", f"--workdir={workdir}", *ARGS], cwd=REPO, env=_env(jax_cache),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir


def _copy(finished, tmp_path, name="run"):
  shutil.copytree(finished, tmp_path / name)
  return tmp_path / name


# 1. Flags and the environment: exit 2 before anything starts.


def test_bad_flags_exit_2_in_every_cli(tmp_path):
  for module in ("launch.evaluate", "launch.export", "launch.train", "launch.local"):
    _one_line(_cli(module, "--bogus_flag=1"), 2, "Unknown command line flag 'bogus_flag'", "--helpshort")
  _one_line(_cli("launch.plot", "--bogus_flag=1", tmp_path), 2, "unknown flag --bogus_flag", "usage:")


def test_xla_flags_and_jax_platforms_are_one_line(tmp_path):
  wd = tmp_path / "run"
  proc = _cli("launch.train", f"--workdir={wd}", "--config=launch/configs/debug.py",
              env=_env_plain(XLA_FLAGS="--xla_force_host_platform_device_count=2 --xla_bogus_flag=1"))
  _one_line(proc, 2, "Unknown flag in XLA_FLAGS: --xla_bogus_flag=1", "fix or remove it")
  proc = _cli("launch.export", f"--workdir={wd}", f"--out={tmp_path}/policy", env=_env_plain(JAX_PLATFORMS="tpu"))
  _one_line(proc, 2, "JAX_PLATFORMS=tpu: Unable to initialize backend 'tpu'", "set JAX_PLATFORMS to a backend")
  assert not wd.exists() and not (tmp_path / "policy").exists()


def test_the_local_launcher_ends_with_the_process_that_failed_first(tmp_path):
  """launch.local's last line names the process that failed first, what its code means and the others' codes; a
  signal's death is reported as a shell would (128 + N)."""
  proc = _cli("launch.local", "--num_processes=2", "--", f"--workdir={tmp_path}/run",
              "--config=launch/configs/debug.py", "--config.bogus_key=1")
  last = _one_line(proc, 2, "failed first with exit code 2: invalid config, flags or workdir", "of 2",
                   "(the others: process ")
  assert proc.stderr.count("bogus_key") >= 2, proc.stderr  # each process's own message stays above it
  from launch import local  # pylint: disable=import-outside-toplevel
  assert local.shell_code(-9) == 137 and local.shell_code(4) == 4
  line = local.summary([137, 134], 0)
  assert "process 0 of 2 failed first with exit code 137: it was killed by SIGKILL (often: the machine ran out of " \
         "memory)" in line and "(the others: process 1: 134)" in line, line
  assert "process 1 of 2" in local.summary([134, 4], 1) and "non-finite" in local.summary([134, 4], 1), last


# 2. Paths: a workdir deep under a file or a read-only ancestor, a bucket without its client, `~`.


def test_a_workdir_two_levels_under_a_file_is_one_line(tmp_path):
  (tmp_path / "file").write_text("")
  proc = _cli("launch.train", f"--workdir={tmp_path}/file/x/run", "--config=launch/configs/debug.py")
  _one_line(proc, 2, f"cannot write to the workdir: Not a directory: {tmp_path}/file/x",
            "rerun the same command")
  # A read-only (or unwritable) ancestor is the workdir's failure too (mounting one needs root: tests/test_faults.py).
  assert errors.filesystem_cause(OSError(errno.EROFS, "ro", "/mnt/ro"), "/mnt/ro/a/run") == (
      "/mnt/ro", "Read-only file system")
  assert errors.filesystem_cause(PermissionError(errno.EACCES, "no", "/srv"), "/srv/a/b/run") == (
      "/srv", "Permission denied")
  assert errors.filesystem_cause(OSError(errno.ENOSPC, "full", "/srv2"), "/srv/a/run") is None  # not an ancestor


def test_a_bucket_without_its_client_names_the_extra(tmp_path):
  fake = tmp_path / "site"  # gcsfs "not installed", whatever this environment holds
  (fake / "gcsfs").mkdir(parents=True)
  (fake / "gcsfs" / "__init__.py").write_text("raise ImportError('No module named gcsfs')\n")
  env = _env_plain(PYTHONPATH=f"{fake}{os.pathsep}{REPO}")
  proc = _cli("launch.train", "--workdir=gs://some-bucket/run", "--config=launch/configs/debug.py", env=env)
  _one_line(proc, 2, "gs://some-bucket/run: a gs:// path needs the gcs extra (gcsfs)", 'pip install -e ".[gcs]"')
  _one_line(_cli("launch.plot", "gs://some-bucket/run", env=env), 2, 'pip install -e ".[gcs]"')


def test_tilde_is_the_home_directory(tmp_path, monkeypatch):
  home = tmp_path / "home"
  (home / "run").mkdir(parents=True)
  (home / "run" / "metrics.jsonl").write_text(json.dumps({"update": 4, "env_steps": 512}) + "\n")
  env = _env_plain(HOME=str(home))
  # A row and no checkpoint: refused before anything compiles, naming the expanded path.
  proc = _cli("launch.train", "--workdir=~/run", f"--config={REPO}/launch/configs/debug.py", env=env, cwd=tmp_path)
  _one_line(proc, 2, f"--workdir={home}/run has 1 metrics rows")
  proc = _cli("launch.plot", "--out=~/curves.png", "~/run", env=env, cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert (home / "curves.png").exists() and (home / "curves_diagnostics.png").exists()
  assert not (tmp_path / "~").exists()
  monkeypatch.setenv("HOME", str(home))
  assert workdir_lib.absolute("~/x") == f"{home}/x" and workdir_lib.absolute("gs://b/~x") == "gs://b/~x"


# 3. launch.plot.


def _fake_rows(n):
  return [{"update": 4 * i, "env_steps": 512 * i, "episode_return": float(i), "eval_return": float(i), "entropy": 0.5}
          for i in range(1, n + 1)]


def test_plot_inputs_are_one_line_and_a_cut_last_row_is_left_out(tmp_path):
  _one_line(_cli("launch.plot", tmp_path / "missing"), 2, f"{tmp_path}/missing: no such directory")
  (tmp_path / "empty").mkdir()
  _one_line(_cli("launch.plot", tmp_path / "empty"), 2, f"{tmp_path}/empty: no metrics.jsonl")
  run = tmp_path / "run"
  run.mkdir()
  lines = [json.dumps(r) for r in _fake_rows(3)]
  (run / "metrics.jsonl").write_text("\n".join(lines) + '\n{"update": 16, "env_st')  # a row being written
  _one_line(_cli("launch.plot", f"--out={tmp_path}/no/such/folder/c.png", run), 2,
            f"--out={tmp_path}/no/such/folder/c.png: the folder {tmp_path}/no/such/folder does not exist")
  proc = _cli("launch.plot", f"--out={tmp_path}/c.png", run)
  assert proc.returncode == 0 and proc.stdout.split() == [f"{tmp_path}/c.png", f"{tmp_path}/c_diagnostics.png"], (
      proc.stderr[-3000:])
  assert metrics_file.read_jsonl(run / "metrics.jsonl") == _fake_rows(3)
  (run / "metrics.jsonl").write_text("\n".join([lines[0], "garbage", lines[2]]) + "\n")
  _one_line(_cli("launch.plot", f"--out={tmp_path}/c.png", run), 2,
            f"{run}/metrics.jsonl line 2 is not a metrics row: 'garbage'")


def test_plot_of_seeds_is_quiet_and_takes_absls_verbosity_flag(finished, tmp_path):
  """Grouping seeds reads each run's newest checkpoint (its config): nothing of that reaches stderr; `-v 1` (absl's
  form) is accepted."""
  a, b = _copy(finished, tmp_path, "a"), _copy(finished, tmp_path, "b")  # two seeds' worth: their configs are read
  proc = _cli("launch.plot", f"--out={tmp_path}/c.png", a, b)
  assert proc.returncode == 0 and proc.stderr == "", proc.stderr[-3000:]
  proc = _cli("launch.plot", f"--out={tmp_path}/c.png", "-v", "1", a, b)
  assert proc.returncode == 0 and proc.stdout.split() == [f"{tmp_path}/c.png", f"{tmp_path}/c_diagnostics.png"], (
      proc.stderr[-3000:])


# 4. Resuming: lost metrics rows are said, a run with nothing left names its real checkpoint.


def test_metrics_rows_the_checkpoint_covers_are_never_lost_silently(jax_cache, finished, tmp_path):
  wd = _copy(finished, tmp_path)
  rows = _rows(wd)  # updates 4, 8, 12; the newest checkpoint (12) covers all three
  lines = (wd / "metrics.jsonl").read_text().splitlines()
  (wd / "metrics.jsonl").write_text(f"{lines[0]}\nnot json\n")  # a garbage line, and the rest cut off
  proc = subprocess.run([PY, "-m", "launch.train", f"--workdir={wd}", *ARGS, f"--config.total_env_steps={16 * BATCH}"],
                        cwd=REPO, env=_env(jax_cache), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  warnings = [line for line in proc.stdout.splitlines() if line.startswith("warning: ")]
  assert warnings == [
      f"warning: {wd}/metrics.jsonl line 2 is not a metrics row: 'not json'; dropped",
      f"warning: {wd}/metrics.jsonl has no rows after update 4 but the checkpoint resumed covers rows up to update "
      "12 (the file was cut short or rows deleted): those rows are lost; the run goes on, its learning curves with a "
      "gap"], proc.stdout
  after = _rows(wd)
  assert [r["update"] for r in after] == [4, 16] and after[0] == rows[0]
  assert after[1]["metrics_lost"] == " | ".join(w.removeprefix("warning: ") for w in warnings)
  # A deleted file: said the same way (the unit the trainer uses: JsonlFile with the checkpoint's last row).
  (tmp_path / "gone").mkdir()
  jsonl = metrics_file.JsonlFile(tmp_path / "gone" / "metrics.jsonl", resume_update=12, covered_update=12)
  jsonl.close()
  assert jsonl.notes == [f"{tmp_path}/gone/metrics.jsonl has no rows but the checkpoint resumed covers rows up to "
                         "update 12 (the file was deleted): those rows are lost; the run goes on, its learning curves "
                         "with a gap"]
  assert metrics_file.JsonlFile(wd / "metrics.jsonl", resume_update=16, covered_update=16).notes == []


def test_a_finished_run_resumed_with_a_smaller_total_names_its_real_checkpoint(jax_cache, finished, tmp_path):
  wd = _copy(finished, tmp_path)
  proc = subprocess.run([PY, "-m", "launch.train", f"--workdir={wd}", *ARGS, f"--config.total_env_steps={5 * BATCH}"],
                        cwd=REPO, env=_env(jax_cache), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  (named,) = [line.split()[1] for line in proc.stdout.splitlines() if line.strip().startswith("checkpoint ")]
  assert named == f"{wd}/checkpoints/12" and os.path.isdir(named)


# 5. Too few file handles during an async save.


def test_too_few_file_handles_during_a_save_is_one_line_and_keeps_the_checkpoints(jax_cache, finished, tmp_path):
  wd = _copy(finished, tmp_path)
  proc = subprocess.Popen([PY, "-m", "launch.train", f"--workdir={wd}", *ARGS,
                           f"--config.total_env_steps={400 * BATCH}",
                           "--config.checkpoint_every=1", "--config.keep_checkpoints=1000"], cwd=REPO,
                          env=_env(jax_cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.monotonic() + 240
  while not (wd / "checkpoints" / "13").is_dir():  # the resumed run's first save is complete
    assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
    time.sleep(0.01)
  # From here on the process cannot open one more file (the way `ulimit -n` too small shows up mid-run).
  open_now = len(os.listdir(f"/proc/{proc.pid}/fd"))
  resource.prlimit(proc.pid, resource.RLIMIT_NOFILE, (open_now, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
  _, err = proc.communicate(timeout=240)
  result = subprocess.CompletedProcess(proc.args, proc.returncode, "", err)
  last = _one_line(result, 2, "out of file handles: Too many open files", "`ulimit -n`", "nothing saved is lost")
  steps = sorted(int(s) for s in os.listdir(wd / "checkpoints") if s.isdigit())
  safe = int(last.split("nothing saved is lost: ")[1].split(f"{wd}/checkpoints/")[1].split()[0])
  assert 13 <= safe == steps[-1] < 400 and {9, 12} <= set(steps), (last, steps)


def test_the_stderr_filter_drops_only_the_closed_loops_tracebacks_and_outlives_a_crash(tmp_path):
  """TensorStore's native "Event loop is closed" tracebacks (written to fd 2 after a failed save, at any moment) and
  Gloo's connection lines are dropped, even when split across writes and after a progress bar's unfinished line; any
  other traceback and text pass unchanged, and what was written just before an abort still arrives."""
  closed = (b'Traceback (most recent call last):\n  File "base_events.py", line 806, in call_soon_threadsafe\n'
            b'    self._check_closed()\nRuntimeError: Event loop is closed\n')
  other = b'Traceback (most recent call last):\n  File "y.py", line 2, in h\nValueError: a real one\n'
  gloo = b"[Gloo] Rank 1 is connected to 1 peer ranks. Expected number of connected peer ranks is : 1\n"
  script = tmp_path / "writer.py"
  script.write_text(
      "import os, sys, time\n"
      "from launch.files import stderr_filter\n"
      "stderr_filter.install()\n"
      f"os.write(2, b'train:   3%|bar| 1.5k/51k'); os.write(2, {closed[:25]!r}); time.sleep(0.2)\n"
      f"os.write(2, {closed[25:]!r}); os.write(2, {gloo!r}); os.write(2, {other!r})\n"
      "os.write(2, b'[Gloo] any other line\\nF1207 fatal: last words\\n')\n"
      "os.abort()\n")
  proc = subprocess.run([PY, str(script)], cwd=REPO, env=_env_plain(), capture_output=True, timeout=60)
  assert proc.returncode == -6  # SIGABRT
  assert proc.stderr == (b"train:   3%|bar| 1.5k/51k" + other + b"[Gloo] any other line\nF1207 fatal: last words\n"), (
      proc.stderr)


def test_the_stderr_filter_keeps_stdout_and_stderr_in_order_in_one_file(tmp_path):
  """`2>&1` (a log file, a pipe to tee): stdout goes through the filter too, so the filter's hop reorders nothing."""
  script = tmp_path / "writer.py"
  script.write_text(
      "import os, sys\n"
      "from launch.files import stderr_filter\n"
      "stderr_filter.install()\n"
      "for i in range(200):\n"
      "  os.write(2 if i % 2 else 1, b'line %d\\n' % i)\n")
  proc = subprocess.run([PY, str(script)], cwd=REPO, env=_env_plain(), stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT, timeout=60)
  assert proc.returncode == 0 and proc.stdout == b"".join(b"line %d\n" % i for i in range(200)), proc.stdout


def test_asyncios_never_retrieved_orbax_futures_stay_off_the_console(tmp_path):
  """After a save fails on a full disk, asyncio logs each of orbax's writes that nobody awaited ("Future exception was
  never retrieved", through the root logger into absl's handler): the run has said it in one line, so they are
  dropped; the same record from code that is not orbax's is shown."""
  fake = tmp_path / "site-packages" / "orbax" / "checkpoint" / "async_path.py"
  fake.parent.mkdir(parents=True)
  fake.write_text("def write(path):\n  raise OSError(28, 'No space left on device', path)\n")
  other = tmp_path / "mine.py"
  other.write_text("def write(path):\n  raise OSError(28, 'No space left on device', path)\n")
  code = f"""
import asyncio, gc, importlib.util
from absl import logging
from launch.files import fs_errors
logging.use_absl_handler()
fs_errors.install_console_filters()
def load(path):
  spec = importlib.util.spec_from_file_location("m" + str(abs(hash(path))), path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
async def main(write):
  future = asyncio.get_running_loop().run_in_executor(None, write, "{tmp_path}/run/checkpoints/7/x")
  await asyncio.sleep(0.2)
  del future
  gc.collect()
for path in ({str(fake)!r}, {str(other)!r}):
  asyncio.run(main(load(path).write))
"""
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"),
                        check=False, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stderr.count("Future exception was never retrieved") == 1, proc.stderr
  assert str(other) in proc.stderr and str(fake) not in proc.stderr, proc.stderr
