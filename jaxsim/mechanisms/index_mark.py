"""Index and mark prices from the venues and the books (MECHANICS 2, 8)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxsim import book as bk
from jaxsim import prices as pr
from jaxsim.mechanisms import accounts
from jaxsim.types import (
    INDEX_INTERNAL_MARKET,
    PERP,
    Params,
    SimState,
)

Array = jax.Array


# The internal leg's weight goes to 0 once its book's last trade is older than this
# (MECHANICS 2.2 and 8: Binance drops a source with no data for 5 minutes).
INTERNAL_STALE_S = 300.0


def internal_px(state: SimState, params: Params, m) -> Array:
    """The internal leg of market m's index: its last trade price."""
    return state.px.last[m]


def live_weights(state: SimState, params: Params) -> Array:
    """(3, V + 2) index weights in force with a stale internal leg set to 0.

    The leg is stale when its book's last trade (the seeded price at reset counts as a
    trade at tick 0) is more than `INTERNAL_STALE_S` old; `index_price` then renormalises
    the remaining weights. An index whose only weighted leg is the internal book keeps
    it, stale or not: with no other source there is nothing to renormalise onto, and the
    last trade is the only price there is (Binance's "last price protected" fallback).
    """
    w = state.rules.index_weights
    k = w.shape[-1] - 2  # the internal column: venues..., internal, redemption
    last_t = jnp.stack([state.px.last_trade_t[m] for m in INDEX_INTERNAL_MARKET])
    stale = (state.t - last_t) * params.dt > INTERNAL_STALE_S
    others = w.sum(-1) - w[:, k] > 0
    return w.at[:, k].set(jnp.where(stale & others, 0.0, w[:, k]))


def perp_mid(state: SimState, params: Params) -> Array:
    """Mid of the perp book, or its last price while a side is empty."""
    px = accounts.level_prices(state, params, PERP)
    bid, ask = bk.best_prices(state.book.qty[PERP], px)
    ok = (bid > 0) & jnp.isfinite(ask)
    return jnp.where(ok, 0.5 * (bid + ask), state.px.last[PERP])


def index_prices(state: SimState, params: Params) -> Array:
    """(3,) index of BASE, STABLE and LST: the venues, the internal book (unless stale) and
    the redemption leg, weighted, clipped and floored per the rules (MECHANICS 2)."""
    rules = state.rules
    weights = live_weights(state, params)
    ext = state.px.ext
    internal = jnp.stack([internal_px(state, params, m) for m in INDEX_INTERNAL_MARKET])
    # Redemption legs: BASE has none (its weight must be 0), STABLE redeems at 1,
    # LST at lst_rate BASE valued at the BASE index computed first.
    base_c = jnp.concatenate([ext[0], internal[:1], state.px.ext_common[:1]])
    base_idx = pr.index_price(base_c, weights[0], rules.index_clip[0], rules.price_floor[0])
    stab_c = jnp.concatenate([ext[1], internal[1:2], jnp.ones((1,), ext.dtype)])
    lst_c = jnp.concatenate([ext[2], internal[2:3], (params.exo.lst_rate * base_idx)[None]])
    rest = pr.index_price(
        jnp.stack([stab_c, lst_c]),
        weights[1:],
        rules.index_clip[1:],
        rules.price_floor[1:],
    )
    return jnp.concatenate([base_idx[None], rest])


def basis_ma(state: SimState, params: Params) -> Array:
    """Average of the newest basis samples within `basis_window_s` (the mark's basis term)."""
    w = params.dims.basis_window
    n_win = jnp.clip(jnp.round(params.basis_window_s / params.dt), 1, w).astype(jnp.int32)
    n_have = jnp.minimum(state.px.basis_count, n_win)
    # Positions of the newest n_have samples in the ring buffer.
    newest = (state.px.basis_count - 1) % w
    age = (newest - jnp.arange(w)) % w
    use = age < n_have
    return jnp.sum(jnp.where(use, state.px.basis_buf, 0.0)) / jnp.maximum(n_have, 1)


def time_to_funding(state: SimState, params: Params) -> Array:
    """Seconds to the next funding settlement."""
    return jnp.maximum(state.px.next_funding_s - state.t * params.dt, 0.0)


def reprice(state: SimState, params: Params) -> SimState:
    """Index and mark from the current books (used at step 6 and between cascade rounds)."""
    index = index_prices(state, params)
    px = state.px.replace(index=index)
    state = state.replace(px=px)
    mark = pr.mark_price(
        index[0],
        state.px.last[PERP],
        basis_ma(state, params),
        state.px.funding_rate,
        time_to_funding(state, params),
        state.rules.funding_interval_s,
    )
    return state.replace(px=state.px.replace(mark=mark))
