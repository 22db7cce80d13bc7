"""The workdir sinks (metrics.jsonl, TensorBoard, learning-curve plot) on a local directory and on a remote one
(gs://): the same etils.epath code, here against a fake bucket that, like an object store, cannot append."""
import glob
import json
import os

from etils import epath
from etils.epath import testing as epath_testing
from tensorboardX import record_writer

from launch.files import workdir
from launch.report import metrics_file, plots as plot, sinks


def _rows(n0, n1):
  return [{"update": u, "env_steps": 10 * u, "episode_return": float(u), "eval_return": None} for u in range(n0, n1)]


def _write_run(path, rows, resume_update=0):
  out = sinks.MetricsSinks(path, total_env_steps=100, initial_env_steps=10 * resume_update,
                           resume_update=resume_update)
  for row in rows:
    out.write(row)
  out.close()
  return out


def test_local_workdir_rows_resume_and_plot(tmp_path):
  path = str(tmp_path / "run")
  out = _write_run(path, _rows(1, 5))
  assert metrics_file.read_jsonl(f"{path}/metrics.jsonl") == _rows(1, 5) and not out._jsonl.rewrite  # appended
  out = sinks.MetricsSinks(path, total_env_steps=100, initial_env_steps=20, resume_update=2)
  assert out.last_row == _rows(2, 3)[0]
  for row in _rows(3, 6):
    out.write(row)
  out.close()
  assert metrics_file.read_jsonl(f"{path}/metrics.jsonl") == _rows(1, 6)  # 3 and 4 once each: the resumed run's
  assert glob.glob(f"{path}/tensorboard/events.out.tfevents.*")
  plot.plot_runs([path], f"{path}/learning_curve.png")
  assert os.path.getsize(f"{path}/learning_curve.png") > 1000


def test_rewrite_mode_keeps_every_row_and_cut_lines_are_dropped(tmp_path):
  """The remote-workdir strategy (whole-file rewrite per row) on a local path, after a kill cut the last line."""
  path = tmp_path / "metrics.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in _rows(1, 4)) + '{"update": 4, "env_', encoding="utf-8")
  jsonl = metrics_file.JsonlFile(path, resume_update=3, rewrite=True)
  assert jsonl._file is None  # never opened for appending
  for row in _rows(4, 7):
    jsonl.append(row)
    assert metrics_file.read_jsonl(path) == _rows(1, row["update"] + 1)  # complete after every row
  jsonl.close()
  assert sorted(os.listdir(tmp_path)) == ["metrics.jsonl"]  # no temporary file left


class _FakeBucket:
  """gs://NAME/... kept under a local directory: epath's backends and tensorboardX's gs:// writer are redirected here;
  opening an object for appending fails, as it cannot be done on GCS."""

  def __init__(self, root):
    self.root = str(root)
    self.opened = []

  def local(self, path):
    path = os.fspath(path)
    if path.startswith(self.root):  # the backend's own inner calls, already translated
      return path
    assert path.startswith("gs://"), f"a local path reached the fake bucket: {path}"
    return os.path.join(self.root, path[len("gs://"):])

  def epath_fns(self):
    def open_(original, path, mode):
      self.opened.append((os.fspath(path), mode))
      assert "a" not in mode and "+" not in mode, f"GCS objects cannot be appended to: {path} ({mode})"
      return original(self.local(path), mode)

    def one(original, path, *args, **kwargs):
      return original(self.local(path), *args, **kwargs)

    def two(original, path, dst, *args, **kwargs):
      return original(self.local(path), self.local(dst), *args, **kwargs)

    return dict(open=open_, exists=one, isdir=one, listdir=one, glob=one, walk=one, makedirs=one, mkdir=one,
                remove=one, rmtree=one, stat=one, rename=two, replace=two, copy=two)

  def tensorboard_factory(self):
    bucket = self

    class Factory:
      def open(self, path):
        os.makedirs(os.path.dirname(bucket.local(path)), exist_ok=True)
        return open(bucket.local(path), "wb")  # pylint: disable=consider-using-with

      def directory_check(self, path):
        del path  # object stores have no directories

    return Factory()


def test_remote_workdir_goes_through_epath_without_appending(tmp_path, monkeypatch):
  bucket = _FakeBucket(tmp_path / "gcs")
  (tmp_path / "cwd").mkdir()
  monkeypatch.chdir(tmp_path / "cwd")
  monkeypatch.setitem(record_writer.REGISTERED_FACTORIES, "gs", bucket.tensorboard_factory())
  run = "gs://bucket/runs/exp1"
  assert workdir.is_remote(run) and workdir.absolute(run) == run and not workdir.is_remote(str(tmp_path))
  with epath_testing.mock_epath(**bucket.epath_fns()):
    out = _write_run(run, _rows(1, 5))
    assert out._jsonl.rewrite
    out = sinks.MetricsSinks(run, total_env_steps=100, initial_env_steps=20, resume_update=2)
    assert out.last_row == _rows(2, 3)[0]
    for row in _rows(3, 6):
      out.write(row)
    out.close()
    assert metrics_file.read_jsonl(f"{run}/metrics.jsonl") == _rows(1, 6)
    plot.plot_runs([run], f"{run}/learning_curve.png")
    assert epath.Path(f"{run}/learning_curve.png").exists()
  local = bucket.local(run)
  assert metrics_file.read_jsonl(os.path.join(local, "metrics.jsonl")) == _rows(1, 6)
  assert glob.glob(f"{local}/tensorboard/events.out.tfevents.*")
  assert os.path.getsize(os.path.join(local, "learning_curve.png")) > 1000
  assert os.listdir(tmp_path / "cwd") == []  # nothing went to a local "gs:" directory
  assert any(p.endswith("metrics.jsonl") for p, _ in bucket.opened)  # the files did go through epath
