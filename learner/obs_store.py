"""`obs_store`: the precision observations are stored in and seen at — float32, or bfloat16 (half the bytes).

With "bfloat16" the float32 leaves of an observation (after obs_norm) are rounded to bfloat16 before the policy sees
them: the rollout stores the rounded values (pipeline/rollout.step_record, packed two per float32 column by
pipeline/batch_rows.py) and every policy — acting, bootstrapping, learning, evaluating, exported — computes in
float32 on them (`view`), so the stored observation is what the behaviour policy saw and PPO's ratio is exactly 1
at the first minibatch. Other leaves (bool masks, int indexes) are unchanged. Imports nothing of pipeline/ (the
exported policy, learner/policy.py, uses it).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

STORES = ("float32", "bfloat16")
# The clamp before rounding: a bfloat16 of |x| <= 2^126 has an exponent field <= 0xFD, which batch_rows' pair
# packing needs (it adds 1 to it, and the packed float32 must stay finite and normal).
LIMIT = 2.0**126


def narrow(obs, store: str):
  """`obs` as stored: with "bfloat16" its float32 leaves clamped to ±2^126 and rounded to bfloat16 (NaN stays NaN);
  everything else as it is. Idempotent: bfloat16 leaves are left alone."""
  if store == "float32":
    return obs
  if store != "bfloat16":
    raise ValueError(f"obs_store {store!r}: must be one of {list(STORES)}")
  return jax.tree.map(lambda x: jnp.clip(x, -LIMIT, LIMIT).astype(jnp.bfloat16) if x.dtype == jnp.float32 else x, obs)


def widen(obs):
  """bfloat16 leaves as float32 (exact): the network always computes in float32."""
  return jax.tree.map(lambda x: x.astype(jnp.float32) if x.dtype == jnp.bfloat16 else x, obs)


def view(obs, store: str):
  """What the policy computes on: `obs` rounded as stored, in float32. The identity for "float32"."""
  return obs if store == "float32" else widen(narrow(obs, store))
