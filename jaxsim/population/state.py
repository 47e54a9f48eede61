"""The population's memory (`PopState`): its signals, their end-of-tick update, and the LP's
market-making PnL they track.

Shapes: M = N_MARKETS, A = dims.n_accounts, P = dims.n_programs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxsim.population.market import level_prices
from jaxsim.types import (
    ASK,
    BID,
    LP_SLOT,
    MARKET_ASSET,
    N_MARKETS,
    N_SYSTEM,
    PERP,
    SPOT,
    Params,
    PopState,
    SimState,
)

Array = jax.Array

MOMENTUM_CLIP = 3.0
VOL_EWMA_S = 300.0


def n_background_orders(params: Params) -> int:
    """Background order slots per tick: two per user account plus the program rows."""
    return 2 * (params.dims.n_accounts - N_SYSTEM) + params.dims.n_programs


def init_pop_state(state: SimState, params: Params, equity: Array, lp_equity: Array) -> PopState:
    """Population memory at reset. `equity`: (A,) each account's equity (kept as the
    starting equity `eq0`); `lp_equity`: () the LP's market-making PnL (`lp_equity`)."""
    mark = state.px.mark
    dtype = state.acct.bal.dtype
    z = jnp.zeros((), dtype)
    return PopState(
        ema_fast=jnp.log(mark),
        ema_slow=jnp.log(mark),
        peak_spot=state.px.last[SPOT],
        liq_ewma=z,
        eq0=equity,
        sv=jnp.zeros((3,), dtype),
        int_last=state.px.last,
        int_vol=params.pop.int_vol_ref.astype(dtype),
        lp_peak=lp_equity,
        lp_eq=lp_equity,
        prog_done=jnp.zeros_like(params.pop.prog_qty, dtype),
    )


def update_memory(state: SimState, params: Params, liq_usdt: Array, lp_equity: Array) -> SimState:
    """End-of-tick update of the population's signals: the mark's fast and slow log EWMAs,
    the spot peak, the liquidation EWMA of `liq_usdt` () USDT liquidated this tick, each
    market's (M,) realized volatility and the LP's () PnL `lp_equity` and its peak."""
    p, pp, dt = state.pop, params.pop, params.dt
    lm = jnp.log(state.px.mark)
    a_f = jnp.minimum(dt / pp.trend_fast_s, 1.0)
    a_s = jnp.minimum(dt / pp.trend_slow_s, 1.0)
    a_l = jnp.minimum(dt / pp.liq_ewma_s, 1.0)
    a_v = jnp.minimum(dt / VOL_EWMA_S, 1.0)
    last = state.px.last
    r = jnp.log(jnp.maximum(last, 1e-12) / jnp.maximum(p.int_last, 1e-12))
    var = (1 - a_v) * p.int_vol**2 + a_v * r**2 / dt
    pop = p.replace(
        ema_fast=p.ema_fast + a_f * (lm - p.ema_fast),
        ema_slow=p.ema_slow + a_s * (lm - p.ema_slow),
        peak_spot=jnp.maximum(p.peak_spot, last[SPOT]),
        liq_ewma=p.liq_ewma + a_l * (liq_usdt / dt - p.liq_ewma),
        int_last=last,
        int_vol=jnp.sqrt(var),
        lp_peak=jnp.maximum(p.lp_peak, lp_equity),
        lp_eq=lp_equity,
    )
    return state.replace(pop=pop)


def momentum(state: SimState, params: Params) -> Array:
    """() Normalised trend signal in [-3, 3]: (fast EWMA - slow EWMA) of log mark / scale."""
    m = (state.pop.ema_fast - state.pop.ema_slow) / params.pop.trend_scale
    return jnp.clip(m, -MOMENTUM_CLIP, MOMENTUM_CLIP)


def lp_equity(state: SimState, params: Params, asset_px: Array) -> Array:
    """() The LP's marked equity in USDT (free balances, resting spot reserves and perp uPnL)
    minus the value of holding its starting inventory: its market-making PnL. `asset_px`:
    (4,) each asset's price in USDT."""
    lp = params.dims.lp
    acct = state.acct
    wallet = jnp.sum(acct.bal[lp] * asset_px)
    reserved = 0.0
    for m in range(N_MARKETS):
        if m == PERP:
            continue
        px = level_prices(state, params, m)
        reserved = reserved + jnp.sum(state.book.qty[m, BID, :, LP_SLOT] * px)
        reserved = reserved + state.book.qty[m, ASK, :, LP_SLOT].sum() * asset_px[MARKET_ASSET[m]]
    upnl = acct.pos[lp] * (state.px.mark - acct.entry[lp])
    # Against holding the starting inventory: what market making itself earned or lost.
    a0 = params.accounts
    hold = jnp.sum(a0.bal[lp] * asset_px) + a0.pos[lp] * (state.px.mark - a0.entry[lp])
    return wallet + reserved + upnl - hold
