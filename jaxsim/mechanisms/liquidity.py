"""The liquidity provider: re-centres each market's grid and re-quotes its depth profile."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxsim import book as bk
from jaxsim import population as popm
from jaxsim.mechanisms import accounts
from jaxsim.ops import materialize
from jaxsim.types import (
    ASK,
    BASE,
    BID,
    LP_SLOT,
    LST,
    MARKET_ASSET,
    N_MARKETS,
    PERP,
    STABLE,
    USDT,
    Params,
    SimState,
)

Array = jax.Array


def lp_center(state: SimState, params: Params, m, q_m: Array, px: Array) -> Array:
    """The LP's unskewed quote centre for market m: `lp_ref_weight` of the market's
    reference price and the rest of the book's mid (last price while a side is empty)."""
    ref = popm.market_refs(state)[m]
    bid, ask = bk.best_prices(q_m, px)
    # With one side empty (swept) the last trade is the best estimate of the book's price.
    mid = jnp.where((bid > 0) & jnp.isfinite(ask), 0.5 * (bid + ask), state.px.last[m])
    w = params.markets.lp_ref_weight[m]
    return w * ref + (1 - w) * mid


def recentre(params: Params, m, q_m, ah_m, origin, center):
    """Shift market m's grid (slice q_m, ah_m, origin) back around `center` once it drifted
    a quarter of the grid away. Returns (q_m, ah_m, origin, dropped (2, G, Q) on the old
    grid, old level prices (G,))."""
    g = params.dims.n_levels
    tick = params.markets.tick_size[m]
    c_lvl = center / tick - origin
    off = c_lvl - g / 2
    k = jnp.where(jnp.abs(off) > g / 4, jnp.round(off), 0.0).astype(jnp.int32)
    px_old = bk.level_prices(origin, tick, g)
    q_m, ah_m, dropped = bk.shift(q_m, ah_m, k)
    return q_m, ah_m, origin + k, dropped, px_old


# Volatility row (of the external venues' BASE, STABLE, LST) each market's maker watches.
_VOL_ROW = jnp.array([(BASE, STABLE, LST).index(x) for x in MARKET_ASSET], jnp.int32)


def requote(state: SimState, params: Params) -> SimState:
    """The LP re-centres each grid and re-quotes its depth toward its target profile.

    Markets are an array axis: every book-sized step runs on all markets at once. The only
    thing the markets share is the LP's USDT, which pays for its spot bids market by
    market in market order (`_pay_spot_quotes`, on (2, G) vectors), as a loop over the
    markets would."""
    mp, dims = params.markets, params.dims
    book = state.book
    ms = jnp.arange(N_MARKETS)
    g = dims.n_levels
    px0 = jax.vmap(lambda o, t: bk.level_prices(o, t, g))(book.origin, mp.tick_size)

    def plan(m, q_m, ah_m, origin, px_m):
        """Market m's quote centre (skewed against its inventory), the re-centred grid and
        the LP's cuts and (unpaid) additions toward its target profile."""
        center = lp_center(state, params, m, q_m, px_m)
        center = center * (1.0 - _inventory_skew(state, params, m, q_m))
        # Once per market, not once per level and slot of the book loops it feeds.
        center = materialize(center)
        q_m, ah_m, origin, dropped, px_old = recentre(params, m, q_m, ah_m, origin, center)
        px = bk.level_prices(origin, mp.tick_size[m], g)
        tgt = _target_profile(state, params, m, px, center)
        # Pull excess at once (makers withdraw fast), refill at the resilience rate. A
        # level is either shrunk or grown, never both (no dust top-up of a level just
        # shrunk).
        fill = jnp.minimum(mp.lp_resilience_per_s[m] * params.dt, 1.0)
        own = q_m[:, :, LP_SLOT]
        cut = jnp.maximum(own - tgt, 0.0)
        kept = own - cut
        add = jnp.where(cut > 0, 0.0, jnp.maximum(tgt - kept, 0.0) * fill)
        # Never cross the book left after the cuts: bids below its best ask, asks above
        # its best bid.
        bid, ask = bk.best_prices(q_m.at[:, :, LP_SLOT].set(kept), px)
        add = jnp.where(jnp.stack([px < ask, px > bid]), add, 0.0)
        # Spot orders dropped off the grid held reserves (bids USDT, asks the asset).
        n = dims.n_accounts
        refund_usdt = accounts.per_account(book, jnp.einsum("gq,g->q", dropped[BID], px_old), n)
        refund_asset = accounts.per_account(book, dropped[ASK].sum(0), n)
        return q_m, ah_m, origin, px, cut, add, refund_usdt, refund_asset

    q, ah, origin, px, cut, add, refund_usdt, refund_asset = jax.vmap(plan)(
        ms, book.qty, book.ahead, book.origin, px0
    )
    bal = state.acct.bal
    adds = []
    for m in range(N_MARKETS):
        if m == PERP:  # perp orders held no reserves and cost nothing to place
            adds.append(add[m])
            continue
        bal = bal.at[:, USDT].add(refund_usdt[m])
        bal = bal.at[:, MARKET_ASSET[m]].add(refund_asset[m])
        add_m, bal = _pay_spot_quotes(params, m, px[m], cut[m], add[m], bal)
        adds.append(add_m)
    q, ah = jax.vmap(bk.requote, in_axes=(0, 0, None, 0, 0))(q, ah, LP_SLOT, cut, jnp.stack(adds))
    book = book.replace(qty=q, ahead=ah, origin=origin)
    return state.replace(book=book, acct=state.acct.replace(bal=bal))


