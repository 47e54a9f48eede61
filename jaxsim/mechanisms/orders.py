"""External orders: validation, pre-trade checks and the order kinds, processed in sequence."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxsim import book as bk
from jaxsim import margin as mg
from jaxsim.mechanisms import accounts, collateral, margin_checks, matching, tick_acc
from jaxsim.mechanisms.tick_acc import OrderResults
from jaxsim.ops import compact, materialize, sum_last
from jaxsim.ops import while_loop as tied_while_loop
from jaxsim.types import (
    ASK,
    BID,
    CROSS,
    KIND_BORROW,
    KIND_CANCEL,
    KIND_LIMIT,
    KIND_MARKET,
    KIND_NONE,
    KIND_POST_ONLY,
    KIND_REPAY,
    KIND_SET_LEVERAGE,
    KIND_TRANSFER_IN,
    KIND_TRANSFER_OUT,
    N_ASSETS,
    N_KINDS,
    N_MARKETS,
    N_SYSTEM,
    OK,
    PERP,
    REJ_BALANCE,
    REJ_INVALID,
    REJ_LEVERAGE,
    REJ_MARGIN,
    REJ_NO_LIQUIDITY,
    REJ_OUT_OF_RANGE,
    REJ_PRICE_BAND,
    REJ_QUEUE_FULL,
    REJ_SYSTEM,
    REJ_WOULD_TAKE,
    USDT,
    Orders,
    Params,
    SimState,
)

Array = jax.Array


DUST = 1e-6  # relative size below which a limit order's remainder counts as filled


def validate(o, params: Params) -> Array:
    """Reason code of an order row's shape: OK, `REJ_INVALID` (bad kind, account, market,
    side, quantity or price, or not finite) or `REJ_SYSTEM` (a system account's row)."""
    n_user = params.dims.n_accounts - N_SYSTEM
    finite = jnp.isfinite(o.qty) & jnp.isfinite(o.price)
    kind_ok = (o.kind >= 1) & (o.kind < N_KINDS)
    acct_ok = (o.account >= 0) & (o.account < params.dims.n_accounts)
    has_limit = (o.kind == KIND_LIMIT) | (o.kind == KIND_POST_ONLY)
    is_trade = (o.kind == KIND_MARKET) | has_limit
    is_asset_op = (
        (o.kind == KIND_TRANSFER_OUT)
        | (o.kind == KIND_TRANSFER_IN)
        | (o.kind == KIND_BORROW)
        | (o.kind == KIND_REPAY)
    )
    mkt_ok = jnp.where(
        is_asset_op,
        (o.market >= 0) & (o.market < N_ASSETS),
        (o.market >= 0) & (o.market < N_MARKETS),
    )
    side_ok = jnp.where(is_trade, (o.side == 1) | (o.side == -1), True)
    qty_ok = jnp.where(o.kind == KIND_CANCEL, True, o.qty > 0)
    price_ok = jnp.where(has_limit, o.price > 0, o.price >= 0)
    valid = finite & kind_ok & acct_ok & mkt_ok & side_ok & qty_ok & price_ok
    reason = jnp.where(valid, OK, REJ_INVALID)
    reason = jnp.where(valid & (o.account >= n_user), REJ_SYSTEM, reason)
    return jnp.where(o.kind == KIND_NONE, OK, reason)


def book_order(state: SimState, params: Params, acc: tick_acc.TickAcc, o) -> tuple:
    """Market (IOC walk), limit (walk, then rest the remainder), post-only (rest whole, or
    `REJ_WOULD_TAKE` if any of it would fill now) or cancel order; `o.kind` decides.
    Market m's book is read once and written back once: under vmap every branch of the
    order switch runs, so one book branch costs one write of the slice.
    Returns (state, acc, OrderResults of this one order)."""
    is_cancel = o.kind == KIND_CANCEL
    is_post = o.kind == KIND_POST_ONLY
    # A post-only order takes the limit path: with nothing marketable, all of it is the
    # remainder that rests (price, band, slot, margin / balance checks as for a limit).
    is_limit = (o.kind == KIND_LIMIT) | is_post
    a, m, side = o.account, o.market, o.side
    qty = jnp.where(is_cancel, 0.0, o.qty)
    q_m, ah_m = matching.market_book(state, m)
    # Cancel: side +1 bids, -1 asks, 0 both (nothing for a trade).
    sides = jnp.stack([(o.side >= 0), (o.side <= 0)]) & is_cancel
    state, q_m, ah_m = matching.cancel_on(state, params, q_m, ah_m, a, m, sides.astype(qty.dtype))
    px = accounts.level_prices(state, params, m)
    level, px_lim, limit, price_reason = _limit_price(state, params, o, is_limit)

    hit = jnp.where(side > 0, ASK, BID)
    dry = bk.walk(sum_last(q_m[hit]), px, side, qty, limit)
    f_dry = dry.sum()
    n_dry = jnp.sum(dry * px)
    rest = jnp.where(is_limit, qty - f_dry, 0.0)

    slot, slot_ok = accounts.slot_for(state.book, a)
    # The remainder would rest but no maker slot is free: rejected whole, before it trades.
    limit_reason = jnp.where(
        (price_reason == OK) & (rest > DUST * qty) & ~slot_ok, REJ_QUEUE_FULL, price_reason
    )
    # Post-only (Binance GTX): any fill on arrival (its limit price reaches the opposite
    # best) rejects it whole; a price off the grid or band is reported first.
    limit_reason = jnp.where(
        is_post & (price_reason == OK) & (f_dry > 0), REJ_WOULD_TAKE, limit_reason
    )
    market_reason = jnp.where(f_dry <= 0, REJ_NO_LIQUIDITY, OK)
    reason = jnp.where(is_limit, limit_reason, market_reason)
    perp_reason = margin_checks.perp_order_check(
        state, params, a, side, qty, f_dry, n_dry, rest * px_lim, q_m, px
    )
    check = jnp.where(
        m == PERP, perp_reason, _spot_check(state, params, a, m, side, qty, n_dry, rest * px_lim)
    )
    reason = jnp.where(reason == OK, check, reason)
    reason = jnp.where(is_cancel, OK, reason)
    # Computed once per order: fused into the book-sized loops below, this chain of
    # checks would be evaluated again for every level and slot (`ops.materialize`).
    reason = materialize(reason)
    ok = (reason == OK) & ~is_cancel

    # An accepted post-only order has nothing to take: it skips the walk.
    state, acc, q_m, ah_m, filled, notional = matching.take_on(
        state, params, acc, q_m, ah_m, a, m, side, jnp.where(ok & ~is_post, qty, 0.0), limit
    )
    # A limit (or post-only) order's remainder rests at the back of its level's queue (a
    # market order's remainder is reported unfilled).
    rest_sz = jnp.where(ok & is_limit, jnp.maximum(qty - filled, 0.0), 0.0)
    # Summed level fills round: a remainder below 1e-6 of the order is a complete fill, not
    # dust left resting across the book.
    rest_sz = jnp.where(rest_sz > DUST * qty, rest_sz, 0.0)
    state = _rest(state, q_m, ah_m, a, m, side, level, slot, rest_sz, px_lim)
    unfilled = jnp.where(ok | is_cancel, jnp.where(is_limit | is_cancel, 0.0, qty - filled), qty)
    avg = notional / jnp.maximum(filled, 1e-30)
    res = OrderResults(reason, filled, jnp.where(filled > 0, avg, 0.0), unfilled)
    return state, acc, res


def _limit_price(state: SimState, params: Params, o, is_limit) -> tuple:
    """(level, px_lim, limit, reason) of an order on market o.market: its limit price on
    the grid (buys round down, sells round up: never a worse price) and that level's
    index; the price bound of its walk (a limit order's limit price; for a market order
    the band around mark / last, or its explicit price where that is tighter: a market
    order never sweeps past the band, MECHANICS 6 `marketTakeBound`, and what is left
    beyond it goes unfilled); and OK, `REJ_OUT_OF_RANGE` (limit price off the grid) or
    `REJ_PRICE_BAND` (limit price outside the band)."""
    m, side = o.market, o.side
    n_levels = params.dims.n_levels
    tick = params.markets.tick_size[m]
    ref = jnp.where(m == PERP, state.px.mark, state.px.last[m])
    band = state.rules.price_band[m]
    raw = o.price / tick
    j_tick = jnp.where(side > 0, jnp.floor(raw + 1e-6), jnp.ceil(raw - 1e-6))
    level = (j_tick - state.book.origin[m]).astype(jnp.int32)
    in_range = (level >= 0) & (level < n_levels)
    level = jnp.clip(level, 0, n_levels - 1)
    px_lim = j_tick * tick
    in_band = jnp.abs(px_lim - ref) <= band * ref
    take_bound = jnp.where(side > 0, ref * (1 + band), ref * (1 - band))
    own = jnp.where(o.price > 0, o.price, take_bound)
    market_limit = jnp.where(side > 0, jnp.minimum(own, take_bound), jnp.maximum(own, take_bound))
    limit = jnp.where(is_limit, px_lim, market_limit)
    reason = jnp.where(~in_range, REJ_OUT_OF_RANGE, jnp.where(~in_band, REJ_PRICE_BAND, OK))
    return level, px_lim, limit, reason


def _spot_check(state: SimState, params: Params, a, m, side, qty, n_dry, rest_notional) -> Array:
    """OK when account a's free balances pay for a spot order: a buy the walk's notional
    with its taker fee plus what its resting remainder reserves, a sell the quantity."""
    acct = state.acct
    asset = accounts.MARKET_ASSET_ARR[m]
    need_usdt = n_dry * (1 + accounts.taker_rate_of(state, params, a)) + rest_notional
    spot_ok = jnp.where(
        side > 0,
        acct.bal[a, USDT] >= need_usdt - accounts.TINY * need_usdt,
        acct.bal[a, asset] >= qty * (1 - 1e-7),
    )
    return jnp.where(spot_ok, OK, REJ_BALANCE)


def _rest(state: SimState, q_m, ah_m, a, m, side, level, slot, rest_sz, px_lim) -> SimState:
    """Write market m's book slice back with `rest_sz` resting at the back of `level`'s
    queue in maker slot `slot` (taken by account a); a spot order reserves what it would
    pay (bids USDT at the limit price, asks the asset)."""
    side_idx = jnp.where(side > 0, BID, ASK)
    q_s, a_s = bk.add(q_m[side_idx], ah_m[side_idx], level, slot, rest_sz)
    q_m, ah_m = matching.set_side(q_m, side_idx, q_s), matching.set_side(ah_m, side_idx, a_s)
    state = matching.set_market_book(state, m, q_m, ah_m)
    owner = state.book.owner
    state = state.replace(
        book=state.book.replace(owner=owner.at[slot].set(jnp.where(rest_sz > 0, a, owner[slot])))
    )
    is_spot = m != PERP
    asset = accounts.MARKET_ASSET_ARR[m]
    bal = state.acct.bal
    bal = bal.at[a, USDT].add(-jnp.where(is_spot & (side > 0), rest_sz * px_lim, 0.0))
    bal = bal.at[a, asset].add(-jnp.where(is_spot & (side < 0), rest_sz, 0.0))
    return state.replace(acct=state.acct.replace(bal=bal))


def op_none(state, params, acc, o):
    """An empty row: nothing happens."""
    z = jnp.zeros((), state.acct.bal.dtype)
    return state, acc, OrderResults(jnp.array(OK), z, z, z)


def op_set_leverage(state, params, acc, o):
    """Set account o.account's leverage to o.qty, within the tier's max and (cross) with
    the initial margin of its position and orders covered."""
    a, new_lev = o.account, o.qty
    acct = state.acct
    n = jnp.abs(acct.pos[a]) * state.px.mark
    mb = accounts.margin_balance_of(state, a)
    im = (n + accounts.open_order_notional_of(state, params, a)) / jnp.maximum(new_lev, 1e-9)
    reason = jnp.where(
        (new_lev < 1.0) | (new_lev > mg.max_leverage(n, state.rules)),
        REJ_LEVERAGE,
        jnp.where((acct.mode[a] == CROSS) & (mb < im), REJ_MARGIN, OK),
    )
    lev = acct.lev.at[a].set(jnp.where(reason == OK, new_lev, acct.lev[a]))
    z = jnp.zeros((), acct.bal.dtype)
    return state.replace(acct=acct.replace(lev=lev)), acc, OrderResults(reason, z, z, z)


# One branch per operation; market, limit, post-only and cancel orders share `book_order`.
_BRANCHES = (
    op_none,
    book_order,
    collateral.op_transfer,
    op_set_leverage,
    collateral.op_borrow,
    collateral.op_repay,
)


_KIND_BRANCH = {
    KIND_NONE: 0,
    KIND_MARKET: 1,
    KIND_LIMIT: 1,
    KIND_CANCEL: 1,
    KIND_TRANSFER_OUT: 2,
    KIND_TRANSFER_IN: 2,
    KIND_SET_LEVERAGE: 3,
    KIND_BORROW: 4,
    KIND_REPAY: 5,
    KIND_POST_ONLY: 1,
}


assert sorted(_KIND_BRANCH) == list(range(N_KINDS))
KIND_BRANCH = jnp.array([_KIND_BRANCH[k] for k in range(N_KINDS)], jnp.int32)


def process(
    state: SimState, params: Params, orders: Orders, acc: tick_acc.TickAcc
) -> tuple[SimState, tick_acc.TickAcc, OrderResults]:
    """Process orders (K,) in their given order; empty rows (kind 0) are skipped.

    The non-empty rows are compacted to the front (keeping their order) and a while loop
    runs over them only, so a tick costs what its real orders cost (under vmap: the
    busiest env's count). Results come back in the rows' original positions.
    """
    n = orders.kind.shape[0]
    active = orders.kind != KIND_NONE
    perm, n_act = compact(active)
    dtype = state.acct.bal.dtype
    branches = [lambda s, c, oo, f=f: f(s, params, c, oo) for f in _BRANCHES]

    def body(carry):
        i, state, acc, outs = carry
        j = perm[i]
        o = jax.tree_util.tree_map(lambda x: x[j], orders)
        reason0 = validate(o, params)
        kind = jnp.where(reason0 == OK, o.kind, KIND_NONE)
        state, acc, res = jax.lax.switch(KIND_BRANCH[kind], branches, state, acc, o)
        res = res.replace(
            reason=jnp.where(reason0 == OK, res.reason, reason0).astype(jnp.int32),
            unfilled=jnp.where(
                reason0 == OK, res.unfilled, jnp.where(jnp.isfinite(o.qty), o.qty, 0.0)
            ),
        )
        outs = jax.tree_util.tree_map(lambda x, v: x.at[j].set(v), outs, res)
        return i + 1, state, acc, outs

    z = jnp.zeros((n,), dtype)
    outs0 = OrderResults(jnp.zeros((n,), jnp.int32), z, z, z)
    _, state, acc, outs = tied_while_loop(
        lambda c: c[0] < n_act, body, (jnp.zeros((), jnp.int32), state, acc, outs0), n_act
    )
    return state, acc, outs
