"""One exchange tick, in the order of DESIGN.md.

1. exogenous: external venue prices move (GBM + scripted shocks);
2. rule schedule: due changes take effect; breaching positions are force-reduced,
   liquidated or grandfathered per the change's policy;
3. background liquidity: the liquidity provider (LP) re-centres grids and refills depth;
4. external orders (learning agents) are processed one by one against the books;
5. transfers between the exchange and external venues arrive;
6. prices: index, mark, premium sample; funding settles at interval boundaries;
7. liquidation engine: `cascade_rounds` rounds, each re-pricing the index and mark, then
   liquidating every account under maintenance (cancel orders, IOC at the bankruptcy
   price into the perp book, insurance-fund takeover or ADL for the rest, clearance fee,
   collateral sold into its own spot book); then the fund unwinds part of its position;
8. events for the tick.

Everything is pure JAX with static loop bounds; `step` is jittable and vmappable over
state, orders and params.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct
from jax.flatten_util import ravel_pytree

from jaxsim import book as bk
from jaxsim import margin as mg
from jaxsim import population as popm
from jaxsim import prices as pr
from jaxsim.ops import compact, sum_last, sum_leading, tie
from jaxsim.ops import while_loop as tied_while_loop
from jaxsim.types import (
    ASK,
    BASE,
    BID,
    CROSS,
    INDEX_INTERNAL_MARKET,
    ISOLATED,
    KIND_BORROW,
    KIND_CANCEL,
    KIND_LIMIT,
    KIND_MARKET,
    KIND_NONE,
    KIND_REPAY,
    KIND_SET_LEVERAGE,
    KIND_TRANSFER_IN,
    KIND_TRANSFER_OUT,
    LP_SLOT,
    LST,
    MARKET_ASSET,
    N_ASSETS,
    N_KINDS,
    N_MARKETS,
    N_REASONS,
    N_SYSTEM,
    OK,
    PERP,
    POLICY_FORCE_REDUCE,
    POLICY_LIQUIDATE,
    REJ_BALANCE,
    REJ_INVALID,
    REJ_LEVERAGE,
    REJ_MARGIN,
    REJ_NO_LIQUIDITY,
    REJ_OUT_OF_RANGE,
    REJ_POSITION_LIMIT,
    REJ_PRICE_BAND,
    REJ_QUEUE_FULL,
    REJ_SYSTEM,
    SPOT,
    SPOT_MARKETS,
    STABLE,
    STABLE_SPOT,
    USDT,
    AccountState,
    Book,
    Orders,
    Params,
    PopState,
    PriceState,
    SimState,
    TickEvents,
)

Array = jax.Array

MARKET_ASSET_ARR = jnp.array(MARKET_ASSET, dtype=jnp.int32)
# Collateral the engine sells to cover a negative USDT balance, in this order.
COLLATERAL_SALE_ORDER = (STABLE, LST, BASE)
ASSET_MARKET = {BASE: SPOT, STABLE: STABLE_SPOT, LST: 3}
SALE_ASSET_ARR = jnp.array(COLLATERAL_SALE_ORDER, dtype=jnp.int32)
SALE_MARKET_ARR = jnp.array([ASSET_MARKET[x] for x in COLLATERAL_SALE_ORDER], dtype=jnp.int32)
VOL_EWMA_S = 300.0  # time constant of the realized-vol estimate used by the LP
DEPTH_BAND = 0.01  # depth reported within +/- 1% of mid
TINY = 1e-9
DUST = 1e-6  # relative size below which a limit order's remainder counts as filled


@struct.dataclass
class _Acc:
    """Per-tick accumulators carried through the phases of a step."""

    volume: Array  # (M,)
    fees: Array
    fees_acct: Array  # (A,) trading fees each account paid (maker + taker)
    liq_long: Array
    liq_short: Array
    liq_mask: Array  # (A,) accounts liquidated at least once this tick
    coll_sold: Array  # (4,)
    coll_sold_usdt: Array
    takeover: Array
    adl_count: Array
    adl_notional: Array
    bad_debt: Array
    forced: Array
    rules_changed: Array
    flow: Array  # () signed taker notional on the BASE books (buys +)


def _acc_zero(dtype, n_accounts: int) -> _Acc:
    z = jnp.zeros((), dtype)
    return _Acc(
        volume=jnp.zeros((N_MARKETS,), dtype),
        fees=z,
        fees_acct=jnp.zeros((n_accounts,), dtype),
        liq_long=z,
        liq_short=z,
        liq_mask=jnp.zeros((n_accounts,), bool),
        coll_sold=jnp.zeros((N_ASSETS,), dtype),
        coll_sold_usdt=z,
        takeover=z,
        adl_count=jnp.zeros((), jnp.int32),
        adl_notional=z,
        bad_debt=z,
        forced=z,
        rules_changed=jnp.zeros((), jnp.int32),
        flow=z,
    )


# ============================================================== small helpers


def asset_prices(px: PriceState) -> Array:
    """(4,) USDT value of one unit of USDT, BASE, STABLE, LST at index prices."""
    return jnp.concatenate([jnp.ones((1,), px.index.dtype), px.index])


def _level_px(state: SimState, params: Params, m) -> Array:
    return bk.level_prices(state.book.origin[m], params.markets.tick_size[m], params.dims.n_levels)


def _margin_balances(state: SimState) -> Array:
    a, r = state.acct, state.rules
    return mg.margin_balance(
        a.bal,
        a.debt,
        a.pos,
        a.entry,
        a.iso_margin,
        a.mode,
        asset_prices(state.px),
        state.px.mark,
        r.haircut,
    )


def _margin_balance_of(state: SimState, a) -> Array:
    """Margin balance of account a alone (`_margin_balances(state)[a]` without the others)."""
    acct = state.acct
    return mg.margin_balance(
        acct.bal[a],
        acct.debt[a],
        acct.pos[a],
        acct.entry[a],
        acct.iso_margin[a],
        acct.mode[a],
        asset_prices(state.px),
        state.px.mark,
        state.rules.haircut,
    )


def _equity(state: SimState) -> Array:
    """Unhaircut equity: wallet value + uPnL (cross) or isolated margin + uPnL."""
    a = state.acct
    upnl = a.pos * (state.px.mark - a.entry)
    cross = mg.wallet_value(a.bal, a.debt, asset_prices(state.px)) + upnl
    return jnp.where(a.mode == CROSS, cross, a.iso_margin + upnl)


def marked_equity(state: SimState, params: Params) -> Array:
    """(A,) each account's marked equity in USDT at index prices: wallet balances minus
    debts, balances on external venues and transfers in flight, what its resting spot
    orders reserve (bids at their price, asks at index), perp uPnL at mark and isolated
    margin. Moving assets between venues or resting a spot order changes none of it."""
    a = state.acct
    px = asset_prices(state.px)
    wallet = sum_last((a.bal - a.debt + a.ext_bal) * px)
    upnl = a.pos * (state.px.mark - a.entry)
    transit = sum_last(jnp.where(a.transit_amt > 0, a.transit_amt, 0.0) * px[a.transit_asset])
    reserved = 0.0
    for m in SPOT_MARKETS:
        lvl = _level_px(state, params, m)
        reserved = reserved + jnp.einsum("gq,g->q", state.book.qty[m, BID], lvl)
        reserved = reserved + state.book.qty[m, ASK].sum(0) * px[MARKET_ASSET[m]]
    reserved = per_account(state.book, reserved, params.dims.n_accounts)
    return wallet + upnl + a.iso_margin + transit + reserved


def _open_order_notional(state: SimState, params: Params) -> Array:
    """(A,) notional of each account's resting perp orders."""
    px = _level_px(state, params, PERP)
    per_slot = jnp.einsum("sgq,g->q", state.book.qty[PERP], px)
    return per_account(state.book, per_slot, params.dims.n_accounts)


def _open_order_notional_of(state: SimState, params: Params, a) -> Array:
    """Notional of account a's resting perp orders."""
    own = own_orders(state, a, PERP)
    return jnp.sum((own[BID] + own[ASK]) * _level_px(state, params, PERP))


def _system_mask(params: Params) -> Array:
    n = params.dims.n_accounts
    return jnp.arange(n) >= n - N_SYSTEM


def _onehot(a, n, dtype) -> Array:
    return (jnp.arange(n) == a).astype(dtype)


# ============================================================== maker slots


def slot_of(book: Book, a) -> tuple[Array, Array]:
    """(has, slot): whether account `a` holds a maker slot of the books, and which."""
    hit = book.owner == a
    return hit.any(), jnp.argmax(hit)


def _slot_matrix(book: Book, n_accounts: int, dtype) -> Array:
    """(Q, A) one-hot map of the maker slots to their accounts (a free slot maps nowhere)."""
    return (book.owner[:, None] == jnp.arange(n_accounts)[None, :]).astype(dtype)


def per_account(book: Book, x: Array, n_accounts: int) -> Array:
    """Per-slot values x (..., Q) as per-account values (..., A)."""
    return x @ _slot_matrix(book, n_accounts, x.dtype)


def own_orders(state: SimState, a, m) -> Array:
    """(2, G) sizes account `a` rests on market `m`, bids and asks (zeros without a slot)."""
    has, s = slot_of(state.book, a)
    return jnp.where(has, state.book.qty[m, :, :, s], 0.0)


def book_by_account(state: SimState, params: Params) -> tuple[Array, Array]:
    """(qty, ahead), each (M, 2, G, A): the books with one owner column per account."""
    p = _slot_matrix(state.book, params.dims.n_accounts, state.book.qty.dtype)
    return state.book.qty @ p, state.book.ahead @ p


def _slot_for(book: Book, a) -> tuple[Array, Array]:
    """(slot, ok): where account `a`'s next resting order goes. Its own slot, else the first
    free one: never used, or its owner has nothing left resting on any book (the LP's
    slot is never free). ok is False when every slot is taken."""
    has, s = slot_of(book, a)
    q = book.owner.shape[0]
    empty = sum_leading(book.qty) <= 0
    free = ((book.owner < 0) | empty) & (jnp.arange(q) != LP_SLOT)
    return jnp.where(has, s, jnp.argmax(free)), has | free.any()


