"""L2 order book on a tick grid with per-owner FIFO queues.

One market's book is `qty[side, level, owner]` and `ahead[side, level, owner]`: the size an
owner rests at a level and the size queued in front of it. Level j's price is
`(origin + j) * tick`. A fill of x at a level gives owner a `clip(x - ahead_a, 0, qty_a)`,
which is exact FIFO as long as owners' orders occupy disjoint queue intervals, an
invariant every operation here keeps: additions go to the back of the queue (adding to an
existing order loses its priority, as on real venues), cancellations shift those behind.

An owner here is a maker slot (the engine maps slots to accounts, `types.Book.owner`), so
the arrays are as wide as the number of accounts resting orders at once, not the number of
accounts. All functions act on a single market and are vmappable; there are no Python
loops over levels or owners.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxsim.ops import sum_last
from jaxsim.types import ASK, BID

Array = jax.Array


def level_prices(origin: Array, tick: Array, n_levels: int) -> Array:
    return (origin + jnp.arange(n_levels)).astype(tick.dtype) * tick


def best_prices(q: Array, px: Array) -> tuple[Array, Array]:
    """Best bid and ask (0 / inf when a side is empty). q: (2, G, Q)."""
    tot = sum_last(q)
    bid = jnp.max(jnp.where(tot[BID] > 0, px, 0.0))
    ask = jnp.min(jnp.where(tot[ASK] > 0, px, jnp.inf))
    return bid, ask


def walk(tot: Array, px: Array, taker_side: Array, qty: Array, limit: Array) -> Array:
    """Sizes filled per level by a taker of `qty` base units.

    Args:
      tot: (G,) resting size on the side being hit (asks for a buy, bids for a sell).
      px: (G,) level prices.
      taker_side: +1 buy (walks asks upwards), -1 sell (walks bids downwards).
      qty: size wanted.
      limit: worst acceptable price (a buy fills at px <= limit, a sell at px >= limit).
    """
    ok = jnp.where(taker_side > 0, px <= limit, px >= limit)
    avail = jnp.where(ok, tot, 0.0)
    # Buys consume low prices first, sells high prices first.
    order_avail = jnp.where(taker_side > 0, avail, avail[::-1])
    before = jnp.cumsum(order_avail) - order_avail
    fill_ordered = jnp.clip(qty - before, 0.0, order_avail)
    # A level reached only through rounding of the cumulative sum gets nothing.
    eps = dust_eps(tot.dtype)
    fill_ordered = jnp.where(fill_ordered > eps * jnp.maximum(qty, before), fill_ordered, 0.0)
    return jnp.where(taker_side > 0, fill_ordered, fill_ordered[::-1])


def walk_for_quote(tot: Array, px: Array, quote: Array, limit: Array) -> Array:
    """Sizes a seller fills per bid level to raise `quote` USDT (bids walked downwards)."""
    avail = jnp.where(px >= limit, tot, 0.0)[::-1]
    p = px[::-1]
    proceeds = avail * p
    before = jnp.cumsum(proceeds) - proceeds
    fill = jnp.clip((quote - before) / jnp.maximum(p, 1e-30), 0.0, avail)
    return fill[::-1]


def consume(q_side: Array, ahead_side: Array, fill_lvl: Array) -> tuple[Array, Array, Array]:
    """Take `fill_lvl` (G,) from the FIFO queues of one side. Returns (q, ahead, owner_fill).

    Queue offsets are kept incrementally, so they carry rounding; an order left with a
    remainder within rounding of zero (or reached with an offset within rounding of the
    fill) is filled completely rather than left as dust that would count as a best price.
    The caller must take `owner_fill.sum(-1)` as the traded size per level, so taker and
    makers always trade the same amount.
    """
    eps = dust_eps(q_side.dtype)
    scale = jnp.maximum(fill_lvl, sum_last(q_side))[:, None]
    f = jnp.where(fill_lvl[:, None] > 0, jnp.clip(fill_lvl[:, None] - ahead_side, 0.0, q_side), 0.0)
    hit = (fill_lvl[:, None] > 0) & (fill_lvl[:, None] > ahead_side - eps * scale)
    f = jnp.where(hit & (q_side - f <= eps * scale), q_side, f)
    q_new = q_side - f
    ahead_new = jnp.maximum(ahead_side - fill_lvl[:, None], 0.0)
    ahead_new = jnp.where((q_new > 0) & (ahead_new > eps * scale), ahead_new, 0.0)
    return q_new, ahead_new, f


def dust_eps(dtype) -> float:
    """Relative size treated as rounding noise in book arithmetic."""
    return float(jnp.finfo(dtype).eps) * 64


def add(q_side: Array, ahead_side: Array, level: Array, owner: Array, size: Array):
    """Rest `size` at `level` for `owner`, at the back of the queue (scalar level/owner).

    `add_levels` on the one row, with the owner's column read and written through its
    one-hot mask (exact: one value plus zeros), which under vmap is cheaper than the
    gather and scatter of a traced owner index.
    """
    row_q = jax.lax.dynamic_slice_in_dim(q_side, level, 1, 0)[0]
    row_a = jax.lax.dynamic_slice_in_dim(ahead_side, level, 1, 0)[0]
    oh = (jnp.arange(q_side.shape[-1]) == owner).astype(q_side.dtype)
    old = sum_last(row_q * oh)
    own_ahead = sum_last(row_a * oh)
    grows = size > 0
    behind = (row_a > own_ahead) & (row_q > 0) & (oh == 0) & grows & (old > 0)
    row_a = jnp.where(behind, jnp.maximum(row_a - old, 0.0), row_a)
    others = sum_last(row_q) - old
    row_a = row_a * (1 - oh) + oh * jnp.where(grows, others, own_ahead)
    row_q = row_q + oh * jnp.maximum(size, 0.0)
    return (
        jax.lax.dynamic_update_slice_in_dim(q_side, row_q[None], level, 0),
        jax.lax.dynamic_update_slice_in_dim(ahead_side, row_a[None], level, 0),
    )


def add_levels(q_side: Array, ahead_side: Array, owner: Array, sizes: Array):
    """Add `sizes` (G,) for one owner at every level, each at the back of its queue."""
    old = q_side[:, owner]
    own_ahead = ahead_side[:, owner]
    grows = sizes > 0
    # Topping up = cancel then re-add at the back: owners queued behind the old order move
    # forward by its size, then the whole order goes behind everyone.
    behind = (ahead_side > own_ahead[:, None]) & (q_side > 0)
    behind = behind.at[:, owner].set(False) & (grows & (old > 0))[:, None]
    ahead_side = jnp.where(behind, jnp.maximum(ahead_side - old[:, None], 0.0), ahead_side)
    others = sum_last(q_side) - old
    ahead_side = ahead_side.at[:, owner].set(jnp.where(grows, others, own_ahead))
    q_side = q_side.at[:, owner].add(jnp.maximum(sizes, 0.0))
    return q_side, ahead_side


def cancel_levels(q_side: Array, ahead_side: Array, owner: Array, sizes: Array):
    """Cancel up to `sizes` (G,) of one owner's orders; the back of its order goes first.

    Owners queued behind the owner move forward by the cancelled size.
    Returns (q, ahead, cancelled (G,)). The owner's column is read and written through its
    one-hot mask (exact), not a gather / scatter of a traced index.
    """
    is_owner = jnp.arange(q_side.shape[-1]) == owner
    own_q = sum_last(jnp.where(is_owner, q_side, 0.0))
    c = jnp.clip(sizes, 0.0, own_q)
    own_ahead = sum_last(jnp.where(is_owner, ahead_side, 0.0))
    behind = (ahead_side > own_ahead[:, None]) & (q_side > 0) & ~is_owner
    ahead_side = jnp.maximum(ahead_side - jnp.where(behind, c[:, None], 0.0), 0.0)
    q_side = jnp.where(is_owner, (own_q - c)[:, None], q_side)
    ahead_side = jnp.where(q_side > 0, ahead_side, 0.0)
    return q_side, ahead_side, c


def requote(q: Array, ahead: Array, owner, cancel: Array, add: Array):
    """Cancel `cancel` (S, G) then add `add` (S, G) for one owner in one pass over the book.

    Equal to `cancel_levels` followed by `add_levels` on each side when no level has both a
    cancellation and an addition (a re-quote either shrinks a level or grows it). q, ahead:
    (S, G, A). Returns (q, ahead).
    """
    own_q = q[..., owner]
    own_ah = ahead[..., owner]
    c = jnp.clip(cancel, 0.0, own_q)
    q1 = own_q - c
    grows = add > 0
    is_owner = jnp.arange(q.shape[-1]) == owner
    q_post = jnp.where(is_owner, q1[..., None], q)
    others = sum_last(q_post) - q1
    # Owners queued behind move forward by the cancelled size, or, where the order is
    # topped up (cancelled and re-added at the back), by its whole old size.
    d = jnp.where(c > 0, c, jnp.where(grows & (q1 > 0), q1, 0.0))
    behind = (ahead > own_ah[..., None]) & (q > 0) & ~is_owner
    ah = jnp.where(behind, jnp.maximum(ahead - d[..., None], 0.0), ahead)
    ah = jnp.where(q_post > 0, ah, 0.0)
    own_ah_new = jnp.where(grows, others, jnp.where(q1 > 0, own_ah, 0.0))
    ah = jnp.where(is_owner, own_ah_new[..., None], ah)
    q_new = jnp.where(is_owner, (q1 + jnp.maximum(add, 0.0))[..., None], q)
    return q_new, ah


def shift(q: Array, ahead: Array, k: Array) -> tuple[Array, Array, Array]:
    """Re-centre the grid: new level j holds old level j + k. Dropped orders are returned.

    Returns (q, ahead, dropped) where dropped (2, G, Q) is on the *old* grid. The move is a
    dynamic slice of the book padded with empty levels (not a gather).
    """
    n = q.shape[1]
    k = jnp.clip(k, -n, n)  # a shift of the whole grid or more drops everything alike
    pad = jnp.zeros_like(q)
    q_new = jax.lax.dynamic_slice_in_dim(jnp.concatenate([pad, q, pad], 1), n + k, n, 1)
    a_new = jax.lax.dynamic_slice_in_dim(jnp.concatenate([pad, ahead, pad], 1), n + k, n, 1)
    old = jnp.arange(n) - k  # where old level j lands
    kept = (old >= 0) & (old < n)
    dropped = jnp.where(kept[None, :, None], 0.0, q)
    return q_new, a_new, dropped


def depth_within(q: Array, px: Array, mid: Array, frac: Array) -> Array:
    """Resting size within mid * (1 +/- frac) per side: (2,)."""
    tot = sum_last(q)
    near = jnp.abs(px - mid) <= frac * mid
    return jnp.sum(jnp.where(near[None, :], tot, 0.0), axis=-1)


def depth_notional(q: Array, px: Array, frac: Array) -> Array:
    """USDT resting on both sides within mid * (1 +/- frac): () (0 for an empty book).

    The mid is the best bid and ask's midpoint, or the one best price of a one-sided book;
    each level counts at its own price.
    """
    bid, ask = best_prices(q, px)
    has_b, has_a = bid > 0, jnp.isfinite(ask)
    ask = jnp.where(has_a, ask, 0.0)
    mid = jnp.where(has_b & has_a, 0.5 * (bid + ask), jnp.where(has_b, bid, ask))
    tot = sum_last(q).sum(0)
    near = jnp.abs(px - mid) <= frac * mid
    return jnp.where(mid > 0, jnp.sum(jnp.where(near, tot * px, 0.0)), 0.0)


def impact_price(tot: Array, px: Array, taker_side: Array, notional: Array) -> Array:
    """Average fill price of a market order of `notional` USDT (no state change).

    If the side holds less than `notional`, the average is over what it holds; NaN when
    the side is empty (callers decide what an empty side means).
    """
    avail = jnp.where(taker_side > 0, tot, tot[::-1])
    p = jnp.where(taker_side > 0, px, px[::-1])
    val = avail * p
    before = jnp.cumsum(val) - val
    take_val = jnp.clip(notional - before, 0.0, val)
    take_qty = take_val / jnp.maximum(p, 1e-30)
    got = take_qty.sum()
    return jnp.where(got > 0, take_val.sum() / jnp.maximum(got, 1e-30), jnp.nan)
