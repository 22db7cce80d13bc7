"""The runtime type checker used by the jaxtyping import hook in tests.

Functions and methods are checked with beartype (array shapes and dtypes included). Dataclass `__init__`s are not:
JAX rebuilds our pytree dataclasses with non-array leaves (shardings, ShapeDtypeStructs) when it maps over them,
which is correct use that a field check would reject.
"""
from beartype import beartype


def typechecker(fn):
  if getattr(fn, "__name__", "") == "__init__":
    return fn
  return beartype(fn)