# ============================================================== settlement


def _settle_perp(acct: AccountState, dq: Array, px: Array) -> AccountState:
    """Apply perp fills dq (A,) at prices px (A,) to positions, entries and margins."""
    pos0 = acct.pos
    new_pos, new_entry, realized = mg.apply_perp_fill(pos0, acct.entry, dq, px)
    same = pos0 * dq >= 0
    closed = jnp.where(same, 0.0, jnp.minimum(jnp.abs(dq), jnp.abs(pos0)))
    flipped = (~same) & (jnp.abs(dq) > jnp.abs(pos0))
    increase = jnp.where(
        flipped, jnp.abs(new_pos), jnp.maximum(jnp.abs(new_pos) - jnp.abs(pos0), 0.0)
    )
    iso = acct.mode == ISOLATED
    # Isolated: realized PnL lands in the position's margin, a closed fraction of that
    # margin returns to the wallet, and initial margin for any increase leaves the wallet.
    m1 = acct.iso_margin + realized
    frac = jnp.where(jnp.abs(pos0) > 0, closed / jnp.maximum(jnp.abs(pos0), 1e-30), 0.0)
    frac = jnp.where(new_pos == 0, 1.0, frac)
    release = jnp.maximum(m1, 0.0) * frac
    add_im = increase * px / jnp.maximum(acct.lev, 1.0)
    iso_new = m1 - release + add_im
    usdt_delta = jnp.where(iso, release - add_im, realized)
    touched = dq != 0
    return acct.replace(
        pos=jnp.where(touched, new_pos, pos0),
        entry=jnp.where(touched, new_entry, acct.entry),
        iso_margin=jnp.where(iso & touched, iso_new, acct.iso_margin),
        bal=acct.bal.at[:, USDT].add(jnp.where(touched, usdt_delta, 0.0)),
    )


def _market_book(state: SimState, m) -> tuple[Array, Array]:
    """(qty, ahead) of market m's book, each (2, G, Q)."""
    return state.book.qty[m], state.book.ahead[m]


def _set_market_book(state: SimState, m, q_m: Array, ah_m: Array) -> SimState:
    book = state.book.replace(
        qty=state.book.qty.at[m].set(q_m), ahead=state.book.ahead.at[m].set(ah_m)
    )
    return state.replace(book=book)


def _set_side(x: Array, s, v: Array) -> Array:
    """x (2, ...) with side s replaced by v."""
    return jnp.where((jnp.arange(2) == s).reshape((2,) + (1,) * v.ndim), v[None], x)


def _take(state: SimState, params: Params, acc: _Acc, a, m, side, qty, limit, fee_rate=None):
    """Account `a` takes `qty` on market `m` (side +1 buy / -1 sell) up to `limit`.

    Walks the book, credits makers by FIFO queue position, settles balances or perp
    positions and fees. No checks: callers decide whether the order is allowed.
    Returns (state, acc, filled qty, filled notional).
    """
    q_m, ah_m = _market_book(state, m)
    state, acc, q_m, ah_m, filled, notional = _take_on(
        state, params, acc, q_m, ah_m, a, m, side, qty, limit, fee_rate
    )
    return _set_market_book(state, m, q_m, ah_m), acc, filled, notional


def _take_on(state, params, acc, q_m, ah_m, a, m, side, qty, limit, fee_rate=None):
    """`_take` on market m's book given as the slice (q_m, ah_m) (2, G, Q): the state's
    accounts, last price and `acc` are settled, its book is left alone and the new slice
    returned. Returns (state, acc, q_m, ah_m, filled qty, filled notional)."""
    dims = params.dims
    n = dims.n_accounts
    dtype = state.acct.bal.dtype
    px = _level_px(state, params, m)
    hit = jnp.where(side > 0, ASK, BID)
    fill_lvl = bk.walk(sum_last(q_m[hit]), px, side, qty, limit)
    q_side, ah_side, f = bk.consume(q_m[hit], ah_m[hit], fill_lvl)
    fill_lvl = sum_last(f)  # what makers actually gave (equal to the walk up to rounding)
    q_m, ah_m = _set_side(q_m, hit, q_side), _set_side(ah_m, hit, ah_side)
    filled = fill_lvl.sum()
    notional = jnp.sum(fill_lvl * px)
    maker_q = per_account(state.book, f.sum(0), n)
    maker_n = per_account(state.book, jnp.einsum("gq,g->q", f, px), n)
    rules = state.rules
    t_fee_rate = rules.taker_fee if fee_rate is None else fee_rate
    fee_t = notional * t_fee_rate
    fee_m = maker_n * rules.maker_fee
    taker = _onehot(a, n, dtype)
    acct = state.acct
    bal = acct.bal

    is_perp = m == PERP
    asset = MARKET_ASSET_ARR[m]
    asset_oh = (jnp.arange(N_ASSETS) == asset).astype(dtype)
    usdt_oh = (jnp.arange(N_ASSETS) == USDT).astype(dtype)
    buy = side > 0
    # Spot: taker buy receives the asset and pays USDT; makers (asks) receive USDT
    # (their asset was reserved in the book). Taker sell is the mirror image.
    spot_taker = jnp.where(
        buy, filled * asset_oh - notional * usdt_oh, -filled * asset_oh + notional * usdt_oh
    )
    spot_maker = jnp.where(
        buy, maker_n[:, None] * usdt_oh[None, :], maker_q[:, None] * asset_oh[None, :]
    )
    spot_bal = bal + taker[:, None] * spot_taker[None, :] + spot_maker
    bal = jnp.where(is_perp, bal, spot_bal)
    bal = bal.at[:, USDT].add(-fee_m - taker * fee_t)
    bal = bal.at[dims.fees, USDT].add(fee_t + fee_m.sum())
    acct = acct.replace(bal=bal)

    # Perp: makers first (each at its own average price), then the taker.
    maker_px = maker_n / jnp.maximum(maker_q, 1e-30)
    acct_p = _settle_perp(acct, jnp.where(is_perp, -side * maker_q, 0.0), maker_px)
    avg = notional / jnp.maximum(filled, 1e-30)
    acct_p = _settle_perp(
        acct_p, jnp.where(is_perp, side * filled * taker, 0.0), jnp.full((n,), avg, dtype)
    )
    acct = jax.tree_util.tree_map(lambda x, y: jnp.where(is_perp, y, x), acct, acct_p)

    last_fill_px = jnp.where(
        buy,
        jnp.max(jnp.where(fill_lvl > 0, px, -jnp.inf)),
        jnp.min(jnp.where(fill_lvl > 0, px, jnp.inf)),
    )
    last = state.px.last.at[m].set(jnp.where(filled > 0, last_fill_px, state.px.last[m]))
    acc = acc.replace(
        volume=acc.volume.at[m].add(filled),
        fees=acc.fees + fee_t + fee_m.sum(),
        fees_acct=acc.fees_acct + fee_m + taker * fee_t,
        flow=acc.flow + jnp.where((m == SPOT) | is_perp, side * notional, 0.0),
    )
    state = state.replace(acct=acct, px=state.px.replace(last=last))
    return state, acc, q_m, ah_m, filled, notional


def _cancel(state: SimState, params: Params, a, m, sides_mask: Array, frac=1.0):
    """Cancel `frac` of account a's orders on market m for the sides in sides_mask (2,)."""
    q_m, ah_m = _market_book(state, m)
    state, q_m, ah_m = _cancel_on(state, params, q_m, ah_m, a, m, sides_mask, frac)
    return _set_market_book(state, m, q_m, ah_m)


def _cancel_on(state, params, q_m, ah_m, a, m, sides_mask, frac=1.0):
    """`_cancel` on market m's book slice (q_m, ah_m): refunds settled in the state, the
    new slice returned. Returns (state, q_m, ah_m)."""
    px = _level_px(state, params, m)
    has, slot = slot_of(state.book, a)
    outs_q, outs_a, cancelled = [], [], []
    for s in (BID, ASK):
        sizes = jnp.where(has, q_m[s, :, slot] * frac * sides_mask[s], 0.0)
        q_s, a_s, c = bk.cancel_levels(q_m[s], ah_m[s], slot, sizes)
        outs_q.append(q_s)
        outs_a.append(a_s)
        cancelled.append(c)
    # Refund spot reserves: bids held USDT, asks held the asset.
    is_spot = m != PERP
    refund_usdt = jnp.where(is_spot, jnp.sum(cancelled[BID] * px), 0.0)
    refund_asset = jnp.where(is_spot, jnp.sum(cancelled[ASK]), 0.0)
    bal = state.acct.bal.at[a, USDT].add(refund_usdt)
    bal = bal.at[a, MARKET_ASSET_ARR[m]].add(refund_asset)
    return state.replace(acct=state.acct.replace(bal=bal)), jnp.stack(outs_q), jnp.stack(outs_a)


def _cancel_all(state: SimState, params: Params, a, on=True) -> SimState:
    """Cancel all of account a's resting orders when `on` (a traced bool)."""
    both = jnp.ones((2,))
    frac = jnp.asarray(on, state.acct.bal.dtype)
    # A loop over the markets rather than one cancel per market: the compiled program
    # holds a single copy of it.
    return jax.lax.fori_loop(
        0, N_MARKETS, lambda m, st: _cancel(st, params, a, m, both, frac), state
    )


# ============================================================== external orders


def _validate(o, params: Params) -> Array:
    n_user = params.dims.n_accounts - N_SYSTEM
    finite = jnp.isfinite(o.qty) & jnp.isfinite(o.price)
    kind_ok = (o.kind >= 1) & (o.kind < N_KINDS)
    acct_ok = (o.account >= 0) & (o.account < params.dims.n_accounts)
    is_trade = (o.kind == KIND_MARKET) | (o.kind == KIND_LIMIT)
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
    price_ok = jnp.where(o.kind == KIND_LIMIT, o.price > 0, o.price >= 0)
    valid = finite & kind_ok & acct_ok & mkt_ok & side_ok & qty_ok & price_ok
    reason = jnp.where(valid, OK, REJ_INVALID)
    reason = jnp.where(valid & (o.account >= n_user), REJ_SYSTEM, reason)
    return jnp.where(o.kind == KIND_NONE, OK, reason)


