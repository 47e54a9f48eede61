"""The insurance fund: takeover of what the book could not absorb, auto-deleveraging,
bankrupt accounts' holes, the fund's unwind, and the write-off of a deficit the fund
cannot back (bad debt).

Solvency. The fund is worth its marked equity: USDT + its perp position at mark + the
collateral it took over at index (`fund_equity`, reported as `insurance_equity`). Its
position cap is on that equity, so a fund whose losses (realized or not) ate its capital
takes nothing more over and ADL closes the rest (MECHANICS 4.4): with ADL on, a bankrupt
position's loss beyond the fund is socialised to the counterparties ADL closes at the
bankruptcy price. What no position can absorb (a bust account's hole after its collateral
sold below index, a negative isolated margin, the fund's own realized losses, all of it
with ADL off) the fund pays in USDT; where its USDT and its equity are both negative the
shortfall is bad debt (`write_off`): credited to the fund from nothing and counted in
`SimState.bad_debt`, which the USDT ledger (`engine.audit`) subtracts. After a write-off
the fund's USDT is negative only while its other holdings back it (USDT paid for a bust's
collateral not yet sold)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from jaxsim import margin as mg
from jaxsim.mechanisms import accounts, collateral, matching, tick_acc
from jaxsim.types import (
    PERP,
    USDT,
    Params,
    SimState,
)

Array = jax.Array


def unwind(state: SimState, acc: tick_acc.TickAcc, params: Params):
    """The fund sells `if_unwind_per_s` of its perp position (within the price band around
    mark) and of the collateral it took from bankrupt accounts, into their spot books: that
    fraction of each, or more where its USDT is negative (it paid bust accounts' holes for
    that collateral), enough to raise the overdraft. Collateral fills no lower than the
    tick's opening index x (1 - `sale_band`); what the band stops is sold in later ticks.
    The fund is a system account: its sales pay the regular taker rate in force."""
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
        held = jnp.maximum(state.acct.bal[ins, asset], 0.0)
        lim_j = jnp.where(first, lim, acc.sale_ref[asset] * (1 - state.rules.sale_band))
        overdraft = jnp.maximum(-state.acct.bal[ins, USDT], 0.0)
        cover = collateral.quote_qty(state, params, m, overdraft, lim_j, ins)
        coll_qty = jnp.minimum(jnp.maximum(held * frac, cover), held)
        qty = jnp.where(
            first, jnp.abs(pos) * frac, collateral.engine_sale_qty(acc, asset, coll_qty)
        )
        state, acc, sold, proceeds = matching.take(state, params, acc, ins, m, s_j, qty, lim_j)
        acc = acc.replace(
            coll_sold=acc.coll_sold.at[asset].add(jnp.where(first, 0.0, sold)),
            coll_sold_usdt=acc.coll_sold_usdt + jnp.where(first, 0.0, proceeds),
        )
        return state, acc

    return jax.lax.fori_loop(0, 1 + len(collateral.COLLATERAL_SALE_ORDER), sell, (state, acc))


@struct.dataclass
class Absorbed:
    """How a liquidation's remainder (what the book did not absorb) was placed."""

    fund_qty: Array  # () taken over by the fund within its position cap
    adl_qty: Array  # () sent to ADL (ADL on, beyond the fund's cap)
    adl_total: Array  # () of that, closed against opposite positions
    adl_count: Array  # () int32 counterparties deleveraged
    left_qty: Array  # () ADL could not place: stays with the fund


def fund_equity(state: SimState, params: Params) -> Array:
    """The fund's marked equity: USDT + position at mark + collateral at index (the fund
    holds no debts, external balances or orders, so this is its `accounts.equity`)."""
    return accounts.equity(state)[params.dims.insurance]


