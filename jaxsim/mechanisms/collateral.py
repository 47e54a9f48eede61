"""Collateral operations: transfers between the exchange and external venues, borrowing
and repaying against collateral, and the collateral sales of a liquidation."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxsim import book as bk
from jaxsim import margin as mg
from jaxsim.mechanisms import accounts, margin_checks, tick_acc
from jaxsim.mechanisms.tick_acc import OrderResults
from jaxsim.ops import sum_last
from jaxsim.prices import SECONDS_PER_8H
from jaxsim.types import (
    BASE,
    BID,
    CROSS,
    KIND_TRANSFER_IN,
    LST,
    N_ASSETS,
    OK,
    REJ_BALANCE,
    REJ_INVALID,
    REJ_MARGIN,
    SPOT,
    STABLE,
    STABLE_SPOT,
    USDT,
    Params,
    SimState,
)

Array = jax.Array


# Collateral the engine sells to cover a negative USDT balance, in this order.
COLLATERAL_SALE_ORDER = (STABLE, LST, BASE)


ASSET_MARKET = {BASE: SPOT, STABLE: STABLE_SPOT, LST: 3}


SALE_ASSET_ARR = jnp.array(COLLATERAL_SALE_ORDER, dtype=jnp.int32)


SALE_MARKET_ARR = jnp.array([ASSET_MARKET[x] for x in COLLATERAL_SALE_ORDER], dtype=jnp.int32)


# The engine's collateral sales skip anything worth less (USDT at the tick's opening
# index): the float rounding dust a whole balance's sale leaves, which would otherwise
# print a trade of nothing on a later tick.
MIN_SALE_USDT = 0.01


def op_transfer(state, params, acc, o):
    """Transfer in (external wallet to exchange) or out, by the order's kind: one branch
    for both directions, so the compiled program holds a single copy."""
    a, asset, qty = o.account, o.market, o.qty
    to_exchange = o.kind == KIND_TRANSFER_IN
    acct = state.acct
    dtype = acct.bal.dtype
    src = jnp.where(to_exchange, acct.ext_bal, acct.bal)
    slot_free = acct.transit_amt[a] <= 0
    has_slot = slot_free.any()
    slot = jnp.argmax(slot_free)
    enough = src[a, asset] >= qty
    reason = jnp.where(~has_slot, REJ_INVALID, jnp.where(enough, OK, REJ_BALANCE))
    # Leaving the exchange must not break the account's initial margin. Cross: the margin
    # balance covers the IM of the position and the resting perp orders. Isolated: the
    # position's margin is apart, but the wallet funds the margin of resting perp orders
    # when they fill, so it must keep covering their IM.
    px = accounts.asset_prices(state.px)
    out_value = qty * px[asset] * (1 - state.rules.haircut[asset])
    cross = acct.mode[a] == CROSS
    have = jnp.where(
        cross,
        accounts.margin_balance_of(state, a),
        mg.collateral_value(acct.bal[a], acct.debt[a], px, state.rules.haircut),
    )
    need = jnp.where(
        cross,
        margin_checks.im_total_of(state, params, a),
        accounts.open_order_notional_of(state, params, a) / jnp.maximum(acct.lev[a], 1.0),
    )
    short = have - out_value < need
    reason = jnp.where((reason == OK) & short & ~to_exchange, REJ_MARGIN, reason)
    ok = reason == OK
    amt = jnp.where(ok, qty, 0.0)
    delay = jnp.ceil(state.rules.withdrawal_delay_s / params.dt - 1e-6).astype(jnp.int32)
    src = src.at[a, asset].add(-amt)
    acct = acct.replace(
        ext_bal=jnp.where(to_exchange, src, acct.ext_bal),
        bal=jnp.where(to_exchange, acct.bal, src),
    )
    acct = acct.replace(
        transit_amt=acct.transit_amt.at[a, slot].set(jnp.where(ok, amt, acct.transit_amt[a, slot])),
        transit_asset=acct.transit_asset.at[a, slot].set(
            jnp.where(ok, asset, acct.transit_asset[a, slot])
        ),
        transit_due=acct.transit_due.at[a, slot].set(
            jnp.where(ok, state.t + delay, acct.transit_due[a, slot])
        ),
        transit_in=acct.transit_in.at[a, slot].set(
            jnp.where(ok, to_exchange, acct.transit_in[a, slot])
        ),
    )
    z = jnp.zeros((), dtype)
    return state.replace(acct=acct), acc, OrderResults(reason, amt, z, qty - amt)


def op_borrow(state, params, acc, o):
    """Borrow o.qty of asset o.market from the lender (cross accounts): the borrowed units
    count as haircut collateral, the debt in full; rejected when initial margin would
    not be covered."""
    a, asset, qty = o.account, o.market, o.qty
    acct = state.acct
    px = accounts.asset_prices(state.px)
    # Borrowed units count as haircut collateral while the debt counts in full.
    mb_after = accounts.margin_balance_of(state, a) - qty * px[asset] * state.rules.haircut[asset]
    reason = jnp.where(
        acct.mode[a] != CROSS,
        REJ_INVALID,
        jnp.where(mb_after < margin_checks.im_total_of(state, params, a), REJ_MARGIN, OK),
    )
    amt = jnp.where(reason == OK, qty, 0.0)
    lender = params.dims.outside
    bal = acct.bal.at[a, asset].add(amt).at[lender, asset].add(-amt)
    debt = acct.debt.at[a, asset].add(amt)
    z = jnp.zeros((), acct.bal.dtype)
    return (
        state.replace(acct=acct.replace(bal=bal, debt=debt)),
        acc,
        OrderResults(reason, amt, z, qty - amt),
    )


def op_repay(state, params, acc, o):
    """Repay o.qty of the account's debt in asset o.market from its balance of it."""
    a, asset, qty = o.account, o.market, o.qty
    acct = state.acct
    ok = (acct.bal[a, asset] >= qty) & (acct.debt[a, asset] >= qty * (1 - 1e-7))
    amt = jnp.where(ok, jnp.minimum(qty, acct.debt[a, asset]), 0.0)
    lender = params.dims.outside
    bal = acct.bal.at[a, asset].add(-amt).at[lender, asset].add(amt)
    debt = acct.debt.at[a, asset].add(-amt)
    z = jnp.zeros((), acct.bal.dtype)
    reason = jnp.where(ok, OK, REJ_BALANCE)
    return (
        state.replace(acct=acct.replace(bal=bal, debt=debt)),
        acc,
        OrderResults(reason, amt, z, qty - amt),
    )


