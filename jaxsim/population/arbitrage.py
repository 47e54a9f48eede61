"""Arbitrageurs: basis (BEH_BASIS_ARB, perp against spot) and cross-venue (BEH_XVENUE_ARB,
an internal book against the external venues). See the package docstring for the rules.
Shapes: U user accounts; every row is computed for every account and used for its kind."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxsim.population.view import View
from jaxsim.types import (
    BASE,
    BEH_XVENUE_ARB,
    KIND_CANCEL,
    KIND_LIMIT,
    KIND_MARKET,
    KIND_NONE,
    KIND_TRANSFER_IN,
    KIND_TRANSFER_OUT,
    PERP,
    SPOT,
    USDT,
    Params,
    SimState,
)

Array = jax.Array


class BasisArb(NamedTuple):
    """A basis arbitrageur's two legs this tick, per user account (U,)."""

    basis: Array  # () (perp mid - spot mid) / spot mid
    gap: Array  # perp leg: target position less the position (its sign is the side)
    qty: Array  # perp leg: base units (0: none)
    limit: Array  # perp leg: price limit (spot mid +/- exit; 0 once |basis| < exit)
    hedge_gap: Array  # spot hedge: BASE to buy (> 0) or sell (< 0)
    hedge_qty: Array  # spot hedge: base units (0: none)


class XvenueArb(NamedTuple):
    """A cross-venue arbitrageur's trade (slot 1) and transfer (slot 2), per user (U,)."""

    qty: Array  # trade: base units
    side: Array  # trade: +1 buy / -1 sell
    limit: Array  # trade: limit price
    kind: Array  # trade: KIND_MARKET, KIND_LIMIT (standing bid) or KIND_CANCEL (stale bid)
    stale: Array  # bool: its standing bid is above its reservation price (cancel it)
    t_kind: Array  # transfer: KIND_TRANSFER_IN / _OUT or KIND_NONE
    t_asset: Array  # transfer: the asset moved
    t_qty: Array  # transfer: units moved


def basis_arb(v: View, state: SimState, params: Params) -> BasisArb:
    """Perp leg toward +/- `lev_target` x equity while |basis| > threshold (flat once it is
    under `exit`), and the spot hedge of the current perp position."""
    pp, n_user, mids = params.pop, v.n_user, v.mids
    basis = (mids[PERP] - mids[SPOT]) / mids[SPOT]
    thr, ex = pp.threshold[:n_user], pp.exit[:n_user]
    h = jnp.minimum(pp.lev_target[:n_user] * v.eq / v.mark, v.cap_q)
    tgt = jnp.where(
        basis < -thr, h, jnp.where(basis > thr, -h, jnp.where(jnp.abs(basis) < ex, 0.0, v.pos))
    )
    b_gap = tgt - v.pos
    b_qty = jnp.where(
        v.act & (jnp.abs(b_gap) > pp.min_trade[:n_user] * h),
        jnp.abs(b_gap) * pp.speed[:n_user],
        0.0,
    )
    # Spot hedge of the current perp position around the starting BASE inventory.
    spot0 = params.accounts.bal[:n_user, BASE]
    s_gap = (spot0 - v.pos) - v.bal[:, BASE]
    s_gap = jnp.maximum(s_gap, -v.bal[:, BASE])  # cannot sell BASE it does not hold
    s_qty = jnp.where(jnp.abs(s_gap) > pp.min_trade[:n_user] * h, jnp.abs(s_gap), 0.0)
    # The perp leg is price-limited: it trades only while the perp stays beyond spot +/- exit
    # (it stops once its own flow has closed the gap).
    b_limit = jnp.where(jnp.abs(basis) < ex, 0.0, mids[SPOT] * (1.0 + jnp.sign(b_gap) * ex))
    return BasisArb(basis, b_gap, b_qty, b_limit, s_gap, s_qty)


