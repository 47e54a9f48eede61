"""Taking liquidity and cancelling: the book walk, maker credit by FIFO queue position,
spot and perp settlement, fees."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxsim import book as bk
from jaxsim import margin as mg
from jaxsim.mechanisms import accounts, tick_acc
from jaxsim.ops import sum_last
from jaxsim.types import (
    ASK,
    BID,
    ISOLATED,
    N_ASSETS,
    N_MARKETS,
    PERP,
    SPOT,
    USDT,
    AccountState,
    Dims,
    Params,
    SimState,
)

Array = jax.Array


def settle_perp(acct: AccountState, dq: Array, px: Array) -> AccountState:
    """Apply perp fills dq (A,) at prices px (A,) to positions, entries and margins.

    Isolated accounts move margin as `margin.isolated_fill` says; the deficit of an
    isolated position closed below its bankruptcy price is the insurance fund's."""
    pos0 = acct.pos
    new_pos, new_entry, realized = mg.apply_perp_fill(pos0, acct.entry, dq, px)
    iso = acct.mode == ISOLATED
    iso_usdt, iso_new, fund_pay = mg.isolated_fill(
        pos0, acct.entry, acct.iso_margin, acct.lev, dq, px
    )
    usdt_delta = jnp.where(iso, iso_usdt, realized)
    touched = dq != 0
    fund = Dims(n_accounts=pos0.shape[-1]).insurance
    fund_total = jnp.sum(jnp.where(iso & touched, fund_pay, 0.0))
    bal = acct.bal.at[:, USDT].add(jnp.where(touched, usdt_delta, 0.0))
    return acct.replace(
        pos=jnp.where(touched, new_pos, pos0),
        entry=jnp.where(touched, new_entry, acct.entry),
        iso_margin=jnp.where(iso & touched, iso_new, acct.iso_margin),
        bal=bal.at[fund, USDT].add(fund_total),
    )


def market_book(state: SimState, m) -> tuple[Array, Array]:
    """(qty, ahead) of market m's book, each (2, G, Q)."""
    return state.book.qty[m], state.book.ahead[m]


def set_market_book(state: SimState, m, q_m: Array, ah_m: Array) -> SimState:
    """The state with market m's book slice (qty, ahead) replaced.

    A traced m writes through a one-hot select over the markets rather than a scatter:
    under vmap (m per env) a scatter cannot update the book in place where the loop
    around it still selects between the old and the new book (a batched while loop, the
    order kinds' switch), so it costs a copy of the whole book, the scatter and the
    select; the select fuses with those into one pass. A static m is an in-place update."""
    book = state.book
    if isinstance(m, int):
        return state.replace(
            book=book.replace(qty=book.qty.at[m].set(q_m), ahead=book.ahead.at[m].set(ah_m))
        )
    sel = (jnp.arange(book.qty.shape[0]) == m).reshape((-1,) + (1,) * q_m.ndim)
    return state.replace(
        book=book.replace(
            qty=jnp.where(sel, q_m[None], book.qty), ahead=jnp.where(sel, ah_m[None], book.ahead)
        )
    )


def set_side(x: Array, s, v: Array) -> Array:
    """x (2, ...) with side s replaced by v."""
    return jnp.where((jnp.arange(2) == s).reshape((2,) + (1,) * v.ndim), v[None], x)


def take(
    state: SimState, params: Params, acc: tick_acc.TickAcc, a, m, side, qty, limit, fee_rate=None
):
    """Account `a` takes `qty` on market `m` (side +1 buy / -1 sell) up to `limit`.

    Walks the book, credits makers by FIFO queue position, settles balances or perp
    positions and fees (each account's rate, `accounts.fee_rates`; `fee_rate` given:
    the taker's rate instead). No checks: callers decide whether the order is allowed.
    Returns (state, acc, filled qty, filled notional).
    """
    q_m, ah_m = market_book(state, m)
    state, acc, q_m, ah_m, filled, notional = take_on(
        state, params, acc, q_m, ah_m, a, m, side, qty, limit, fee_rate
    )
    return set_market_book(state, m, q_m, ah_m), acc, filled, notional