def _inventory_skew(state: SimState, params: Params, m, q_m) -> Array:
    """Fraction by which the LP moves its quote centre down: positive when long against
    its starting inventory (quote lower), negative when short. Perp: against the starting
    position, or (perp_skew_vs: flat) against all of it: a maker short the crowd's longs
    quotes the perp up to buy its inventory back."""
    pp, lp = params.pop, params.dims.lp
    asset = accounts.MARKET_ASSET_ARR[m]
    dev_perp = state.acct.pos[lp] - (1.0 - pp.lp_perp_flat) * params.accounts.pos[lp]
    held = state.acct.bal[lp, asset] + q_m[ASK, :, LP_SLOT].sum()
    dev = jnp.where(m != PERP, held - params.accounts.bal[lp, asset], dev_perp)
    return jnp.clip(dev / pp.lp_inv_unit[m], -5.0, 5.0) * pp.lp_skew_bps[m] * 1e-4


def _target_profile(state: SimState, params: Params, m, px, center) -> Array:
    """(2, G) the LP's target depth per level, bids then asks: decaying away from the
    centre, outside a half-spread that widens with excess volatility, scaled down by
    excess volatility (the venues' and its own book's) and by its drawdown."""
    mp, pp = params.markets, params.pop
    dist_bps = jnp.abs(px - center) / center * 1e4
    row = _VOL_ROW[m]
    int_ref = pp.int_vol_ref[m]
    vol_ratio = jnp.maximum(
        state.px.vol[row] / params.exo.vol_ref[row],
        jnp.where(int_ref > 0, state.pop.int_vol[m] / jnp.maximum(int_ref, 1e-30), 0.0),
    )
    excess_vol = jnp.maximum(vol_ratio - 1.0, 0.0)
    loss = jnp.maximum(state.pop.lp_peak - state.pop.lp_eq, 0.0) / pp.lp_loss_ref
    scale = 1.0 / (1.0 + mp.lp_vol_withdraw[m] * excess_vol) / (1.0 + pp.lp_loss_withdraw * loss)
    prof = mp.lp_depth[m] * jnp.exp(-dist_bps / mp.lp_decay_bps[m]) * scale
    gap = mp.lp_half_spread_ticks[m] * mp.tick_size[m] * (1.0 + pp.lp_widen[m] * excess_vol)
    tgt_bid = jnp.where(px <= center - gap + 1e-9 * center, prof, 0.0)
    tgt_ask = jnp.where(px >= center + gap - 1e-9 * center, prof, 0.0)
    return jnp.stack([tgt_bid, tgt_ask])


def _pay_spot_quotes(params: Params, m, px, cut, add, bal):
    """Spot: cut orders refund their reserves; new ones are paid from what the LP holds
    (scaled down to what it can pay). Returns (add (2, G), balances); perp unchanged."""
    lp = params.dims.lp
    is_spot = m != PERP
    asset = accounts.MARKET_ASSET_ARR[m]
    bal_s = bal.at[lp, USDT].add(jnp.sum(cut[BID] * px)).at[lp, asset].add(cut[ASK].sum())
    cost = jnp.sum(add[BID] * px)
    add_bid = add[BID] * jnp.minimum(
        1.0, jnp.maximum(bal_s[lp, USDT], 0.0) / jnp.maximum(cost, 1e-30)
    )
    need = add[ASK].sum()
    add_ask = add[ASK] * jnp.minimum(
        1.0, jnp.maximum(bal_s[lp, asset], 0.0) / jnp.maximum(need, 1e-30)
    )
    bal_s = bal_s.at[lp, USDT].add(-jnp.sum(add_bid * px)).at[lp, asset].add(-add_ask.sum())
    add = jnp.where(is_spot, jnp.stack([add_bid, add_ask]), add)
    return add, jnp.where(is_spot, bal_s, bal)