def _book_order(state: SimState, params: Params, acc: _Acc, o):
    """Market (IOC walk), limit (walk, then rest the remainder) or cancel order; `o.kind`
    decides. Market m's book is read once and written back once: under vmap every branch
    of the order switch runs, so one book branch costs one write of the slice."""
    is_cancel = o.kind == KIND_CANCEL
    is_limit = o.kind == KIND_LIMIT
    dims = params.dims
    a, m, side = o.account, o.market, o.side
    qty = jnp.where(is_cancel, 0.0, o.qty)
    q_m, ah_m = _market_book(state, m)
    # Cancel: side +1 bids, -1 asks, 0 both (nothing for a trade).
    sides = jnp.stack([(o.side >= 0), (o.side <= 0)]) & is_cancel
    state, q_m, ah_m = _cancel_on(state, params, q_m, ah_m, a, m, sides.astype(qty.dtype))
    rules = state.rules
    tick = params.markets.tick_size[m]
    origin = state.book.origin[m]
    px = _level_px(state, params, m)
    mark = state.px.mark
    ref = jnp.where(m == PERP, mark, state.px.last[m])
    band = rules.price_band[m]

    # Limit price on the grid: buys round down, sells round up (never a worse price).
    raw = o.price / tick
    j_tick = jnp.where(side > 0, jnp.floor(raw + 1e-6), jnp.ceil(raw - 1e-6))
    level = (j_tick - origin).astype(jnp.int32)
    in_range = (level >= 0) & (level < dims.n_levels)
    level = jnp.clip(level, 0, dims.n_levels - 1)
    px_lim = j_tick * tick
    in_band = jnp.abs(px_lim - ref) <= band * ref
    take_bound = jnp.where(side > 0, ref * (1 + band), ref * (1 - band))
    limit = jnp.where(is_limit, px_lim, jnp.where(o.price > 0, o.price, take_bound))

    hit = jnp.where(side > 0, ASK, BID)
    dry = bk.walk(sum_last(q_m[hit]), px, side, qty, limit)
    f_dry = dry.sum()
    n_dry = jnp.sum(dry * px)
    avg_dry = n_dry / jnp.maximum(f_dry, 1e-30)
    rest = jnp.where(is_limit, qty - f_dry, 0.0)

    slot, slot_ok = _slot_for(state.book, a)
    limit_reason = jnp.where(~in_range, REJ_OUT_OF_RANGE, jnp.where(~in_band, REJ_PRICE_BAND, OK))
    # The remainder would rest but no maker slot is free: rejected whole, before it trades.
    limit_reason = jnp.where(
        (limit_reason == OK) & (rest > DUST * qty) & ~slot_ok, REJ_QUEUE_FULL, limit_reason
    )
    market_reason = jnp.where(f_dry <= 0, REJ_NO_LIQUIDITY, OK)
    reason = jnp.where(is_limit, limit_reason, market_reason)

    acct = state.acct
    asset = MARKET_ASSET_ARR[m]
    # Spot: pay from free balances.
    need_usdt = n_dry * (1 + rules.taker_fee) + rest * px_lim
    spot_ok = jnp.where(
        side > 0,
        acct.bal[a, USDT] >= need_usdt - TINY * need_usdt,
        acct.bal[a, asset] >= qty * (1 - 1e-7),
    )
    # Perp: position limit, tier leverage and initial margin for position-increasing orders.
    pos = acct.pos[a]
    new_pos = pos + side * qty
    n_new = jnp.abs(new_pos) * mark
    increasing = jnp.abs(new_pos) > jnp.abs(pos)
    lev = acct.lev[a]
    mb = _margin_balance_of(state, a)
    impact = side * f_dry * (mark - avg_dry) - n_dry * rules.taker_fee
    orders_im = (_open_order_notional_of(state, params, a) + rest * px_lim) / lev
    im_new = n_new / lev
    free_cross = mb + impact - im_new - orders_im
    wallet = mg.collateral_value(acct.bal[a], acct.debt[a], asset_prices(state.px), rules.haircut)
    iso_eq = acct.iso_margin[a] + pos * (mark - acct.entry[a]) + impact
    free_iso = wallet - jnp.maximum(im_new - iso_eq, 0.0) - orders_im
    free = jnp.where(acct.mode[a] == CROSS, free_cross, free_iso)
    # The limit in force (scaled to the perp book's depth where the rules say so).
    limit_now = mg.position_limit_in_force(rules, q_m, px)
    perp_reason = jnp.where(
        n_new > limit_now,
        REJ_POSITION_LIMIT,
        jnp.where(
            lev > mg.max_leverage(n_new, rules), REJ_LEVERAGE, jnp.where(free < 0, REJ_MARGIN, OK)
        ),
    )
    perp_reason = jnp.where(increasing, perp_reason, OK)
    check = jnp.where(m == PERP, perp_reason, jnp.where(spot_ok, OK, REJ_BALANCE))
    reason = jnp.where(reason == OK, check, reason)
    reason = jnp.where(is_cancel, OK, reason)
    ok = (reason == OK) & ~is_cancel

    state, acc, q_m, ah_m, filled, notional = _take_on(
        state, params, acc, q_m, ah_m, a, m, side, jnp.where(ok, qty, 0.0), limit
    )
    # A limit order's remainder rests at the back of its level's queue (a market order's
    # remainder is reported unfilled); spot orders reserve what they would pay.
    rest_sz = jnp.where(ok & is_limit, jnp.maximum(qty - filled, 0.0), 0.0)
    # Summed level fills round: a remainder below 1e-6 of the order is a complete fill, not
    # dust left resting across the book.
    rest_sz = jnp.where(rest_sz > DUST * qty, rest_sz, 0.0)
    side_idx = jnp.where(side > 0, BID, ASK)
    q_s, a_s = bk.add(q_m[side_idx], ah_m[side_idx], level, slot, rest_sz)
    q_m, ah_m = _set_side(q_m, side_idx, q_s), _set_side(ah_m, side_idx, a_s)
    state = _set_market_book(state, m, q_m, ah_m)
    owner = state.book.owner
    state = state.replace(
        book=state.book.replace(owner=owner.at[slot].set(jnp.where(rest_sz > 0, a, owner[slot])))
    )
    is_spot = m != PERP
    bal = state.acct.bal
    bal = bal.at[a, USDT].add(-jnp.where(is_spot & (side > 0), rest_sz * px_lim, 0.0))
    bal = bal.at[a, asset].add(-jnp.where(is_spot & (side < 0), rest_sz, 0.0))
    state = state.replace(acct=state.acct.replace(bal=bal))
    unfilled = jnp.where(ok | is_cancel, jnp.where(is_limit | is_cancel, 0.0, qty - filled), qty)
    avg = notional / jnp.maximum(filled, 1e-30)
    return state, acc, (reason, filled, jnp.where(filled > 0, avg, 0.0), unfilled)


def _op_none(state, params, acc, o):
    z = jnp.zeros((), state.acct.bal.dtype)
    return state, acc, (jnp.array(OK), z, z, z)


def _im_total_of(state: SimState, params: Params, a) -> Array:
    """Initial margin of account a's position and resting perp orders at its leverage."""
    acct = state.acct
    notional = jnp.abs(acct.pos[a]) * state.px.mark + _open_order_notional_of(state, params, a)
    return notional / jnp.maximum(acct.lev[a], 1.0)


def _op_transfer(state, params, acc, o):
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
    # Leaving the exchange must not break the account's initial margin (cross).
    px = asset_prices(state.px)
    mb_after = _margin_balance_of(state, a) - qty * px[asset] * (1 - state.rules.haircut[asset])
    short = (acct.mode[a] == CROSS) & (mb_after < _im_total_of(state, params, a))
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
    return state.replace(acct=acct), acc, (reason, amt, z, qty - amt)


def _op_set_leverage(state, params, acc, o):
    a, new_lev = o.account, o.qty
    acct = state.acct
    n = jnp.abs(acct.pos[a]) * state.px.mark
    mb = _margin_balance_of(state, a)
    im = (n + _open_order_notional_of(state, params, a)) / jnp.maximum(new_lev, 1e-9)
    reason = jnp.where(
        (new_lev < 1.0) | (new_lev > mg.max_leverage(n, state.rules)),
        REJ_LEVERAGE,
        jnp.where((acct.mode[a] == CROSS) & (mb < im), REJ_MARGIN, OK),
    )
    lev = acct.lev.at[a].set(jnp.where(reason == OK, new_lev, acct.lev[a]))
    z = jnp.zeros((), acct.bal.dtype)
    return state.replace(acct=acct.replace(lev=lev)), acc, (reason, z, z, z)


def _op_borrow(state, params, acc, o):
    a, asset, qty = o.account, o.market, o.qty
    acct = state.acct
    px = asset_prices(state.px)
    # Borrowed units count as haircut collateral while the debt counts in full.
    mb_after = _margin_balance_of(state, a) - qty * px[asset] * state.rules.haircut[asset]
    reason = jnp.where(
        acct.mode[a] != CROSS,
        REJ_INVALID,
        jnp.where(mb_after < _im_total_of(state, params, a), REJ_MARGIN, OK),
    )
    amt = jnp.where(reason == OK, qty, 0.0)
    lender = params.dims.outside
    bal = acct.bal.at[a, asset].add(amt).at[lender, asset].add(-amt)
    debt = acct.debt.at[a, asset].add(amt)
    z = jnp.zeros((), acct.bal.dtype)
    return state.replace(acct=acct.replace(bal=bal, debt=debt)), acc, (reason, amt, z, qty - amt)


