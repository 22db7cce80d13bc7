"""Entity observations: a scene as slots of shapes, joints and thrusters with presence masks (Kinetix's structure).

Shapes are polygons then circles (S = P + C slots); joints and thrusters name the shapes they connect by index into
that order. `attention_mask[c, i, j]` says whether shape i may attend to shape j in mask channel c (Kinetix has 4:
all shapes, not-colliding, jointed, in contact); a network splits its heads over the channels. Absent slots may hold
any values: everything that reads them must go through the masks. `cue_entities` (envs/cue_entities.py) is a small pure-JAX
task with these observations, so the pytree path and the entity network are tested without kinetix-env.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct



@struct.dataclass
class EntityObs:
  """One observation (leaves without a batch axis here; the pipeline adds [N] or [T, N] in front)."""
  circles: jax.Array  # [C, Fc] float32
  polygons: jax.Array  # [P, Fp] float32
  joints: jax.Array  # [J, Fj] float32 (Kinetix: each joint twice, once from each side)
  thrusters: jax.Array  # [K, Ft] float32
  circle_mask: jax.Array  # [C] bool
  polygon_mask: jax.Array  # [P] bool
  joint_mask: jax.Array  # [J] bool
  thruster_mask: jax.Array  # [K] bool
  attention_mask: jax.Array  # [channels, S, S] bool, S = P + C (polygons first)
  joint_indexes: jax.Array  # [J, 2] int32: (the shape the joint's features go to, the other shape)
  thruster_indexes: jax.Array  # [K] int32: the shape a thruster is fixed to

  @property
  def shape_mask(self) -> jax.Array:
    return jnp.concatenate([self.polygon_mask, self.circle_mask], axis=-1)
