"""Funding: the premium sample of each tick, the rate, and settlement at interval
boundaries (MECHANICS 1)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxsim import book as bk
from jaxsim import prices as pr
from jaxsim.mechanisms import accounts, index_mark, tick_acc
from jaxsim.ops import sum_last
from jaxsim.types import (
    ASK,
    BID,
    ISOLATED,
    PERP,
    USDT,
    Params,
    SimState,
)

Array = jax.Array


def cap_in_force(rules) -> Array:
    """|F| cap per interval under the rules in force (`cap: auto` follows the tiers)."""
    return pr.funding_cap(rules.funding_cap, rules.tier_mmr[0], rules.tier_max_lev[0])


def impact_premium(state: SimState, params: Params, index_base) -> Array:
    """Premium index of the perp book's impact bid/ask against the BASE index (MECHANICS 1.2)."""
    rules = state.rules
    px = accounts.level_prices(state, params, PERP)
    tot = sum_last(state.book.qty[PERP])
    imn = rules.imn_quote * rules.tier_max_lev[0]
    impact_bid = bk.impact_price(tot[BID], px, -1, imn)
    impact_ask = bk.impact_price(tot[ASK], px, 1, imn)
    # An empty side contributes nothing to the premium (treated as at the index).
    impact_bid = jnp.where(jnp.isfinite(impact_bid), impact_bid, index_base)
    impact_ask = jnp.where(jnp.isfinite(impact_ask), impact_ask, index_base)
    return pr.premium_index(impact_bid, impact_ask, index_base)


def sample_and_settle(state: SimState, params: Params) -> tuple[SimState, tick_acc.Funding]:
    """Record this tick's basis and premium samples, update the funding rate, and settle
    funding when the interval ends with this tick (prices already re-priced)."""
    p = state.px
    rules = state.rules
    # Basis sample for the mark's moving average.
    w = params.dims.basis_window
    sample = index_mark.perp_mid(state, params) - p.index[0]
    buf = p.basis_buf.at[p.basis_count % w].set(sample)
    # Premium sample, linearly time-weighted within the interval.
    prem = impact_premium(state, params, p.index[0])
    i = (p.prem_n + 1).astype(p.prem_wsum.dtype)
    wsum, wtot = p.prem_wsum + i * prem, p.prem_w + i
    rate = pr.funding_rate(
        wsum / wtot,
        rules.funding_interest,
        rules.funding_clamp,
        cap_in_force(rules),
        rules.funding_interval_s,
    )
    p = p.replace(
        basis_buf=buf,
        basis_count=p.basis_count + 1,
        prem_wsum=wsum,
        prem_w=wtot,
        prem_n=p.prem_n + 1,
        funding_rate=rate,
    )
    now = (state.t + 1) * params.dt  # end of this tick
    settle = now >= p.next_funding_s
    pay = jnp.where(settle, pr.funding_payment(state.acct.pos, p.mark, rate), 0.0)
    acct = state.acct
    iso = acct.mode == ISOLATED
    acct = acct.replace(
        bal=acct.bal.at[:, USDT].add(jnp.where(iso, 0.0, pay)),
        iso_margin=acct.iso_margin + jnp.where(iso, pay, 0.0),
    )
    zero = jnp.zeros_like(wsum)
    p = p.replace(
        prem_wsum=jnp.where(settle, zero, wsum),
        prem_w=jnp.where(settle, zero, wtot),
        prem_n=jnp.where(settle, 0, p.prem_n),
        last_funding_rate=jnp.where(settle, rate, p.last_funding_rate),
        next_funding_s=jnp.where(
            settle, p.next_funding_s + rules.funding_interval_s, p.next_funding_s
        ),
    )
    paid = tick_acc.Funding(settled=settle, paid_rate=jnp.where(settle, rate, 0.0))
    return state.replace(px=p, acct=acct), paid