def arrivals(state: SimState) -> SimState:
    """Transfers whose withdrawal delay has passed land on the exchange or the external
    wallet."""
    acct = state.acct
    due = (acct.transit_amt > 0) & (acct.transit_due <= state.t)
    oh = jax.nn.one_hot(acct.transit_asset, N_ASSETS, dtype=acct.bal.dtype)  # (A, X, 4)
    amt = jnp.where(due, acct.transit_amt, 0.0)[..., None] * oh
    to_ex = jnp.sum(jnp.where(acct.transit_in[..., None], amt, 0.0), axis=1)
    to_ext = jnp.sum(jnp.where(acct.transit_in[..., None], 0.0, amt), axis=1)
    return state.replace(
        acct=acct.replace(
            bal=acct.bal + to_ex,
            ext_bal=acct.ext_bal + to_ext,
            transit_amt=jnp.where(due, 0.0, acct.transit_amt),
        )
    )


def engine_sale_qty(acc: tick_acc.TickAcc, asset, qty) -> Array:
    """`qty` of `asset`, or 0 below `MIN_SALE_USDT` at the tick's opening index."""
    return jnp.where(qty * acc.sale_ref[asset] >= MIN_SALE_USDT, qty, 0.0)


def quote_qty(state: SimState, params: Params, m, usdt, limit, a) -> Array:
    """Quantity seller `a` must sell into market m's bids, no lower than `limit`, to raise
    `usdt` net of its taker fee (all the bids within the limit when they hold less).

    The fee is the one `matching.take` charges the seller: a liquidated user's own rate
    where it has one (`accounts.fee_rates`), else the rules in force; the insurance fund,
    a system account, pays the regular rate."""
    px = accounts.level_prices(state, params, m)
    tot = sum_last(state.book.qty[m, BID])
    fee = accounts.taker_rate_of(state, params, a)
    return bk.walk_for_quote(tot, px, usdt * (1 + fee), limit).sum()