def _op_repay(state, params, acc, o):
    a, asset, qty = o.account, o.market, o.qty
    acct = state.acct
    ok = (acct.bal[a, asset] >= qty) & (acct.debt[a, asset] >= qty * (1 - 1e-7))
    amt = jnp.where(ok, jnp.minimum(qty, acct.debt[a, asset]), 0.0)
    lender = params.dims.outside
    bal = acct.bal.at[a, asset].add(-amt).at[lender, asset].add(amt)
    debt = acct.debt.at[a, asset].add(-amt)
    z = jnp.zeros((), acct.bal.dtype)
    reason = jnp.where(ok, OK, REJ_BALANCE)
    return state.replace(acct=acct.replace(bal=bal, debt=debt)), acc, (reason, amt, z, qty - amt)


# One branch per operation; market, limit and cancel orders share `_book_order`.
_BRANCHES = (
    _op_none,
    _book_order,
    _op_transfer,
    _op_set_leverage,
    _op_borrow,
    _op_repay,
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
}
assert sorted(_KIND_BRANCH) == list(range(N_KINDS))
KIND_BRANCH = jnp.array([_KIND_BRANCH[k] for k in range(N_KINDS)], jnp.int32)


def _process_orders(state: SimState, params: Params, orders: Orders, acc: _Acc):
    """Process orders in their given order; empty rows (kind 0) are skipped.

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
        reason0 = _validate(o, params)
        kind = jnp.where(reason0 == OK, o.kind, KIND_NONE)
        state, acc, (reason, filled, avg, unfilled) = jax.lax.switch(
            KIND_BRANCH[kind], branches, state, acc, o
        )
        reason = jnp.where(reason0 == OK, reason, reason0)
        unfilled = jnp.where(reason0 == OK, unfilled, jnp.where(jnp.isfinite(o.qty), o.qty, 0.0))
        r, f, a, u = outs
        outs = (
            r.at[j].set(reason.astype(jnp.int32)),
            f.at[j].set(filled),
            a.at[j].set(avg),
            u.at[j].set(unfilled),
        )
        return i + 1, state, acc, outs

    outs0 = (
        jnp.zeros((n,), jnp.int32),
        jnp.zeros((n,), dtype),
        jnp.zeros((n,), dtype),
        jnp.zeros((n,), dtype),
    )
    _, state, acc, outs = tied_while_loop(
        lambda c: c[0] < n_act, body, (jnp.zeros((), jnp.int32), state, acc, outs0), n_act
    )
    return state, acc, outs


# ============================================================== transfers


def _arrivals(state: SimState) -> SimState:
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


# ============================================================== exogenous prices


def _exogenous(key, state: SimState, params: Params) -> SimState:
    exo, dt = params.exo, params.dt
    k1, k2 = jax.random.split(key)
    dtype = state.px.ext.dtype
    z = jax.random.normal(k1, (3,), dtype)
    t = state.t
    shock_on = (
        exo.shock_active
        & (t >= exo.shock_start_tick)
        & (t < exo.shock_start_tick + exo.shock_ticks)
    )
    shock_drift = (
        jnp.zeros((3,), dtype)
        .at[exo.shock_asset]
        .add(jnp.where(shock_on, exo.shock_log_return / jnp.maximum(exo.shock_ticks, 1), 0.0))
    )
    # Stochastic volatility (log factor, mean-reverting) and Poisson jumps; their draws use
    # keys of their own so switching them off leaves the diffusion's path unchanged.
    k_sv, k_jump, k_jsize = (jax.random.fold_in(key, i) for i in (1, 2, 3))
    kappa_sv = jnp.minimum(exo.sv_reversion_per_s * dt, 1.0)
    sv = state.pop.sv * (1 - kappa_sv) + exo.vol_of_vol_per_sqrt_s * jnp.sqrt(
        dt
    ) * jax.random.normal(k_sv, (3,), dtype)
    jump = jnp.where(
        jax.random.uniform(k_jump, (3,), dtype) < exo.jump_rate_per_s * dt,
        exo.jump_std * jax.random.normal(k_jsize, (3,), dtype),
        0.0,
    )
    shock_drift = shock_drift + jump
    sig = exo.vol_per_sqrt_s * jnp.exp(sv)
    logp = jnp.log(state.px.ext_common)
    # BASE: GBM. STABLE: mean-reverting to its redemption price 1. LST: BASE times the
    # redemption rate times a mean-reverting premium.
    d_base = -0.5 * sig[0] ** 2 * dt + sig[0] * jnp.sqrt(dt) * z[0]
    # The wider market absorbs the net flow traded here last tick (0 unless configured):
    # a log offset that decays (transient impact) or stays (half-life 0).
    imp = state.px.impact
    imp_new = imp * jnp.exp(-exo.venue_impact_decay_per_s * dt) + exo.venue_impact * state.px.flow
    d_base = d_base + imp_new - imp
    new_base = logp[0] + d_base + shock_drift[0]
    kappa = jnp.minimum(exo.stable_reversion_per_s * dt, 1.0)
    new_stable = logp[1] * (1 - kappa) + sig[1] * jnp.sqrt(dt) * z[1] + shock_drift[1]
    lst_prem = logp[2] - logp[0] - jnp.log(exo.lst_rate)
    new_lst_prem = lst_prem * (1 - kappa) + sig[2] * jnp.sqrt(dt) * z[2] + shock_drift[2]
    new_lst = new_base + jnp.log(exo.lst_rate) + new_lst_prem
    new_log = jnp.stack([new_base, new_stable, new_lst])
    common = jnp.exp(new_log)
    v = params.dims.n_venues
    noise = exo.venue_dispersion * jax.random.normal(k2, (3, v), dtype)
    ext = common[:, None] * (1.0 + noise)
    r = new_log - logp
    alpha = jnp.minimum(dt / VOL_EWMA_S, 1.0)
    var = (1 - alpha) * state.px.vol**2 + alpha * r**2 / dt
    return state.replace(
        px=state.px.replace(ext=ext, ext_common=common, vol=jnp.sqrt(var), impact=imp_new),
        pop=state.pop.replace(sv=sv),
    )


# ============================================================== prices and funding


def _internal_px(state: SimState, params: Params, m) -> Array:
    return state.px.last[m]


def _perp_mid(state: SimState, params: Params) -> Array:
    px = _level_px(state, params, PERP)
    bid, ask = bk.best_prices(state.book.qty[PERP], px)
    ok = (bid > 0) & jnp.isfinite(ask)
    return jnp.where(ok, 0.5 * (bid + ask), state.px.last[PERP])


def _index(state: SimState, params: Params) -> Array:
    rules = state.rules
    ext = state.px.ext
    internal = jnp.stack([_internal_px(state, params, m) for m in INDEX_INTERNAL_MARKET])
    # Redemption legs: BASE has none (its weight must be 0), STABLE redeems at 1,
    # LST at lst_rate BASE valued at the BASE index computed first.
    base_c = jnp.concatenate([ext[0], internal[:1], state.px.ext_common[:1]])
    base_idx = pr.index_price(
        base_c, rules.index_weights[0], rules.index_clip[0], rules.price_floor[0]
    )
    stab_c = jnp.concatenate([ext[1], internal[1:2], jnp.ones((1,), ext.dtype)])
    lst_c = jnp.concatenate([ext[2], internal[2:3], (params.exo.lst_rate * base_idx)[None]])
    rest = pr.index_price(
        jnp.stack([stab_c, lst_c]),
        rules.index_weights[1:],
        rules.index_clip[1:],
        rules.price_floor[1:],
    )
    return jnp.concatenate([base_idx[None], rest])


def _basis_ma(state: SimState, params: Params) -> Array:
    w = params.dims.basis_window
    n_win = jnp.clip(jnp.round(params.basis_window_s / params.dt), 1, w).astype(jnp.int32)
    n_have = jnp.minimum(state.px.basis_count, n_win)
    # Positions of the newest n_have samples in the ring buffer.
    newest = (state.px.basis_count - 1) % w
    age = (newest - jnp.arange(w)) % w
    use = age < n_have
    return jnp.sum(jnp.where(use, state.px.basis_buf, 0.0)) / jnp.maximum(n_have, 1)


def _time_to_funding(state: SimState, params: Params) -> Array:
    return jnp.maximum(state.px.next_funding_s - state.t * params.dt, 0.0)


def _reprice(state: SimState, params: Params) -> SimState:
    """Index and mark from the current books (used at step 6 and between cascade rounds)."""
    index = _index(state, params)
    px = state.px.replace(index=index)
    state = state.replace(px=px)
    mark = pr.mark_price(
        index[0],
        state.px.last[PERP],
        _basis_ma(state, params),
        state.px.funding_rate,
        _time_to_funding(state, params),
        state.rules.funding_interval_s,
    )
    return state.replace(px=state.px.replace(mark=mark))


def _impact_premium(state: SimState, params: Params, index_base) -> Array:
    rules = state.rules
    px = _level_px(state, params, PERP)
    tot = sum_last(state.book.qty[PERP])
    imn = rules.imn_quote * rules.tier_max_lev[0]
    impact_bid = bk.impact_price(tot[BID], px, -1, imn)
    impact_ask = bk.impact_price(tot[ASK], px, 1, imn)
    # An empty side contributes nothing to the premium (treated as at the index).
    impact_bid = jnp.where(jnp.isfinite(impact_bid), impact_bid, index_base)
    impact_ask = jnp.where(jnp.isfinite(impact_ask), impact_ask, index_base)
    return pr.premium_index(impact_bid, impact_ask, index_base)


def _prices_and_funding(state: SimState, params: Params):
    state = _reprice(state, params)
    p = state.px
    rules = state.rules
    # Basis sample for the mark's moving average.
    w = params.dims.basis_window
    sample = _perp_mid(state, params) - p.index[0]
    buf = p.basis_buf.at[p.basis_count % w].set(sample)
    # Premium sample, linearly time-weighted within the interval.
    prem = _impact_premium(state, params, p.index[0])
    i = (p.prem_n + 1).astype(p.prem_wsum.dtype)
    wsum, wtot = p.prem_wsum + i * prem, p.prem_w + i
    rate = pr.funding_rate(
        wsum / wtot,
        rules.funding_interest,
        rules.funding_clamp,
        rules.funding_cap,
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
    return state.replace(px=p, acct=acct), settle, jnp.where(settle, rate, 0.0)


# ============================================================== liquidity provider


def _lp_center(state: SimState, params: Params, m, q_m: Array, px: Array) -> Array:
    ref = popm.market_refs(state)[m]
    bid, ask = bk.best_prices(q_m, px)
    # With one side empty (swept) the last trade is the best estimate of the book's price.
    mid = jnp.where((bid > 0) & jnp.isfinite(ask), 0.5 * (bid + ask), state.px.last[m])
    w = params.markets.lp_ref_weight[m]
    return w * ref + (1 - w) * mid


def _recentre(state: SimState, params: Params, m, q_m, ah_m, origin, bal, center):
    """Shift market m's grid (slice q_m, ah_m, origin) back around `center` once it drifted
    a quarter of the grid away; dropped spot orders refund their reserves into `bal`.
    Returns (q_m, ah_m, origin, bal)."""
    g = params.dims.n_levels
    tick = params.markets.tick_size[m]
    c_lvl = center / tick - origin
    off = c_lvl - g / 2
    k = jnp.where(jnp.abs(off) > g / 4, jnp.round(off), 0.0).astype(jnp.int32)
    px_old = bk.level_prices(origin, tick, g)
    q_m, ah_m, dropped = bk.shift(q_m, ah_m, k)
    # Spot orders held reserves (bids USDT, asks the asset); perp orders held none.
    is_spot = m != PERP
    n = params.dims.n_accounts
    refund = per_account(state.book, jnp.einsum("gq,g->q", dropped[BID], px_old), n)
    bal = bal.at[:, USDT].add(jnp.where(is_spot, refund, 0.0))
    refund_asset = per_account(state.book, dropped[ASK].sum(0), n)
    bal = bal.at[:, MARKET_ASSET_ARR[m]].add(jnp.where(is_spot, refund_asset, 0.0))
    return q_m, ah_m, origin + k, bal


# Volatility row (of the external venues' BASE, STABLE, LST) each market's maker watches.
_VOL_ROW = jnp.array([(BASE, STABLE, LST).index(x) for x in MARKET_ASSET], jnp.int32)


def _liquidity(state: SimState, params: Params) -> SimState:
    """The LP re-centres each grid and re-quotes its depth, market by market (a loop over
    the markets, so the compiled program holds one copy of the market's update)."""

    def one_market(m, state):
        return _liquidity_on(state, params, m)

    return jax.lax.fori_loop(0, N_MARKETS, one_market, state)


def _liquidity_on(state: SimState, params: Params, m) -> SimState:
    mp, dims, pp = params.markets, params.dims, params.pop
    lp = dims.lp
    bal = state.acct.bal
    is_spot = m != PERP
    asset = MARKET_ASSET_ARR[m]
    q_m, ah_m, origin = state.book.qty[m], state.book.ahead[m], state.book.origin[m]
    tick = mp.tick_size[m]
    center = _lp_center(state, params, m, q_m, bk.level_prices(origin, tick, dims.n_levels))
    # Inventory skew: quote lower when long against the starting inventory, higher when short.
    # Perp: against the starting position, or (perp_skew_vs: flat) against all of it: a
    # maker short the crowd's longs quotes the perp up to buy its inventory back.
    dev_perp = state.acct.pos[lp] - (1.0 - pp.lp_perp_flat) * params.accounts.pos[lp]
    held = bal[lp, asset] + q_m[ASK, :, LP_SLOT].sum()
    dev = jnp.where(is_spot, held - params.accounts.bal[lp, asset], dev_perp)
    skew = jnp.clip(dev / pp.lp_inv_unit[m], -5.0, 5.0) * pp.lp_skew_bps[m] * 1e-4
    center = center * (1.0 - skew)
    q_m, ah_m, origin, bal = _recentre(state, params, m, q_m, ah_m, origin, bal, center)
    px = bk.level_prices(origin, tick, dims.n_levels)
    dist_bps = jnp.abs(px - center) / center * 1e4
    row = _VOL_ROW[m]
    # Volatility the market maker sees: the external venues' and its own book's.
    int_ref = pp.int_vol_ref[m]
    vol_ratio = jnp.maximum(
        state.px.vol[row] / params.exo.vol_ref[row],
        jnp.where(int_ref > 0, state.pop.int_vol[m] / jnp.maximum(int_ref, 1e-30), 0.0),
    )
    excess_vol = jnp.maximum(vol_ratio - 1.0, 0.0)
    # Losses: depth shrinks with the LP's drawdown from its equity peak.
    loss = jnp.maximum(state.pop.lp_peak - state.pop.lp_eq, 0.0) / pp.lp_loss_ref
    scale = 1.0 / (1.0 + mp.lp_vol_withdraw[m] * excess_vol) / (1.0 + pp.lp_loss_withdraw * loss)
    prof = mp.lp_depth[m] * jnp.exp(-dist_bps / mp.lp_decay_bps[m]) * scale
    gap = mp.lp_half_spread_ticks[m] * tick * (1.0 + pp.lp_widen[m] * excess_vol)
    tgt_bid = jnp.where(px <= center - gap + 1e-9 * center, prof, 0.0)
    tgt_ask = jnp.where(px >= center + gap - 1e-9 * center, prof, 0.0)
    # Pull excess at once (makers withdraw fast), refill at the resilience rate. A level
    # is either shrunk or grown, never both (no dust top-up of a level just shrunk).
    fill = jnp.minimum(mp.lp_resilience_per_s[m] * params.dt, 1.0)
    tgt = jnp.stack([tgt_bid, tgt_ask])
    own = q_m[:, :, LP_SLOT]
    cut = jnp.maximum(own - tgt, 0.0)
    kept = own - cut
    add = jnp.where(cut > 0, 0.0, jnp.maximum(tgt - kept, 0.0) * fill)
    # Never cross the book left after the cuts: bids below its best ask, asks above its
    # best bid.
    bid, ask = bk.best_prices(q_m.at[:, :, LP_SLOT].set(kept), px)
    add = jnp.where(jnp.stack([px < ask, px > bid]), add, 0.0)
    # Spot: cut orders refund their reserves; new ones are paid from what the LP holds.
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
    bal = jnp.where(is_spot, bal_s, bal)
    q_m, ah_m = bk.requote(q_m, ah_m, LP_SLOT, cut, add)
    book = state.book.replace(
        qty=state.book.qty.at[m].set(q_m),
        ahead=state.book.ahead.at[m].set(ah_m),
        origin=state.book.origin.at[m].set(origin),
    )
    return state.replace(book=book, acct=state.acct.replace(bal=bal))


def _apply_schedule(state: SimState, params: Params, acc: _Acc):
    """Apply due rule changes; queue breaching accounts for the change's policy."""
    sch = params.schedule
    due = sch.active & (sch.effective_tick == state.t)
    flat, unravel = ravel_pytree(state.rules)
    # Only the due rows write: a field with several rows (a phased change) or padding rows
    # (index 0) must not write their current value back over the due one, as a scatter
    # with duplicate indices keeps an unspecified one of them. The config allows at most
    # one row per rule element and tick.
    idx = jnp.where(due, sch.flat_index, flat.shape[0])
    flat = flat.at[idx].set(sch.value.astype(flat.dtype), mode="drop")
    state = state.replace(rules=unravel(flat))
    policy = jnp.max(jnp.where(due, sch.policy, 0))
    acc = acc.replace(rules_changed=acc.rules_changed + due.sum().astype(jnp.int32))
    # Positions that now break the limits (notional above the position limit, or initial
    # margin at the tier's max leverage above the margin balance) are queued for the
    # policy; grandfathered ones are left alone.
    queue = due.any() & _breaching(state, params) & (policy > 0)
    state = state.replace(enforce=jnp.where(queue, policy, state.enforce))
    return _force_reduce(state, params, acc)


def _breaching(state: SimState, params: Params) -> Array:
    acct = state.acct
    n = jnp.abs(acct.pos) * state.px.mark
    n_allowed = _max_allowed_notional(_margin_balances(state), state.rules)
    return (n > n_allowed * (1 + 1e-6)) & ~_system_mask(params) & (acct.pos != 0)


def _first_k(mask: Array, k: int) -> tuple[Array, Array]:
    """Indices of the first k True entries of mask (account order) and their validity."""
    order = compact(mask)[0][:k]
    return order, mask[order]


def _force_reduce(state: SimState, params: Params, acc: _Acc):
    """Cut queued force-reduce accounts back to what the rules in force allow, by market order.

    Up to `dims.liq_per_round` accounts per tick; the rest stay queued for the next tick.
    """
    pending = state.enforce == POLICY_FORCE_REDUCE
    idx, valid = _first_k(pending, min(params.dims.liq_per_round, params.dims.n_accounts))
    n_valid = valid.sum()  # the valid slots are a prefix of idx

    def reduce_one(carry):
        i, state, acc = carry
        a = idx[i]
        mark = state.px.mark
        n_now = jnp.abs(state.acct.pos[a]) * mark
        # Orders go first so the margin they tie up is free, then the excess is sold.
        state = _cancel_all(state, params, a, True)
        allowed = _max_allowed_notional(_margin_balances(state), state.rules)[a]
        qty = jnp.maximum(n_now - allowed, 0.0) / mark
        side = -jnp.sign(state.acct.pos[a])
        state, acc, _, notional = _take(
            state, params, acc, a, PERP, side, qty, jnp.where(side > 0, jnp.inf, 0.0)
        )
        # Stays queued while the book could not absorb the whole cut.
        done = ~_breaching(state, params)[a]
        enforce = state.enforce.at[a].set(jnp.where(done, 0, state.enforce[a]))
        return i + 1, state.replace(enforce=enforce), acc.replace(forced=acc.forced + notional)

    # A while loop over the queued accounts only: under vmap it costs the busiest env's
    # count (nothing at all on the ticks where no enforcement is pending), where a scan
    # of conds would become selects over every slot.
    _, state, acc = tied_while_loop(
        lambda c: c[0] < n_valid, reduce_one, (jnp.zeros((), jnp.int32), state, acc), n_valid
    )
    return state, acc


def _max_allowed_notional(mb: Array, rules) -> Array:
    """Largest notional N with N <= position limit and N / max_lev(N) <= MB, per account."""
    floor = rules.tier_floor
    upper = jnp.concatenate([floor[1:], jnp.full((1,), jnp.inf, floor.dtype)])
    cap = jnp.maximum(mb, 0.0)[:, None] * rules.tier_max_lev[None, :]  # (A, T)
    in_tier = jnp.minimum(cap, upper[None, :] * (1 - 1e-7))
    ok = cap >= floor[None, :]
    best = jnp.max(jnp.where(ok, in_tier, 0.0), axis=-1)
    return jnp.minimum(best, rules.position_limit)


# ============================================================== liquidation engine


def _needs_liquidation(state: SimState, params: Params) -> Array:
    """(A,) margin balance below maintenance at mark, for accounts with any exposure."""
    acct = state.acct
    mb = _margin_balances(state)
    mm = mg.maint_margin(jnp.abs(acct.pos) * state.px.mark, state.rules)
    exposure = (acct.pos != 0) | (sum_last(acct.debt) > 0) | (acct.bal[:, USDT] < 0)
    return (mb < mm) & exposure & ~_system_mask(params)


def _liquidate_account(state: SimState, params: Params, acc: _Acc, a, forced, active):
    dims = params.dims
    n = dims.n_accounts
    dtype = state.acct.bal.dtype
    rules = state.rules
    mark = state.px.mark
    # Re-checked at the account's turn: earlier liquidations this round moved prices.
    liq = active & (_needs_liquidation(state, params)[a] | (forced & (state.acct.pos[a] != 0)))
    state = _cancel_all(state, params, a, liq)
    acct = state.acct
    pos = acct.pos[a]
    s = jnp.sign(pos)
    equity = _equity(state)
    p_bk = mg.bankruptcy_price(pos, mark, equity[a])
    # Partial liquidation by tiers: cut back to the top of the next lower tier.
    notional = jnp.abs(pos) * mark
    k = mg.tier_index(notional, rules.tier_floor)
    partial = (rules.partial_liquidation > 0) & (k > 0) & ~forced
    target_n = rules.tier_floor[k] * (1 - 1e-6)
    cut = jnp.where(partial, jnp.abs(pos) - target_n / mark, jnp.abs(pos))
    cut = jnp.where(liq, jnp.clip(cut, 0.0, jnp.abs(pos)), 0.0)
    # IOC at the bankruptcy price into the perp book, no trading fee (the clearance fee
    # below replaces it).
    lim = jnp.where(s > 0, jnp.maximum(p_bk, 0.0), jnp.where(p_bk > 0, p_bk, jnp.inf))
    state, acc, f_fill, n_fill = _take(state, params, acc, a, PERP, -s, cut, lim, fee_rate=0.0)
    rem = jnp.maximum(cut - f_fill, 0.0)

    # Insurance-fund takeover at the bankruptcy price, within its position cap; ADL for
    # the rest when enabled.
    ins = dims.insurance
    acct = state.acct
    fund = acct.bal[ins, USDT]
    cap_q = rules.if_position_cap * jnp.maximum(fund, 0.0) / jnp.maximum(mark, TINY)
    room = jnp.maximum(cap_q - s * acct.pos[ins], 0.0)
    x_if = jnp.where(rules.adl_on > 0, jnp.minimum(rem, room), rem)
    x_adl = rem - x_if
    dq = jnp.zeros((n,), dtype).at[a].add(-s * x_if).at[ins].add(s * x_if)
    acct = _settle_perp(acct, dq, jnp.full((n,), p_bk, dtype))
    # ADL: opposite positions ranked by PnL% x effective leverage, closed at p_bk.
    state = state.replace(acct=acct)
    eq_all = _margin_balances(state)
    score = mg.adl_score(acct.pos, acct.entry, mark, eq_all)
    # Users and the LP can be deleveraged; the outside world, fund and fee account cannot.
    eligible = (jnp.sign(acct.pos) == -s) & (jnp.arange(n) != a) & (jnp.arange(n) <= dims.lp)
    score = jnp.where(eligible, score, -jnp.inf)
    order = jnp.argsort(-score)
    size_sorted = jnp.where(eligible, jnp.abs(acct.pos), 0.0)[order]
    before = jnp.cumsum(size_sorted) - size_sorted
    take_sorted = jnp.clip(x_adl - before, 0.0, size_sorted)
    take = jnp.zeros((n,), dtype).at[order].set(take_sorted)
    adl_total = take.sum()
    dq = s * take
    dq = dq.at[a].add(-s * adl_total)
    acct = _settle_perp(acct, dq, jnp.full((n,), p_bk, dtype))
    # Whatever ADL could not place stays with the fund.
    left = x_adl - adl_total
    dq = jnp.zeros((n,), dtype).at[a].add(-s * left).at[ins].add(s * left)
    acct = _settle_perp(acct, dq, jnp.full((n,), p_bk, dtype))
    state = state.replace(acct=acct)

    # Clearance fee to the fund, never more than the equity left.
    liq_notional = n_fill + (x_if + x_adl) * p_bk
    eq_after = _equity(state)[a]
    fee = jnp.where(liq, jnp.minimum(rules.liq_fee * liq_notional, jnp.maximum(eq_after, 0.0)), 0.0)
    iso = acct.mode[a] == ISOLATED
    acct = acct.replace(
        bal=acct.bal.at[a, USDT].add(jnp.where(iso, 0.0, -fee)).at[ins, USDT].add(fee),
        iso_margin=acct.iso_margin.at[a].add(jnp.where(iso, -fee, 0.0)),
    )
    # A closed isolated position returns its margin; a negative one is paid by the fund.
    closed_iso = iso & (acct.pos[a] == 0) & liq
    im = acct.iso_margin[a]
    acct = acct.replace(
        bal=acct.bal.at[a, USDT]
        .add(jnp.where(closed_iso, jnp.maximum(im, 0.0), 0.0))
        .at[ins, USDT]
        .add(jnp.where(closed_iso, jnp.minimum(im, 0.0), 0.0)),
        iso_margin=acct.iso_margin.at[a].set(jnp.where(closed_iso, 0.0, im)),
    )
    state = state.replace(acct=acct)

    # Cross: repay debts from same-asset balances; then sell collateral into its own spot
    # book to cover the USDT deficit plus the debts still unpaid (valued at index); then
    # settle those debts with the lender (non-USDT ones in USDT at index).
    cross_liq = liq & ~iso
    acct = state.acct
    rep = jnp.where(cross_liq, jnp.minimum(jnp.maximum(acct.bal[a], 0.0), acct.debt[a]), 0.0)
    acct = acct.replace(
        bal=acct.bal.at[a].add(-rep).at[dims.outside].add(rep), debt=acct.debt.at[a].add(-rep)
    )
    state = state.replace(acct=acct)
    px_a = asset_prices(state.px)
    unpaid = jnp.where(cross_liq, acct.debt[a], 0.0)
    unpaid_usdt = jnp.sum(unpaid * px_a)

    # One book walk in a loop over the collateral assets rather than one per asset: the
    # compiled program holds a single copy of it.
    def sell(j, c):
        state, acc = c
        asset = SALE_ASSET_ARR[j]
        m = SALE_MARKET_ARR[j]
        deficit = jnp.where(cross_liq, jnp.maximum(unpaid_usdt - state.acct.bal[a, USDT], 0.0), 0.0)
        px = _level_px(state, params, m)
        tot = sum_last(state.book.qty[m, BID])
        need = bk.walk_for_quote(tot, px, deficit * (1 + rules.taker_fee), 0.0).sum()
        qty = jnp.minimum(need, jnp.maximum(state.acct.bal[a, asset], 0.0))
        state, acc, sold, proceeds = _take(state, params, acc, a, m, -1, qty, 0.0)
        acc = acc.replace(
            coll_sold=acc.coll_sold.at[asset].add(sold),
            coll_sold_usdt=acc.coll_sold_usdt + proceeds,
        )
        return state, acc

    state, acc = jax.lax.fori_loop(0, len(COLLATERAL_SALE_ORDER), sell, (state, acc))
    acct = state.acct
    acct = acct.replace(
        bal=acct.bal.at[a, USDT].add(-unpaid_usdt).at[dims.outside, USDT].add(unpaid_usdt),
        debt=acct.debt.at[a].add(-unpaid),
    )
    # Position closed and USDT still negative (the books could not absorb the collateral):
    # the fund resets the negative wallet and takes collateral worth the deficit at index
    # in exchange (MECHANICS 4.1 step 4: leftover collateral goes to the fund).
    bust = cross_liq & (acct.pos[a] == 0) & (acct.bal[a, USDT] < 0)
    hole = jnp.where(bust, -acct.bal[a, USDT], 0.0)
    bal = acct.bal
    owed = hole
    for asset in COLLATERAL_SALE_ORDER:
        units = jnp.minimum(jnp.maximum(bal[a, asset], 0.0), owed / jnp.maximum(px_a[asset], TINY))
        units = jnp.where(bust, units, 0.0)
        bal = bal.at[a, asset].add(-units).at[ins, asset].add(units)
        owed = jnp.maximum(owed - units * px_a[asset], 0.0)
    fund0 = acct.bal[ins, USDT]
    acct = acct.replace(bal=bal.at[a, USDT].add(hole).at[ins, USDT].add(-hole))
    fund1 = acct.bal[ins, USDT]
    bad = jnp.maximum(-fund1, 0.0) - jnp.maximum(-fund0, 0.0)
    state = state.replace(acct=acct)

    liq_n = jnp.where(liq, n_fill + (x_if + x_adl) * p_bk, 0.0)
    acc = acc.replace(
        liq_long=acc.liq_long + jnp.where(s > 0, liq_n, 0.0),
        liq_short=acc.liq_short + jnp.where(s < 0, liq_n, 0.0),
        liq_mask=acc.liq_mask.at[a].set(acc.liq_mask[a] | liq),
        takeover=acc.takeover + x_if * p_bk + left * p_bk,
        adl_count=acc.adl_count + jnp.sum(take > 0).astype(jnp.int32),
        adl_notional=acc.adl_notional + adl_total * p_bk,
        bad_debt=acc.bad_debt + jnp.maximum(bad, 0.0),
    )
    return state, acc


def _liquidation_engine(state: SimState, params: Params, acc: _Acc):
    """`cascade_rounds` rounds, re-priced between them. Each takes the accounts under
    maintenance at its start (and those a rule change queued for liquidation), in account
    order, up to `liq_per_round` of them; the rest wait for the next round or tick."""
    k = min(params.dims.liq_per_round, params.dims.n_accounts)
    n_rounds = params.dims.cascade_rounds

    def one_round(carry):
        r, _, state, acc = carry
        state = _reprice(state, params)
        forced = state.enforce == POLICY_LIQUIDATE
        idx, valid = _first_k(_needs_liquidation(state, params) | forced, k)
        # After the last round only the re-price runs.
        n_valid = jnp.where(r < n_rounds, valid.sum(), 0)  # the valid slots are a prefix

        def slot(c):
            i, st, ac = c
            a = idx[i]
            st, ac = _liquidate_account(st, params, ac, a, forced[a], jnp.bool_(True))
            enforce = st.enforce.at[a].set(jnp.where(forced[a], 0, st.enforce[a]))
            return i + 1, st.replace(enforce=enforce), ac

        # Only the flagged slots run: under vmap a while loop costs the busiest env's
        # count, where a scan of conds would become selects over every slot.
        _, state, acc = tied_while_loop(
            lambda c: c[0] < n_valid, slot, (jnp.zeros((), jnp.int32), state, acc), n_valid
        )
        return r + 1, n_valid > 0, state, acc

    # Each round re-prices first; the loop stops after a round that found nobody (its
    # re-price is the final one: re-pricing is idempotent, so further rounds would change
    # nothing) or after the re-price that follows the last round. One re-price site in
    # the compiled program rather than two.
    # The flag (the predicate) is batched as soon as the mark (which decides who is under
    # maintenance) is.
    _, _, state, acc = tied_while_loop(
        lambda c: c[1],
        one_round,
        (jnp.zeros((), jnp.int32), jnp.bool_(True), state, acc),
        state.px.mark,
    )
    # The fund unwinds part of its taken-over position into the book, and sells the
    # collateral it took from bankrupt accounts into its own spot books at the same rate
    # (the liquidation engine keeps selling until the inventory is gone). Most ticks it
    # holds neither: `_once` skips the four book walks then.
    ins = params.dims.insurance
    held = jnp.stack([jnp.maximum(state.acct.bal[ins, a], 0.0) for a in COLLATERAL_SALE_ORDER])
    busy = (state.acct.pos[ins] != 0) | jnp.any(held > 0)
    return _once(busy, lambda c: _fund_unwind(*c, params), (state, acc))


def _once(pred, fn, carry):
    """`fn(carry)` if `pred` else `carry`, as a while loop of at most one iteration.

    Under vmap a `lax.cond` with a batched predicate computes both branches and selects;
    a while loop runs only while some env of the batch still needs it, so a batch in
    which no env needs `fn` skips it.
    """

    def body(c):
        return jnp.bool_(False), fn(c[1])

    pred = jnp.asarray(pred)
    return tied_while_loop(lambda c: c[0], body, (pred, carry), pred)[1]


def _fund_unwind(state: SimState, acc: _Acc, params: Params):
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
        asset = SALE_ASSET_ARR[jnp.maximum(j - 1, 0)]
        m = jnp.where(first, PERP, SALE_MARKET_ARR[jnp.maximum(j - 1, 0)])
        s_j = jnp.where(first, side, -1.0)
        qty = jnp.where(first, jnp.abs(pos), jnp.maximum(state.acct.bal[ins, asset], 0.0)) * frac
        lim_j = jnp.where(first, lim, 0.0)
        state, acc, sold, proceeds = _take(state, params, acc, ins, m, s_j, qty, lim_j)
        acc = acc.replace(
            coll_sold=acc.coll_sold.at[asset].add(jnp.where(first, 0.0, sold)),
            coll_sold_usdt=acc.coll_sold_usdt + jnp.where(first, 0.0, proceeds),
        )
        return state, acc

    return jax.lax.fori_loop(0, 1 + len(COLLATERAL_SALE_ORDER), sell, (state, acc))


# ============================================================== step


def no_orders(params: Params) -> Orders:
    """An empty order batch of the shape `step` expects."""
    k = params.dims.max_orders
    zi = jnp.zeros((k,), jnp.int32)
    zf = jnp.zeros((k,), params.dt.dtype)
    return Orders(account=zi, market=zi, side=zi, kind=zi, qty=zf, price=zf)


def step(key: Array, state: SimState, orders: Orders, params: Params):
    """Advance one tick. Returns (state, TickEvents)."""
    k_exo, k_pop = jax.random.split(key)
    dtype = state.acct.bal.dtype
    # Batched with the key under vmap (one tick's flows make them so anyway): the phases'
    # loops, which carry them, then batch their bodies once (see `ops.tie`).
    # `rules_changed` follows the rule schedule (the tick), shared by a batch: left untied.
    acc = tie(_acc_zero(dtype, params.dims.n_accounts), key)
    acc = acc.replace(rules_changed=jnp.zeros((), jnp.int32))
    fund0 = state.acct.bal[params.dims.insurance, USDT]

    state = _exogenous(k_exo, state, params)
    state = _reprice(state, params)
    state, acc = _apply_schedule(state, params, acc)
    state = _liquidity(state, params)
    # Background traders decide on the same snapshot, then their orders go first and the
    # learning agents' after them.
    equity = _equity(state)
    state = popm.external_moves(state, params, equity)
    bg, arb = popm.background_orders(k_pop, state, params, equity)
    n_bg = bg.kind.shape[0]
    all_orders = jax.tree_util.tree_map(lambda x, y: jnp.concatenate([x, y]), bg, orders)
    state, acc, (reason, filled, avg, unfilled) = _process_orders(state, params, all_orders, acc)
    bg_filled = filled[:n_bg]
    is_trade = (bg.kind == KIND_MARKET) | (bg.kind == KIND_LIMIT)
    bg_vol = (
        jnp.zeros((N_MARKETS,), dtype)
        .at[jnp.clip(bg.market, 0, N_MARKETS - 1)]
        .add(jnp.where(is_trade, bg_filled, 0.0))
    )
    bg_stats = (
        bg_vol,
        jnp.sum((reason[:n_bg] != OK) & (bg.kind != KIND_NONE)).astype(jnp.int32),
        jnp.sum(jnp.where(arb & is_trade, bg_filled, 0.0)),
        # Scripted programs are the last rows of the background orders.
        jnp.where(is_trade, bg_filled, 0.0)[n_bg - params.dims.n_programs :],
    )
    # Arbitrage trades offset on other venues (or on the other BASE book): not the market's.
    on_base = (bg.market == SPOT) | (bg.market == PERP)
    arb_flow = jnp.sum(jnp.where(arb & is_trade & on_base, bg.side * bg_filled * avg[:n_bg], 0.0))
    reason, filled, avg, unfilled = (x[n_bg:] for x in (reason, filled, avg, unfilled))
    state = state.replace(pop=state.pop.replace(prog_done=state.pop.prog_done + bg_stats[3]))
    state = _arrivals(state)
    state, settled, paid = _prices_and_funding(state, params)
    state, acc = _liquidation_engine(state, params, acc)
    state = state.replace(t=state.t + 1, px=state.px.replace(flow=acc.flow - arb_flow))
    state = popm.update_memory(
        state,
        params,
        acc.liq_long + acc.liq_short,
        popm.lp_equity(state, params, asset_prices(state.px)),
    )
    events = _events(
        state, params, acc, fund0, settled, paid, reason, filled, avg, unfilled, bg_stats
    )
    return state, events


def _events(state, params, acc, fund0, settled, paid, reason, filled, avg, unfilled, bg_stats):
    dims = params.dims
    p = state.px
    pos = state.acct.pos
    best_b, best_a, depth, edge = [], [], [], []
    for m in range(N_MARKETS):
        px = _level_px(state, params, m)
        b, a = bk.best_prices(state.book.qty[m], px)
        mid = jnp.where((b > 0) & jnp.isfinite(a), 0.5 * (b + a), p.last[m])
        best_b.append(b)
        best_a.append(jnp.where(jnp.isfinite(a), a, 0.0))
        depth.append(bk.depth_within(state.book.qty[m], px, mid, DEPTH_BAND))
        # This tick traded and its last trade is on the grid's outermost level: the order
        # could not go further (a stale last price off a grid that has moved is not one).
        lvl = jnp.round(p.last[m] / params.markets.tick_size[m]) - state.book.origin[m]
        on_edge = (lvl == 0) | (lvl == dims.n_levels - 1)
        edge.append(on_edge & (acc.volume[m] > 0))
    spot_mid = 0.5 * (best_b[SPOT] + best_a[SPOT])
    perp_mid = 0.5 * (best_b[PERP] + best_a[PERP])
    ok = (best_b[SPOT] > 0) & (best_a[SPOT] > 0) & (best_b[PERP] > 0) & (best_a[PERP] > 0)
    basis = jnp.where(
        ok,
        (perp_mid - spot_mid) / jnp.maximum(spot_mid, TINY),
        (p.last[PERP] - p.last[SPOT]) / jnp.maximum(p.last[SPOT], TINY),
    )
    fund1 = state.acct.bal[dims.insurance, USDT]
    sch = params.schedule
    t = state.t
    pending = sch.active & (sch.announce_tick <= t) & (sch.effective_tick >= t)
    next_change = jnp.min(jnp.where(pending, sch.effective_tick - t, jnp.iinfo(jnp.int32).max))
    next_change_s = jnp.where(pending.any(), next_change * params.dt, -1.0)
    rejects = jnp.zeros((N_REASONS,), jnp.int32).at[reason].add(1).at[OK].set(0)
    return TickEvents(
        t=t,
        time_s=t * params.dt,
        ext_px=p.ext.mean(-1),
        spot_px=p.last[SPOT],
        perp_px=p.last[PERP],
        index_px=p.index,
        mark_px=p.mark,
        basis=basis,
        mark_index_gap=(p.mark - p.index[0]) / p.index[0],
        funding_rate=p.funding_rate,
        funding_paid=paid,
        funding_settled=settled,
        oi_long=jnp.sum(jnp.maximum(pos, 0.0)),
        oi_short=jnp.sum(jnp.maximum(-pos, 0.0)),
        depth_1pct=jnp.stack(depth),
        best_bid=jnp.stack(best_b),
        best_ask=jnp.stack(best_a),
        volume=acc.volume,
        liq_notional_long=acc.liq_long,
        liq_notional_short=acc.liq_short,
        liq_accounts=acc.liq_mask.sum().astype(jnp.int32),
        liq_mask=acc.liq_mask,
        equity=marked_equity(state, params),
        collateral_sold=acc.coll_sold,
        collateral_sold_usdt=acc.coll_sold_usdt,
        insurance_fund=fund1,
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
        bg_volume=bg_stats[0],
        bg_rejects=bg_stats[1],
        arb_volume=bg_stats[2],
        prog_filled=bg_stats[3],
        grid_edge=jnp.stack(edge),
        venue_impact=state.px.impact,
        order_reason=reason,
        order_filled=filled,
        order_avg_px=avg,
        order_unfilled=unfilled,
        rules_changed=acc.rules_changed,
        next_change_s=next_change_s,
    )


# ============================================================== reset / rollout / audit


def reset(key: Array, params: Params) -> SimState:
    """Initial state: accounts from params, books filled to the LP's target profile.

    Called outside a trace, it runs as one jitted program, compiled once per `Params`
    structure (the LP fill is a loop over markets, which run eagerly would be compiled
    again at every call); inside a trace it is traced inline.
    """
    if any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves((key, params))):
        return _reset(key, params)
    return _reset_jit(key, params)


