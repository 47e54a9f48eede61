"""Ledger moves outside the books, before the orders: retail re-entry deposits and the
cross-venue arbitrageurs' trades on the external venues. Shapes: A = dims.n_accounts."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxsim.population.market import MARKET_ASSET_ARR, external_price
from jaxsim.types import BASE, BEH_RETAIL, BEH_XVENUE_ARB, SPOT, USDT, Params, SimState

Array = jax.Array


def external_moves(state: SimState, params: Params, equity: Array) -> SimState:
    """Ledger moves outside the books: retail re-entry deposits and the cross-venue
    arbitrageurs' trades on the external venues (against the outside world at the external
    price). `equity`: (A,) each account's unhaircut equity in USDT. Every move is between
    two accounts, so totals are conserved."""
    dims, pp, dt = params.dims, params.pop, params.dt
    acct = state.acct
    kind = pp.kind
    # Re-entry: new traders' money from the external wallet once the cohort is flat (after
    # a liquidation or a close). It opens new positions; it never tops up a losing one.
    # A spot cohort is flat once its BASE is worth less than its minimum trade.
    flat = jnp.where(
        pp.market == SPOT,
        acct.bal[:, BASE] * state.px.last[SPOT] < pp.min_trade * jnp.maximum(equity, 0.0),
        acct.pos == 0.0,
    )
    low = (kind == BEH_RETAIL) & flat & (equity < pp.reentry_below * state.pop.eq0)
    dep = jnp.where(
        low,
        jnp.minimum(
            jnp.maximum(acct.ext_bal[:, USDT], 0.0), pp.reentry_per_h * state.pop.eq0 * dt / 3600.0
        ),
        0.0,
    )
    dep = jnp.maximum(dep, 0.0)
    bal = acct.bal.at[:, USDT].add(dep)
    ext = acct.ext_bal.at[:, USDT].add(-dep)
    # Cross-venue arbs: sell withdrawn asset externally when the internal book is cheap, buy
    # it externally when the internal book is rich.
    is_x = kind == BEH_XVENUE_ARB
    asset = MARKET_ASSET_ARR[pp.market]
    pe = external_price(state, pp.market)
    internal = state.px.last[pp.market]
    oh = jax.nn.one_hot(asset, 4, dtype=bal.dtype)  # (A, 4)
    held_ext = jnp.sum(ext * oh, -1)
    sell_u = jnp.where(is_x & (internal < pe), jnp.maximum(held_ext, 0.0), 0.0)
    buy_u = jnp.where(
        is_x & (internal > pe * (1 + pp.threshold)), jnp.maximum(ext[:, USDT], 0.0) / pe, 0.0
    )
    d_asset = buy_u - sell_u  # (A,) units the arb gains externally
    d_usdt = (sell_u - buy_u) * pe
    ext = ext + d_asset[:, None] * oh
    ext = ext.at[:, USDT].add(d_usdt)
    out = dims.outside
    # The outside world is the counterparty (its exchange-side balances hold its inventory).
    bal = bal.at[out].add(-jnp.sum(d_asset[:, None] * oh, 0))
    bal = bal.at[out, USDT].add(-jnp.sum(d_usdt))
    return state.replace(acct=acct.replace(bal=bal, ext_bal=ext))
