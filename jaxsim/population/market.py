"""What the population reads from the markets: level prices, best quotes, resting bids and
the outside reference prices.

Shapes: M = N_MARKETS, G = dims.n_levels (grid levels), Q = maker slots of a book,
U = user accounts asking (the leading accounts, before the N_SYSTEM system accounts).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxsim import book as bk
from jaxsim.mechanisms.accounts import level_prices
from jaxsim.types import BID, MARKET_ASSET, N_MARKETS, Params, SimState

Array = jax.Array

MARKET_ASSET_ARR = jnp.array(MARKET_ASSET, dtype=jnp.int32)
# Index row (BASE, STABLE, LST) of each market's traded asset.
MARKET_INDEX_ROW = jnp.array([0, 0, 1, 2], dtype=jnp.int32)


def market_refs(state: SimState) -> Array:
    """(M,) each market's outside reference price: the external venues' mean for spot,
    STABLE and LST, the index for the perp (the LP's quote reference, a program's limit)."""
    ext = state.px.ext
    return jnp.stack([ext[0].mean(), state.px.index[0], ext[1].mean(), ext[2].mean()])


def external_price(state: SimState, market: Array) -> Array:
    """The external venues' mean price of each `market`'s asset (same shape as `market`)."""
    return state.px.ext.mean(-1)[MARKET_INDEX_ROW[market]]


def quotes(state: SimState, params: Params) -> tuple[Array, Array, Array]:
    """(M,) best bid, (M,) best ask and (M,) mid of every market: an empty side reads 0, the
    mid falls back to the last price while either side is empty."""
    bids, asks, mids = [], [], []
    for m in range(N_MARKETS):
        px = level_prices(state, params, m)
        b, a = bk.best_prices(state.book.qty[m], px)
        ok = (b > 0) & jnp.isfinite(a)
        bids.append(b)
        asks.append(jnp.where(jnp.isfinite(a), a, 0.0))
        mids.append(jnp.where(ok, 0.5 * (b + a), state.px.last[m]))
    return jnp.stack(bids), jnp.stack(asks), jnp.stack(mids)


def own_bids(state: SimState, grids: list, market: Array, ids: Array) -> tuple[Array, Array]:
    """Each account of `ids` (U,), its resting bids on its own `market` (U,): (U,) the top bid
    price (0 if none) and (U,) the USDT they reserve. `grids`: M arrays (G,) of level prices."""
    tops, resv = [], []
    for m, px in enumerate(grids):
        q = state.book.qty[m, BID]  # (G, Q)
        tops.append(jnp.max(jnp.where(q > 0, px[:, None], 0.0), axis=0))
        resv.append(jnp.einsum("gq,g->q", q, px))
    mine = state.book.owner[None, :] == ids[:, None]  # (U, Q)
    top = jnp.max(jnp.where(mine, jnp.stack(tops)[market], 0.0), axis=-1)
    reserved = jnp.sum(jnp.where(mine, jnp.stack(resv)[market], 0.0), axis=-1)
    return top, reserved
