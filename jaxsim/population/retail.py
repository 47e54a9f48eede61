"""Retail cohorts (BEH_RETAIL): leveraged perp traders, or with `market: spot` BASE holders
(see the package docstring for the rule). Shapes: U user accounts."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxsim.population.state import momentum
from jaxsim.population.view import View
from jaxsim.types import BASE, BEH_RETAIL, SPOT, USDT, Params, SimState

Array = jax.Array

FUNDING_UNIT_8H = 1e-4  # retail funding sensitivity is per 0.01% per 8 h
SECONDS_PER_8H = 8 * 3600.0


class Retail(NamedTuple):
    """A retail cohort's order this tick, per user account (U,)."""

    spot: Array  # bool: a spot cohort (its orders go to the spot book, slot 2)
    qty: Array  # base units to trade (0: none)
    side: Array  # +1 buy / -1 sell (sign of the gap to target)
    limit: Array  # bool: a spot cohort's buy is a limit bid at `bid_px`
    bid_px: Array  # a spot dip buyer's bid price: `threshold` under the spot mid
    cancel: Array  # bool: a spot cohort cancels its resting bids first (slot 1)


def target_fraction(v: View, state: SimState, params: Params) -> Array:
    """(U,) Target exposure fraction `f`, in [-1, 1] and restricted to the cohort's side:
    bias + trend * momentum - funding * excess funding (per 0.01% / 8 h) + noise * z."""
    pp, n_user = params.pop, v.n_user
    rate_8h = state.px.funding_rate * SECONDS_PER_8H / state.rules.funding_interval_s
    excess_funding = (rate_8h - state.rules.funding_interest) / FUNDING_UNIT_8H
    # Funding above baseline (longs pay) pushes every target down, below it (shorts pay) up.
    f = (
        pp.bias[:n_user]
        + pp.trend[:n_user] * momentum(state, params)
        - pp.funding[:n_user] * excess_funding
        + pp.noise[:n_user] * v.z
    )
    side = pp.side[:n_user]
    return jnp.clip(f, jnp.where(side > 0, 0.0, -1.0), jnp.where(side < 0, 0.0, 1.0))


def retail(v: View, state: SimState, params: Params) -> Retail:
    """Each retail cohort's trade toward `f * lev_target * equity / price` (the rows of the
    other accounts are computed too and left unused)."""
    pp, n_user, bal = params.pop, v.n_user, v.bal
    f = target_fraction(v, state, params)
    # A spot cohort's position is the BASE it holds, valued at the spot mid (no leverage);
    # the USDT its resting bids reserve is part of its equity (they are cancelled and
    # re-posted whenever it acts).
    r_spot = (v.kind == BEH_RETAIL) & (pp.market[:n_user] == SPOT)
    r_pos = jnp.where(r_spot, bal[:, BASE], v.pos)
    r_eq = jnp.where(r_spot, v.eq + v.resv, v.eq)
    scale_q = jnp.where(
        r_spot,
        pp.lev_target[:n_user] * r_eq / jnp.maximum(v.mids[SPOT], 1e-12),
        jnp.minimum(jnp.minimum(pp.lev_target[:n_user] * v.eq / v.mark, v.cap_q), v.cap_ann_q),
    )
    target = f * scale_q
    # A holding trader (hold = 1) does not shrink a same-side position because its equity
    # or its signal fell: it adds, closes or flips, and otherwise rides the position to
    # its liquidation (the retail shorts of a squeeze) or, on spot, holds the bag.
    keep = (pp.hold[:n_user] > 0.5) & (target * r_pos > 0) & (jnp.abs(target) < jnp.abs(r_pos))
    gap = jnp.where(keep, 0.0, target - r_pos)
    # A perp trader above what the announced rules allow cuts every tick until it is not.
    acts = v.act | (~r_spot & v.must_cut)
    trade = acts & (jnp.abs(gap) > pp.min_trade[:n_user] * scale_q) & (r_eq > 0)
    r_qty = jnp.where(trade, jnp.abs(gap) * pp.speed[:n_user], 0.0)
    # Spot buys: market orders, or with `threshold` > 0 limit bids resting that far below
    # the mid (dip buyers who bid under a falling price). They are paid from the USDT held
    # plus what the cancelled bids release (with room for the walk and the fee); sales
    # are market orders of the BASE held.
    bid_px = v.mids[SPOT] * (1.0 - pp.threshold[:n_user])
    r_limit = r_spot & (pp.threshold[:n_user] > 0) & (gap > 0)
    buy_px = jnp.where(r_limit, bid_px, v.asks[SPOT])
    afford = 0.95 * (jnp.maximum(bal[:, USDT], 0.0) + v.resv) / jnp.maximum(buy_px, 1e-12)
    afford = jnp.where(buy_px > 0, afford, 0.0)
    spot_cap = jnp.where(gap > 0, afford, jnp.maximum(bal[:, BASE], 0.0))
    return Retail(
        spot=r_spot,
        qty=jnp.where(r_spot, jnp.minimum(r_qty, spot_cap), r_qty),
        side=jnp.sign(gap),
        limit=r_limit,
        bid_px=bid_px,
        # A spot cohort cancels its resting bids (slot 1) before it trades again (slot 2).
        cancel=r_spot & v.act & (v.resv > 0),
    )