def absorb(state: SimState, params: Params, a, s, rem, p_bk) -> tuple[SimState, Absorbed]:
    """Place `rem` of account a's position (side s) at its bankruptcy price `p_bk`:
    the insurance fund takes it over within its position cap, `if_position_cap` x its
    marked equity (its unrealized losses count; all of it with ADL off); with ADL on, the
    rest closes opposite positions ranked by PnL% x effective leverage, and their open
    orders are cancelled (MECHANICS 4.4); whatever ADL cannot place stays with the fund."""
    dims, rules = params.dims, state.rules
    n = dims.n_accounts
    dtype = state.acct.bal.dtype
    mark = state.px.mark
    ins = dims.insurance
    acct = state.acct
    fund = fund_equity(state, params)
    cap_q = rules.if_position_cap * jnp.maximum(fund, 0.0) / jnp.maximum(mark, accounts.TINY)
    room = jnp.maximum(cap_q - s * acct.pos[ins], 0.0)
    x_if = jnp.where(rules.adl_on > 0, jnp.minimum(rem, room), rem)
    x_adl = rem - x_if
    dq = jnp.zeros((n,), dtype).at[a].add(-s * x_if).at[ins].add(s * x_if)
    acct = matching.settle_perp(acct, dq, jnp.full((n,), p_bk, dtype))
    state = state.replace(acct=acct)
    take = _adl_takes(state, params, a, s, x_adl)
    adl_total = take.sum()
    dq = s * take
    dq = dq.at[a].add(-s * adl_total)
    acct = matching.settle_perp(acct, dq, jnp.full((n,), p_bk, dtype))
    left = x_adl - adl_total
    dq = jnp.zeros((n,), dtype).at[a].add(-s * left).at[ins].add(s * left)
    acct = matching.settle_perp(acct, dq, jnp.full((n,), p_bk, dtype))
    placed = Absorbed(
        fund_qty=x_if,
        adl_qty=x_adl,
        adl_total=adl_total,
        adl_count=jnp.sum(take > 0).astype(jnp.int32),
        left_qty=left,
    )
    # The deleveraged accounts' orders go (one masked pass over the books, no walk).
    state = matching.cancel_accounts(state.replace(acct=acct), params, take > 0)
    return state, placed


def _adl_takes(state: SimState, params: Params, a, s, x_adl) -> Array:
    """(A,) quantity ADL closes of each opposite position (side -s), highest ADL score
    first, `x_adl` in all at most. Users and the LP can be deleveraged; the outside world,
    the fund and the fee account cannot."""
    n = params.dims.n_accounts
    acct = state.acct
    eq_all = accounts.margin_balances(state)
    score = mg.adl_score(acct.pos, acct.entry, state.px.mark, eq_all)
    idx = jnp.arange(n)
    eligible = (jnp.sign(acct.pos) == -s) & (idx != a) & (idx <= params.dims.lp)
    score = jnp.where(eligible, score, -jnp.inf)
    order = jnp.argsort(-score)
    size_sorted = jnp.where(eligible, jnp.abs(acct.pos), 0.0)[order]
    before = jnp.cumsum(size_sorted) - size_sorted
    take_sorted = jnp.clip(x_adl - before, 0.0, size_sorted)
    return jnp.zeros((n,), acct.bal.dtype).at[order].set(take_sorted)


def cover_bust(state: SimState, params: Params, a, cross_liq) -> tuple[SimState, Array]:
    """Account a's position is closed and its USDT still negative (the books could not
    absorb its collateral): the fund resets the negative wallet and takes collateral worth
    the deficit at index in exchange (MECHANICS 4.1 step 4: leftover collateral goes to
    the fund). What the fund cannot back is written off (`write_off`). Returns (state, the
    bad debt written off)."""
    ins = params.dims.insurance
    acct = state.acct
    px_a = accounts.asset_prices(state.px)
    bust = cross_liq & (acct.pos[a] == 0) & (acct.bal[a, USDT] < 0)
    hole = jnp.where(bust, -acct.bal[a, USDT], 0.0)
    bal = acct.bal
    owed = hole
    for asset in collateral.COLLATERAL_SALE_ORDER:
        units = jnp.minimum(
            jnp.maximum(bal[a, asset], 0.0), owed / jnp.maximum(px_a[asset], accounts.TINY)
        )
        units = jnp.where(bust, units, 0.0)
        bal = bal.at[a, asset].add(-units).at[ins, asset].add(units)
        owed = jnp.maximum(owed - units * px_a[asset], 0.0)
    acct = acct.replace(bal=bal.at[a, USDT].add(hole).at[ins, USDT].add(-hole))
    return _write_off(state.replace(acct=acct), params, bust)


def _write_off(state: SimState, params: Params, on=True) -> tuple[SimState, Array]:
    """Where the fund's USDT and its marked equity are both negative (when `on`): the
    smaller shortfall of the two is bad debt, credited to the fund and added to
    `SimState.bad_debt`; after it, the USDT is not negative or the equity backs it.
    Returns (state, the amount written off)."""
    ins = params.dims.insurance
    cash = state.acct.bal[ins, USDT]
    w = jnp.where(on, jnp.maximum(jnp.minimum(-cash, -fund_equity(state, params)), 0.0), 0.0)
    acct = state.acct.replace(bal=state.acct.bal.at[ins, USDT].add(w))
    return state.replace(acct=acct, bad_debt=state.bad_debt + w), w


def write_off(state: SimState, params: Params, acc: tick_acc.TickAcc):
    """End of the tick: the fund's losses since the last write-off (its unwind's realized
    losses, funding, negative isolated margins it paid) that it cannot back are bad debt
    (`_write_off`), reported in the tick's `bad_debt`."""
    state, w = _write_off(state, params)
    return state, acc.replace(bad_debt=acc.bad_debt + w)
