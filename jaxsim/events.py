"""TickEvents: what one tick reports, read from the state after the tick and from the
tick's named records (`jaxsim.mechanisms.tick_acc`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxsim import book as bk
from jaxsim.mechanisms import accounts
from jaxsim.mechanisms.tick_acc import Background, Funding, OrderResults, TickAcc
from jaxsim.types import (
    N_MARKETS,
    N_REASONS,
    OK,
    PERP,
    SPOT,
    STABLE_SPOT,
    USDT,
    Params,
    SimState,
    TickEvents,
)

Array = jax.Array

DEPTH_BAND = 0.01  # depth reported within +/- 1% of mid


def _books(state: SimState, params: Params, acc: TickAcc) -> dict[str, Array]:
    """Per market (M,): best bid, best ask (0 for an empty side), depth within
    `DEPTH_BAND` of mid, and whether this tick's last trade sits on the grid's edge."""
    p = state.px
    best_b, best_a, depth, edge = [], [], [], []
    for m in range(N_MARKETS):
        px = accounts.level_prices(state, params, m)
        b, a = bk.best_prices(state.book.qty[m], px)
        mid = jnp.where((b > 0) & jnp.isfinite(a), 0.5 * (b + a), p.last[m])
        best_b.append(b)
        best_a.append(jnp.where(jnp.isfinite(a), a, 0.0))
        depth.append(bk.depth_within(state.book.qty[m], px, mid, DEPTH_BAND))
        # This tick traded and its last trade is on the grid's outermost level: the order
        # could not go further (a stale last price off a grid that has moved is not one).
        lvl = jnp.round(p.last[m] / params.markets.tick_size[m]) - state.book.origin[m]
        on_edge = (lvl == 0) | (lvl == params.dims.n_levels - 1)
        edge.append(on_edge & (acc.volume[m] > 0))
    return {"best_bid": best_b, "best_ask": best_a, "depth": depth, "edge": edge}


def _basis(state: SimState, best_b: list, best_a: list) -> Array:
    """Perp/spot basis from the books' mids, or from last prices while a side is empty."""
    p = state.px
    spot_mid = 0.5 * (best_b[SPOT] + best_a[SPOT])
    perp_mid = 0.5 * (best_b[PERP] + best_a[PERP])
    ok = (best_b[SPOT] > 0) & (best_a[SPOT] > 0) & (best_b[PERP] > 0) & (best_a[PERP] > 0)
    return jnp.where(
        ok,
        (perp_mid - spot_mid) / jnp.maximum(spot_mid, accounts.TINY),
        (p.last[PERP] - p.last[SPOT]) / jnp.maximum(p.last[SPOT], accounts.TINY),
    )


def _next_change_s(state: SimState, params: Params) -> Array:
    """Seconds to the next announced rule change, -1 when none is pending."""
    sch = params.schedule
    t = state.t
    pending = sch.active & (sch.announce_tick <= t) & (sch.effective_tick >= t)
    next_change = jnp.min(jnp.where(pending, sch.effective_tick - t, jnp.iinfo(jnp.int32).max))
    return jnp.where(pending.any(), next_change * params.dt, -1.0)


def build(
    state: SimState,
    params: Params,
    acc: TickAcc,
    fund0: Array,
    funding: Funding,
    orders: OrderResults,
    background: Background,
) -> TickEvents:
    """The tick's events; `fund0` is the insurance fund's USDT at the tick's start and
    `orders` the external (learning agents') order rows' results. Long because it names
    every TickEvents field, one line each."""
    p = state.px
    pos = state.acct.pos
    books = _books(state, params, acc)
    fund1 = state.acct.bal[params.dims.insurance, USDT]
    equity = accounts.marked_equity(state, params)
    rejects = jnp.zeros((N_REASONS,), jnp.int32).at[orders.reason].add(1).at[OK].set(0)
    return TickEvents(
        t=state.t,
        time_s=state.t * params.dt,
        ext_px=p.ext.mean(-1),
        spot_px=p.last[SPOT],
        perp_px=p.last[PERP],
        index_px=p.index,
        mark_px=p.mark,
        basis=_basis(state, books["best_bid"], books["best_ask"]),
        mark_index_gap=(p.mark - p.index[0]) / p.index[0],
        funding_rate=p.funding_rate,
        funding_paid=funding.paid_rate,
        funding_settled=funding.settled,
        oi_long=jnp.sum(jnp.maximum(pos, 0.0)),
        oi_short=jnp.sum(jnp.maximum(-pos, 0.0)),
        depth_1pct=jnp.stack(books["depth"]),
        best_bid=jnp.stack(books["best_bid"]),
        best_ask=jnp.stack(books["best_ask"]),
        volume=acc.volume,
        liq_notional_long=acc.liq_long,
        liq_notional_short=acc.liq_short,
        liq_accounts=acc.liq_mask.sum().astype(jnp.int32),
        liq_mask=acc.liq_mask,
        liq_backlog=acc.liq_backlog,
        equity=equity,
        collateral_sold=acc.coll_sold,
        collateral_sold_usdt=acc.coll_sold_usdt,
        insurance_fund=fund1,
        insurance_equity=equity[params.dims.insurance],
        insurance_draw=fund0 - fund1,
        if_takeover_notional=acc.takeover,
        adl_count=acc.adl_count,
        adl_notional=acc.adl_notional,
        bad_debt=acc.bad_debt,
        forced_reduce_notional=acc.forced,
        collateral_px=jnp.stack([p.last[STABLE_SPOT], p.last[3]]),
        collateral_index=p.index[1:],
        fees=acc.fees,
        fees_paid=acc.fees_acct,
        rejects=rejects,
        bg_volume=background.volume,
        bg_rejects=background.rejects,
        arb_volume=background.arb_volume,
        prog_filled=background.prog_filled,
        grid_edge=jnp.stack(books["edge"]),
        venue_impact=state.px.impact,
        order_reason=orders.reason,
        order_filled=orders.filled,
        order_avg_px=orders.avg_px,
        order_unfilled=orders.unfilled,
        rules_changed=acc.rules_changed,
        next_change_s=_next_change_s(state, params),
    )
