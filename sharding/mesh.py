"""Device mesh and the layout of the training state on it.

One mesh axis, `data`, carries the env axis: env states, observations and rollouts are split over it; params and
optimizer state are replicated. All placement decisions live here; the pipeline only calls `Layout.constrain_envs`
at a few points where XLA's propagation needs a hint.
"""
from __future__ import annotations

import dataclasses

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA = "data"


def mesh_devices(data_devices: int, devices: list) -> list:
  """The devices of a `data_devices`-long mesh: all of them for -1, else the first ones. With several processes the
  mesh takes whole processes, so all of them: every process runs the run's programs and must hold a part of their
  mesh, and a mesh of some of each process's devices would leave the others idle on every host and cut the TPU
  interconnect's rings (`topology_order`) short. Fewer devices: fewer processes, or fewer devices per process."""
  if data_devices == -1:
    return list(devices)
  if not 1 <= data_devices <= len(devices):
    raise ValueError(f"mesh.data={data_devices} but {len(devices)} devices are visible")
  processes = {d.process_index for d in devices}
  if len(processes) > 1 and data_devices != len(devices):
    raise ValueError(f"mesh.data={data_devices}: with {len(processes)} processes the mesh takes whole processes, so "
                     f"-1 or all {len(devices)} devices")
  return list(devices[:data_devices])


def make_mesh(data_devices: int = -1, devices=None) -> Mesh:
  """A 1-D mesh over `data_devices` devices (-1: all visible devices, across all processes; see mesh_devices), in
  the interconnect's order on TPUs (`topology_order`)."""
  return Mesh(topology_order(mesh_devices(data_devices, list(jax.devices() if devices is None else devices))),
              (DATA,))


def topology_order(devices: list) -> np.ndarray:
  """On TPUs, `devices` in the order of the interconnect's rings (jax.experimental.mesh_utils, as jax.make_mesh
  orders them), so the gradient all-reduce's neighbours on the data axis are physical neighbours; elsewhere, or where
  mesh_utils does not know the topology, as given. Results do not depend on the order (per-env randomness and
  minibatches are drawn over global env indices)."""
  if not devices or getattr(devices[0], "platform", None) != "tpu":
    return np.asarray(devices)
  from jax.experimental import mesh_utils  # pylint: disable=import-outside-toplevel
  try:
    return mesh_utils.create_device_mesh((len(devices),), devices=devices, allow_split_physical_axes=True)
  except (ValueError, NotImplementedError, AssertionError, KeyError):  # a topology mesh_utils does not know
    return np.asarray(devices)


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where each part of the training state lives on `mesh`."""
  mesh: Mesh

  @property
  def num_shards(self) -> int:
    return self.mesh.shape[DATA]

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())

  def env_sharding(self, ndim: int, axis: int = 0) -> NamedSharding:
    """Splits dimension `axis` (the env axis) of an ndim-array over `data`."""
    if ndim == 0:
      return self.replicated
    spec = [None] * ndim
    spec[axis] = DATA
    return NamedSharding(self.mesh, P(*spec))

  def env_shardings(self, tree, axis: int = 0):
    """Shardings for a pytree of arrays (or ShapeDtypeStructs) whose `axis` is the env axis."""
    return jax.tree.map(lambda x: self.env_sharding(np.ndim(x) if not hasattr(x, "ndim") else x.ndim, axis), tree)

  def constrain_envs(self, tree, axis: int = 0):
    """with_sharding_constraint: the env axis of every leaf is split over `data`."""
    return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, self.env_sharding(x.ndim, axis)), tree)

  def runner_shardings(self, runner):
    """RunnerState of shardings: the envs split over `data`, what they share replicated. The split is the runner's
    own (pipeline/rollout.py RunnerState.per_env / shared), which this layer may not import."""
    replicated = jax.tree.map(lambda _: self.replicated, runner.shared())
    return self.env_shardings(runner.per_env()).with_shared(replicated)

  def train_state_shardings(self, state_shapes):
    """TrainState of shardings: the runner's envs are split over envs, everything else replicated."""
    replicated = jax.tree.map(lambda _: self.replicated, state_shapes)
    return replicated.replace(runner=self.runner_shardings(state_shapes.runner))


def split_mesh(mesh: Mesh, actor_devices: int) -> tuple[Mesh, Mesh]:
  """Separate sub-meshes: the first `actor_devices` devices step envs, the rest train (0: both share `mesh`)."""
  if actor_devices == 0:
    return mesh, mesh
  devices = list(mesh.devices.flat)
  if not 0 < actor_devices < len(devices):
    raise ValueError(f"pipeline.actor_devices={actor_devices} must leave devices for the learner ({len(devices)})")
  return Mesh(np.asarray(devices[:actor_devices]), (DATA,)), Mesh(np.asarray(devices[actor_devices:]), (DATA,))
