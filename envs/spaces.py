"""Small jittable spaces (gymnax style) and their conversion to gymnasium spaces.

`Box` has `low`, `high`, `shape` and `dtype` like `gymnax.environments.spaces.Box`, with a
jittable `sample(key)` and `contains(x)`, so PureJaxRL-style trainers can read action bounds
and observation shapes from it.
"""

from __future__ import annotations

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


class Box:
    """Continuous box in R^shape with elementwise bounds.

    Args:
        low: lower bound (scalar or array broadcastable to `shape`).
        high: upper bound (scalar or array broadcastable to `shape`).
        shape: the shape of one element.
        dtype: element dtype (float32 for every space in this package).
    """

    def __init__(
        self,
        low: float | np.ndarray,
        high: float | np.ndarray,
        shape: tuple[int, ...],
        dtype=jnp.float32,
    ):
        self.shape = tuple(int(s) for s in shape)
        self.dtype = jnp.dtype(dtype)
        self.low = np.broadcast_to(np.asarray(low, self.dtype), self.shape).copy()
        self.high = np.broadcast_to(np.asarray(high, self.dtype), self.shape).copy()

    def sample(self, key: Array) -> Array:
        """A uniform sample of shape `shape` (jittable)."""
        return jax.random.uniform(
            key, self.shape, self.dtype, jnp.asarray(self.low), jnp.asarray(self.high)
        )

    def contains(self, x: Array) -> Array:
        """Whether x has the shape and lies within the bounds (a traced bool)."""
        x = jnp.asarray(x)
        if x.shape != self.shape:
            return jnp.asarray(False)
        return jnp.all((x >= self.low) & (x <= self.high))

    def __repr__(self) -> str:
        return f"Box(low={float(self.low.min())}, high={float(self.high.max())}, shape={self.shape}, dtype={self.dtype})"


def to_gymnasium(space: Box) -> gymnasium.spaces.Box:
    """The equivalent `gymnasium.spaces.Box`."""
    return gymnasium.spaces.Box(low=space.low, high=space.high, shape=space.shape, dtype=np.float32)