def charge_interest(state: SimState, params: Params, settled) -> SimState:
    """Interest on what user accounts owe, at each funding settlement (`settled`), for the
    interval: (debts at index + a negative USDT balance) x `rules.borrow_interest` (per
    8 h) x interval / 8 h, paid in USDT to the lender (the outside world).

    A negative USDT balance (fees, funding, realized losses and clearance fees are paid in
    USDT whatever the account holds) is credit like a USDT loan: it pays the same interest
    and the margin check counts it in full, so it is neither free nor unchecked; a
    liquidation sells collateral into the books to cover it. Charged once per interval
    rather than per tick so that float32 balances resolve it. The charge may itself take
    USDT below zero, which then owes interest at the next settlement."""
    acct, rules = state.acct, state.rules
    px = accounts.asset_prices(state.px)
    owed = sum_last(acct.debt * px) + jnp.maximum(-acct.bal[:, USDT], 0.0)
    rate = rules.borrow_interest * rules.funding_interval_s / SECONDS_PER_8H
    due = settled & ~accounts.system_mask(params)
    interest = jnp.where(due, owed * rate, 0.0)
    bal = acct.bal.at[:, USDT].add(-interest).at[params.dims.outside, USDT].add(interest.sum())
    return state.replace(acct=acct.replace(bal=bal))


# A cross liquidation's collateral (MECHANICS 4.1 step 3), in three parts that
# `liquidation.liquidate_account` runs around the book walks it shares with the IOC:
# `sales_start` (debts repaid from same-asset balances), one `sale_order` per collateral
# asset in `COLLATERAL_SALE_ORDER` (sold into its own spot book to cover the USDT deficit
# plus the debts still unpaid, valued at index; `record_sale` counts what sold), and
# `sales_end` (those debts settled with the lender in USDT at index).
#
# The sales fill no lower than the tick's opening index x (1 - `rules.sale_band`)
# (`TickAcc.sale_ref`): one sale into a thin book cannot print far below the index and,
# where the index follows the internal book, mark everyone's collateral down with it. What
# the band stops stays held; a bust account's rest goes to the fund with its hole
# (`insurance.cover_bust`), and the fund sells it in later ticks.


def sales_start(state: SimState, params: Params, a, cross_liq) -> tuple[SimState, Array, Array]:
    """Account a's debts repaid from its same-asset balances (when `cross_liq`). Returns
    (state, the debts still unpaid (4,), their value in USDT at index)."""
    outside = params.dims.outside
    acct = state.acct
    rep = jnp.where(cross_liq, jnp.minimum(jnp.maximum(acct.bal[a], 0.0), acct.debt[a]), 0.0)
    acct = acct.replace(
        bal=acct.bal.at[a].add(-rep).at[outside].add(rep), debt=acct.debt.at[a].add(-rep)
    )
    state = state.replace(acct=acct)
    px_a = accounts.asset_prices(state.px)
    unpaid = jnp.where(cross_liq, acct.debt[a], 0.0)
    return state, unpaid, jnp.sum(unpaid * px_a)


def sale_order(state: SimState, params: Params, acc, a, j, cross_liq, unpaid_usdt):
    """The j-th collateral sale of account a (a sell on the asset's spot book): (market,
    quantity, price limit, asset). The quantity raises the USDT the account lacks for its
    unpaid debts, within what it holds; 0 below `MIN_SALE_USDT`."""
    asset = SALE_ASSET_ARR[j]
    m = SALE_MARKET_ARR[j]
    deficit = jnp.where(cross_liq, jnp.maximum(unpaid_usdt - state.acct.bal[a, USDT], 0.0), 0.0)
    lim = acc.sale_ref[asset] * (1 - state.rules.sale_band)
    need = quote_qty(state, params, m, deficit, lim, a)
    qty = jnp.minimum(need, jnp.maximum(state.acct.bal[a, asset], 0.0))
    return m, engine_sale_qty(acc, asset, qty), lim, asset


def record_sale(acc, asset, sold, proceeds):
    """The tick's collateral-sale counters after a sale of `sold` units of `asset`."""
    return acc.replace(
        coll_sold=acc.coll_sold.at[asset].add(sold),
        coll_sold_usdt=acc.coll_sold_usdt + proceeds,
    )


def sales_end(state: SimState, params: Params, a, unpaid, unpaid_usdt) -> SimState:
    """Account a's unpaid debts settled with the lender in USDT at index."""
    outside = params.dims.outside
    acct = state.acct
    acct = acct.replace(
        bal=acct.bal.at[a, USDT].add(-unpaid_usdt).at[outside, USDT].add(unpaid_usdt),
        debt=acct.debt.at[a].add(-unpaid),
    )
    return state.replace(acct=acct)
