"""The insurance fund: takeover of what the book could not absorb, auto-deleveraging,
bankrupt accounts' holes, and the fund's unwind."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxsim.mechanisms import collateral, matching, tick_acc
from jaxsim.types import (
    PERP,
    Params,
    SimState,
)

Array = jax.Array


def unwind(state: SimState, acc: tick_acc.TickAcc, params: Params):
    ins = params.dims.insurance
    pos = state.acct.pos[ins]
    frac = jnp.minimum(state.rules.if_unwind_per_s * params.dt, 1.0)
    band = state.rules.price_band[PERP]
    mark = state.px.mark
    side = -jnp.sign(pos)
    lim = jnp.where(side > 0, mark * (1 + band), mark * (1 - band))

    # The perp position first, then the collateral in sale order: one book walk in a loop
    # over the four markets, so the compiled program holds a single copy of it.
    def sell(j, c):
        state, acc = c
        first = j == 0
        asset = collateral.SALE_ASSET_ARR[jnp.maximum(j - 1, 0)]
        m = jnp.where(first, PERP, collateral.SALE_MARKET_ARR[jnp.maximum(j - 1, 0)])
        s_j = jnp.where(first, side, -1.0)
        qty = jnp.where(first, jnp.abs(pos), jnp.maximum(state.acct.bal[ins, asset], 0.0)) * frac
        lim_j = jnp.where(first, lim, 0.0)
        state, acc, sold, proceeds = matching.take(state, params, acc, ins, m, s_j, qty, lim_j)
        acc = acc.replace(
            coll_sold=acc.coll_sold.at[asset].add(jnp.where(first, 0.0, sold)),
            coll_sold_usdt=acc.coll_sold_usdt + jnp.where(first, 0.0, proceeds),
        )
        return state, acc

    return jax.lax.fori_loop(0, 1 + len(collateral.COLLATERAL_SALE_ORDER), sell, (state, acc))
