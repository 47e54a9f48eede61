"""Small array helpers for the engine's hot path.

XLA:CPU runs a reduction over a short minor axis (4 assets, a handful of maker slots)
several times slower than the same sum written as elementwise adds, and a stable
argsort of a mask slower than a prefix sum; these helpers give the same values (up to
the order of float additions) in the faster form. They are pure jnp and vmappable.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def sum_last(x: Array) -> Array:
    """`x.sum(-1)` as unrolled adds (for a short, static last axis)."""
    out = x[..., 0]
    for j in range(1, x.shape[-1]):
        out = out + x[..., j]
    return out


def sum_leading(x: Array) -> Array:
    """Sum over every axis but the last, by pairwise halving of the flattened rows."""
    y = x.reshape(-1, x.shape[-1])
    while y.shape[0] > 1:
        h = y.shape[0] // 2
        head = y[:h] + y[h : 2 * h]
        y = head if y.shape[0] % 2 == 0 else jnp.concatenate([head, y[2 * h :]])
    return y[0]


def compact(mask: Array) -> tuple[Array, Array]:
    """(order, count): indices of the True entries of `mask` first, in index order, then
    the False ones (as `argsort(~mask, stable=True)`), and how many are True."""
    n = mask.shape[0]
    idx = jnp.arange(n)
    n_true = jnp.sum(mask.astype(jnp.int32))
    rank_t = jnp.cumsum(mask.astype(jnp.int32)) - 1
    rank_f = n_true + jnp.cumsum((~mask).astype(jnp.int32)) - 1
    pos = jnp.where(mask, rank_t, rank_f)
    return jnp.zeros((n,), jnp.int32).at[pos].set(idx.astype(jnp.int32)), n_true