def _reset(key: Array, params: Params) -> SimState:
    dims = params.dims
    dtype = params.dt.dtype
    n, g, w = dims.n_accounts, dims.n_levels, dims.basis_window
    ai = params.accounts
    x = dims.transfer_slots
    acct = AccountState(
        bal=ai.bal,
        debt=ai.debt,
        ext_bal=ai.ext_bal,
        pos=ai.pos,
        entry=ai.entry,
        iso_margin=ai.iso_margin,
        mode=ai.mode,
        lev=ai.lev,
        transit_amt=jnp.zeros((n, x), dtype),
        transit_asset=jnp.zeros((n, x), jnp.int32),
        transit_due=jnp.zeros((n, x), jnp.int32),
        transit_in=jnp.zeros((n, x), bool),
    )
    p0 = params.exo.price0
    ext = jnp.broadcast_to(p0[:, None], (3, dims.n_venues)).astype(dtype)
    last = jnp.stack([p0[0], p0[0], p0[1], p0[2]]).astype(dtype)
    origin = (jnp.round(last / params.markets.tick_size) - g // 2).astype(jnp.int32)
    q = dims.n_makers
    book = Book(
        qty=jnp.zeros((N_MARKETS, 2, g, q), dtype),
        ahead=jnp.zeros((N_MARKETS, 2, g, q), dtype),
        origin=origin,
        owner=jnp.full((q,), -1, jnp.int32).at[LP_SLOT].set(dims.lp),
    )
    z = jnp.zeros((), dtype)
    px = PriceState(
        ext=ext,
        ext_common=p0.astype(dtype),
        last=last,
        index=p0.astype(dtype),
        mark=p0[0],
        basis_buf=jnp.zeros((w,), dtype),
        basis_count=jnp.zeros((), jnp.int32),
        prem_wsum=z,
        prem_w=z,
        prem_n=jnp.zeros((), jnp.int32),
        funding_rate=params.rules.funding_interest
        * params.rules.funding_interval_s
        / pr.SECONDS_PER_8H,
        last_funding_rate=z,
        next_funding_s=params.rules.funding_interval_s,
        vol=params.exo.vol_ref.astype(dtype),
        flow=z,
        impact=z,
    )
    zp = jnp.zeros((), dtype)
    pop0 = PopState(
        ema_fast=zp,
        ema_slow=zp,
        peak_spot=zp,
        liq_ewma=zp,
        eq0=jnp.zeros((n,), dtype),
        sv=jnp.zeros((3,), dtype),
        int_last=last,
        int_vol=jnp.zeros((N_MARKETS,), dtype),
        lp_peak=zp,
        lp_eq=zp,
        prog_done=jnp.zeros((params.dims.n_programs,), dtype),
    )
    state = SimState(
        t=jnp.zeros((), jnp.int32),
        book=book,
        acct=acct,
        px=px,
        rules=params.rules,
        enforce=jnp.zeros((n,), jnp.int32),
        pop=pop0,
    )
    state = _reprice(state, params)
    # Fill the books to the target profile at once (resilience 1 for the first fill).
    full = params.replace(
        markets=params.markets.replace(lp_resilience_per_s=jnp.full((N_MARKETS,), 1e9, dtype))
    )
    state = _liquidity(state, full)
    lp_eq = popm.lp_equity(state, params, asset_prices(state.px))
    return state.replace(pop=popm.init_pop_state(state, params, _equity(state), lp_eq))


_reset_jit = jax.jit(_reset)


# SimState leaves that one tick leaves equal across a batch of envs with shared params (the
# tick, the rules, the funding clock and the equity reference): `tie_to_key` leaves them be,
# except the premium averaging weights, which a per-env funding schedule (batched rules)
# makes per-env: those are tied to the rules.
_SHARED_LEAVES = frozenset({".t", ".px.basis_count", ".px.next_funding_s", ".pop.eq0"})
_RULE_LEAVES = frozenset({".px.prem_w", ".px.prem_n"})


def tie_to_key(state: SimState, key: Array) -> SimState:
    """`state` with its per-env leaves passed through a select on `key` (values unchanged,
    bit for bit; XLA drops a select of equal branches).

    `reset` does not draw from its key, so under `vmap` every leaf of its state starts
    unbatched, and a `lax.scan` over ticks finds which carry leaves are batched by
    batching the whole tick again until they stop changing: the tick's nested loops are
    batched once per pass, most of a rollout's trace time. Tied to the (batched) key, the
    leaves one tick makes batched are batched from the start, so the scan's first pass is
    its last; the compiled program is the same. Outside `vmap` this is the identity.
    """

    def one(path, x):
        name = jax.tree_util.keystr(path)
        if name in _SHARED_LEAVES or path[0].name == "rules":
            return x
        if name in _RULE_LEAVES:
            return tie(x, state.rules.funding_interval_s)
        return tie(x, key)

    return jax.tree_util.tree_map_with_path(one, state)


def rollout(key: Array, params: Params, n_ticks: int, policy=None, state: SimState | None = None):
    """Run `n_ticks` ticks with `lax.scan`. Returns (final state, stacked TickEvents).

    policy(key, state, params) -> Orders is called every tick; None submits no orders.
    """
    k_reset, k_run = jax.random.split(key)
    if state is None:
        state = reset(k_reset, params)
    state = tie_to_key(state, k_run)

    def body(state, k):
        k_pol, k_step = jax.random.split(k)
        orders = no_orders(params) if policy is None else policy(k_pol, state, params)
        return step(k_step, state, orders, params)

    keys = jax.random.split(k_run, n_ticks)
    return jax.lax.scan(body, state, keys)


def audit(state: SimState, params: Params) -> dict[str, Array]:
    """Ledger totals. Each asset total is conserved by every operation of the engine.

    `usdt` counts free, isolated, external, in-transit and book-reserved USDT plus
    -sum(pos * entry): realized perp PnL is only zero-sum together with the open
    positions' entry values (sum(pos) = 0, so this term is the aggregate uPnL at any mark).
    """
    acct = state.acct
    dims = params.dims
    spot_ms = [m for m in range(N_MARKETS) if m != PERP]
    bid_usdt = sum(
        jnp.sum(state.book.qty[m, BID].sum(-1) * _level_px(state, params, m)) for m in spot_ms
    )
    transit = (
        jnp.zeros((N_ASSETS,), acct.bal.dtype)
        .at[acct.transit_asset.ravel()]
        .add(acct.transit_amt.ravel())
    )
    asset_tot = acct.bal.sum(0) + acct.ext_bal.sum(0) + transit
    ask_res = {MARKET_ASSET[m]: state.book.qty[m, ASK].sum() for m in spot_ms}
    out = {
        "usdt": asset_tot[USDT] + acct.iso_margin.sum() + bid_usdt - jnp.sum(acct.pos * acct.entry),
        "base": asset_tot[BASE] + ask_res[BASE],
        "stable": asset_tot[STABLE] + ask_res[STABLE],
        "lst": asset_tot[LST] + ask_res[LST],
        "insurance_fund": acct.bal[dims.insurance, USDT],
        "fees": acct.bal[dims.fees, USDT],
        "oi_long": jnp.sum(jnp.maximum(acct.pos, 0.0)),
        "oi_short": jnp.sum(jnp.maximum(-acct.pos, 0.0)),
        "debt": acct.debt.sum(0),
    }
    return out