def take_on(state, params, acc, q_m, ah_m, a, m, side, qty, limit, fee_rate=None):
    """`take` on market m's book given as the slice (q_m, ah_m) (2, G, Q): the state's
    accounts, last price and `acc` are settled, its book is left alone and the new slice
    returned. Returns (state, acc, q_m, ah_m, filled qty, filled notional)."""
    n = params.dims.n_accounts
    px = accounts.level_prices(state, params, m)
    hit = jnp.where(side > 0, ASK, BID)
    fill_lvl = bk.walk(sum_last(q_m[hit]), px, side, qty, limit)
    q_side, ah_side, f = bk.consume(q_m[hit], ah_m[hit], fill_lvl)
    fill_lvl = sum_last(f)  # what makers actually gave (equal to the walk up to rounding)
    q_m, ah_m = set_side(q_m, hit, q_side), set_side(ah_m, hit, ah_side)
    filled = fill_lvl.sum()
    notional = jnp.sum(fill_lvl * px)
    maker_q = accounts.per_account(state.book, f.sum(0), n)
    maker_n = accounts.per_account(state.book, jnp.einsum("gq,g->q", f, px), n)
    # Each account's own rates where it has them, else the rules in force; an explicit
    # `fee_rate` replaces the taker's (0 on a liquidation IOC).
    maker_rate, taker_rate = accounts.fee_rates(state, params)
    t_fee_rate = taker_rate[a] if fee_rate is None else fee_rate
    fee_t = notional * t_fee_rate
    fee_m = maker_n * maker_rate
    taker = accounts.onehot(a, n, state.acct.bal.dtype)
    acct = _settle_fill(state.acct, params, taker, m, side, filled, notional, maker_q, maker_n)
    acct = acct.replace(bal=_pay_fees(acct.bal, params, taker, fee_t, fee_m))
    acct_p = _settle_perp_fill(acct, taker, side, filled, notional, maker_q, maker_n)
    is_perp = m == PERP
    acct = jax.tree_util.tree_map(lambda x, y: jnp.where(is_perp, y, x), acct, acct_p)

    last_fill_px = jnp.where(
        side > 0,
        jnp.max(jnp.where(fill_lvl > 0, px, -jnp.inf)),
        jnp.min(jnp.where(fill_lvl > 0, px, jnp.inf)),
    )
    traded = filled > 0
    last = state.px.last.at[m].set(jnp.where(traded, last_fill_px, state.px.last[m]))
    last_t = state.px.last_trade_t.at[m].set(jnp.where(traded, state.t, state.px.last_trade_t[m]))
    acc = acc.replace(
        volume=acc.volume.at[m].add(filled),
        fees=acc.fees + fee_t + fee_m.sum(),
        fees_acct=acc.fees_acct + fee_m + taker * fee_t,
        flow=acc.flow + jnp.where((m == SPOT) | is_perp, side * notional, 0.0),
    )
    state = state.replace(acct=acct, px=state.px.replace(last=last, last_trade_t=last_t))
    return state, acc, q_m, ah_m, filled, notional


def _settle_fill(acct, params, taker, m, side, filled, notional, maker_q, maker_n):
    """Spot balances after a fill on market m (perp balances unchanged here): a taker buy
    receives the asset and pays USDT, makers (asks) receive USDT (their asset was
    reserved in the book); a taker sell is the mirror image. `taker` (A,) one-hot,
    `maker_q` / `maker_n` (A,) each maker's quantity and notional."""
    dtype = acct.bal.dtype
    bal = acct.bal
    asset = accounts.MARKET_ASSET_ARR[m]
    asset_oh = (jnp.arange(N_ASSETS) == asset).astype(dtype)
    usdt_oh = (jnp.arange(N_ASSETS) == USDT).astype(dtype)
    buy = side > 0
    spot_taker = jnp.where(
        buy, filled * asset_oh - notional * usdt_oh, -filled * asset_oh + notional * usdt_oh
    )
    spot_maker = jnp.where(
        buy, maker_n[:, None] * usdt_oh[None, :], maker_q[:, None] * asset_oh[None, :]
    )
    spot_bal = bal + taker[:, None] * spot_taker[None, :] + spot_maker
    return acct.replace(bal=jnp.where(m == PERP, bal, spot_bal))


def _pay_fees(bal, params, taker, fee_t, fee_m):
    """Balances (A, 4) after the taker's fee `fee_t` () and the makers' fees `fee_m` (A,)
    (negative: a rebate) move to the fee account in USDT."""
    bal = bal.at[:, USDT].add(-fee_m - taker * fee_t)
    return bal.at[params.dims.fees, USDT].add(fee_t + fee_m.sum())


def _settle_perp_fill(acct, taker, side, filled, notional, maker_q, maker_n):
    """Perp positions after a fill: makers first (each at its own average price), then
    the taker at the fill's average price."""
    n = taker.shape[0]
    maker_px = maker_n / jnp.maximum(maker_q, 1e-30)
    acct_p = settle_perp(acct, -side * maker_q, maker_px)
    avg = notional / jnp.maximum(filled, 1e-30)
    return settle_perp(acct_p, side * filled * taker, jnp.full((n,), avg, acct.bal.dtype))


