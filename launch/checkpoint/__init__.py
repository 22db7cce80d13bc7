"""Full-state checkpoints of a run: `format` (what a step holds), `compat` (whether it may be resumed), `store` (save
and restore under WORKDIR/checkpoints), `reader` (the checks every reader of a run makes), `params` (another run's
params for `config.restore_from`), `saved_run` (a run's policy for evaluate and export)."""
from launch.checkpoint.params import read_params
from launch.checkpoint.store import NonFiniteError, Preempted, Resume, RunCheckpoints

__all__ = ["NonFiniteError", "Preempted", "Resume", "RunCheckpoints", "read_params"]