def xvenue_arb(v: View, state: SimState, params: Params) -> XvenueArb:
    """Buy on its book under the external price by more than `threshold`, sell above it; with
    `bid = 1` a standing bid at the reservation price instead. Its transfer: `_transfer`."""
    pp, n_user = params.pop, v.n_user
    thr, speed, pe, ask_x, bid_x = pp.threshold[:n_user], pp.speed[:n_user], v.pe, v.ask_x, v.bid_x
    cheap = (ask_x > 0) & (ask_x < pe * (1 - thr))
    rich = (bid_x > 0) & (bid_x > pe * (1 + thr))
    x_buy = jnp.where(
        cheap, speed * jnp.maximum(v.bal[:, USDT], 0.0) / jnp.maximum(ask_x, 1e-12), 0.0
    )
    x_sell = jnp.where(rich, speed * jnp.maximum(v.held, 0.0), 0.0)
    x_qty = jnp.where(cheap, x_buy, x_sell)
    x_side = jnp.where(cheap, 1.0, -1.0)
    x_limit = jnp.where(cheap, pe * (1 - thr), pe * (1 + thr))
    # Bidding arb (`bid: 1`): a standing limit bid at its reservation price pe * (1 - thr),
    # topped up with `speed` of its free USDT. It takes the asks under that price and rests
    # the rest; a reservation price above the book's grid (the book fell further than the
    # grid spans) bids at the grid's top instead. A bid left above the reservation price
    # (pe fell) is cancelled first.
    res_px = pe * (1 - thr)
    bidder = (pp.bid[:n_user] > 0.5) & (v.kind == BEH_XVENUE_ARB)
    stale = bidder & (v.top_own > res_px + params.markets.tick_size[v.xm])
    free_usdt = jnp.maximum(v.bal[:, USDT], 0.0)
    grid_lo = jnp.stack([g[0] for g in v.grids])[v.xm]
    grid_hi = jnp.stack([g[-1] for g in v.grids])[v.xm]
    bid_x_px = jnp.minimum(res_px, grid_hi)
    post = (
        bidder
        & ~rich
        & ~stale
        & (bid_x_px >= grid_lo)
        & (speed * free_usdt > pp.min_trade[:n_user] * (free_usdt + v.resv))
    )
    t_kind, t_asset, t_qty = _transfer(v, state, rich, bidder, res_px)
    return XvenueArb(
        qty=jnp.where(post, speed * free_usdt / jnp.maximum(bid_x_px, 1e-12), x_qty),
        side=jnp.where(post | stale, 1.0, x_side),
        limit=jnp.where(post, bid_x_px, x_limit),
        kind=jnp.where(stale, KIND_CANCEL, jnp.where(post, KIND_LIMIT, KIND_MARKET)),
        stale=stale,
        t_kind=t_kind,
        t_asset=t_asset,
        t_qty=t_qty,
    )


def _transfer(
    v: View, state: SimState, rich: Array, bidder: Array, res_px: Array
) -> tuple[Array, Array, Array]:
    """A cross-venue arb's one transfer this tick: (U,) kind, asset and units. It brings the
    asset in to sell it when its book is `rich` (U,), sends it out when cheap, otherwise
    brings the external USDT home. A `bidder` (U,) keeps its capital on the other venues
    until its book trades under its reservation price `res_px` (U,), then brings it in."""
    ext, held = v.ext, v.held
    t_in_asset = rich & (v.held_ext > 0)
    bring_cash = bidder & (v.mids[v.xm] < res_px) & (ext[:, USDT] > 0) & ~t_in_asset
    t_out_asset = ~t_in_asset & ~bring_cash & (held > 0) & ~rich & (state.px.last[v.xm] < v.pe)
    t_in_usdt = ~t_in_asset & ~t_out_asset & (ext[:, USDT] > 0) & (~bidder | bring_cash)
    t_kind = jnp.where(
        t_in_asset | t_in_usdt,
        KIND_TRANSFER_IN,
        jnp.where(t_out_asset, KIND_TRANSFER_OUT, KIND_NONE),
    )
    t_asset = jnp.where(t_in_usdt, USDT, v.asset)
    t_qty = jnp.where(
        t_in_asset,
        v.held_ext,
        jnp.where(t_out_asset, held, jnp.where(t_in_usdt, ext[:, USDT], 0.0)),
    )
    return t_kind, t_asset, t_qty
