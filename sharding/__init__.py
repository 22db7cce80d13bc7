"""Sharding: the device mesh, the layout of state and batches on it (and, for several hosts, the runtime)."""
from sharding.mesh import DATA, Layout, make_mesh, split_mesh