def cancel(state: SimState, params: Params, a, m, sides_mask: Array, frac=1.0):
    """Cancel `frac` of account a's orders on market m for the sides in sides_mask (2,)."""
    q_m, ah_m = market_book(state, m)
    state, q_m, ah_m = cancel_on(state, params, q_m, ah_m, a, m, sides_mask, frac)
    return set_market_book(state, m, q_m, ah_m)


def cancel_on(state, params, q_m, ah_m, a, m, sides_mask, frac=1.0):
    """`cancel` on market m's book slice (q_m, ah_m): refunds settled in the state, the
    new slice returned. Returns (state, q_m, ah_m)."""
    px = accounts.level_prices(state, params, m)
    has, slot = accounts.slot_of(state.book, a)
    sizes = jnp.where(has, q_m[:, :, slot] * frac * sides_mask[:, None], 0.0)
    # Both sides in one call (a side axis, not a loop and a stack: under vmap a stack of
    # the sides goes before the batch axis and costs a transpose of the slice).
    q_m, ah_m, cancelled = jax.vmap(bk.cancel_levels, in_axes=(0, 0, None, 0))(
        q_m, ah_m, slot, sizes
    )
    # Refund spot reserves: bids held USDT, asks held the asset.
    is_spot = m != PERP
    refund_usdt = jnp.where(is_spot, jnp.sum(cancelled[BID] * px), 0.0)
    refund_asset = jnp.where(is_spot, jnp.sum(cancelled[ASK]), 0.0)
    bal = state.acct.bal.at[a, USDT].add(refund_usdt)
    bal = bal.at[a, accounts.MARKET_ASSET_ARR[m]].add(refund_asset)
    return state.replace(acct=state.acct.replace(bal=bal)), q_m, ah_m


def cancel_accounts(state: SimState, params: Params, mask: Array) -> SimState:
    """Cancel every resting order of the accounts in `mask` (A,) bool, on every book, in
    one pass (no loop over accounts or markets); spot reserves are refunded.

    The same as `cancel_all` for each masked account in turn: an order queued behind
    cancelled ones moves forward by their sizes (queue intervals are disjoint, so "behind"
    is a larger `ahead`)."""
    book = state.book
    n = params.dims.n_accounts
    dtype = book.qty.dtype
    slots = accounts.slot_matrix(book, n, dtype)  # (Q, A)
    gone = (slots @ mask.astype(dtype)) > 0  # (Q,)
    c = jnp.where(gone, book.qty, 0.0)  # (M, 2, G, Q) cancelled
    ah = book.ahead
    behind = ah[..., None, :] > ah[..., :, None]  # [..., c, q]: q queued behind c
    shift = jnp.einsum("...c,...cq->...q", c, behind.astype(dtype))
    qty = jnp.where(gone, 0.0, book.qty)
    ahead = jnp.where(gone, 0.0, jnp.maximum(ah - shift, 0.0))
    # Spot reserves back to their owners: bids held USDT at their price, asks the asset.
    px = jnp.stack([accounts.level_prices(state, params, m) for m in range(N_MARKETS)])
    spot = (jnp.arange(N_MARKETS) != PERP).astype(dtype)
    bid_usdt = jnp.einsum("mgq,mg,m->q", c[:, BID], px, spot)
    ask_units = jnp.einsum("mgq,m->mq", c[:, ASK], spot)
    asset_oh = jax.nn.one_hot(accounts.MARKET_ASSET_ARR, N_ASSETS, dtype=dtype)  # (M, 4)
    refund = jnp.einsum("mq,qa,mk->ak", ask_units, slots, asset_oh)
    refund = refund.at[:, USDT].add(bid_usdt @ slots)
    acct = state.acct.replace(bal=state.acct.bal + refund)
    return state.replace(acct=acct, book=book.replace(qty=qty, ahead=ahead))


def cancel_all(state: SimState, params: Params, a, on=True) -> SimState:
    """Cancel all of account a's resting orders when `on` (a traced bool)."""
    both = jnp.ones((2,))
    frac = jnp.asarray(on, state.acct.bal.dtype)
    # A loop over the markets rather than one cancel per market: the compiled program
    # holds a single copy of it.
    return jax.lax.fori_loop(
        0, N_MARKETS, lambda m, st: cancel(st, params, a, m, both, frac), state
    )
