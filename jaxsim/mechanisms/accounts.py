"""Account valuations and maker slots: asset prices, margin balances, equity, marked
equity, and which account owns which resting-order slot of the books."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxsim import book as bk
from jaxsim import margin as mg
from jaxsim.ops import sum_last, sum_leading
from jaxsim.types import (
    ASK,
    BID,
    CROSS,
    LP_SLOT,
    MARKET_ASSET,
    N_SYSTEM,
    PERP,
    SPOT_MARKETS,
    Book,
    Params,
    PriceState,
    SimState,
)

Array = jax.Array


MARKET_ASSET_ARR = jnp.array(MARKET_ASSET, dtype=jnp.int32)


TINY = 1e-9


def asset_prices(px: PriceState) -> Array:
    """(4,) USDT value of one unit of USDT, BASE, STABLE, LST at index prices."""
    return jnp.concatenate([jnp.ones((1,), px.index.dtype), px.index])


def level_prices(state: SimState, params: Params, m) -> Array:
    """Prices (G,) of market m's grid levels."""
    return bk.level_prices(state.book.origin[m], params.markets.tick_size[m], params.dims.n_levels)


def margin_balances(state: SimState) -> Array:
    """(A,) margin balance of every account at index prices and mark (haircuts applied)."""
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


def margin_balance_of(state: SimState, a) -> Array:
    """Margin balance of account a alone (`margin_balances(state)[a]` without the others)."""
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


def equity(state: SimState) -> Array:
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
        lvl = level_prices(state, params, m)
        reserved = reserved + jnp.einsum("gq,g->q", state.book.qty[m, BID], lvl)
        reserved = reserved + state.book.qty[m, ASK].sum(0) * px[MARKET_ASSET[m]]
    reserved = per_account(state.book, reserved, params.dims.n_accounts)
    return wallet + upnl + a.iso_margin + transit + reserved


def open_order_notional_of(state: SimState, params: Params, a) -> Array:
    """Notional of account a's resting perp orders."""
    own = own_orders(state, a, PERP)
    return jnp.sum((own[BID] + own[ASK]) * level_prices(state, params, PERP))


def fee_rates(state: SimState, params: Params) -> tuple[Array, Array]:
    """(maker (A,), taker (A,)) trading-fee rates each account pays now: its own rate
    where it has one (`accounts.users[].fees`, a negotiated programme: fixed, a rule
    change does not move it), else the rules in force (`rules.fees`, which the schedule
    may change). System accounts have no own rates."""
    ai, r = params.accounts, state.rules
    maker = jnp.where(ai.own_maker_fee, ai.maker_fee, r.maker_fee)
    taker = jnp.where(ai.own_taker_fee, ai.taker_fee, r.taker_fee)
    return maker, taker


def taker_rate_of(state: SimState, params: Params, a) -> Array:
    """() taker fee rate account `a` pays now (`fee_rates`)."""
    return fee_rates(state, params)[1][a]


def system_mask(params: Params) -> Array:
    """(A,) True for the system accounts (LP, insurance fund, fee account, outside world)."""
    n = params.dims.n_accounts
    return jnp.arange(n) >= n - N_SYSTEM


def onehot(a, n, dtype) -> Array:
    """(n,) one-hot of index a in dtype."""
    return (jnp.arange(n) == a).astype(dtype)


def slot_of(book: Book, a) -> tuple[Array, Array]:
    """(has, slot): whether account `a` holds a maker slot of the books, and which."""
    hit = book.owner == a
    return hit.any(), jnp.argmax(hit)


def slot_matrix(book: Book, n_accounts: int, dtype) -> Array:
    """(Q, A) one-hot map of the maker slots to their accounts (a free slot maps nowhere)."""
    return (book.owner[:, None] == jnp.arange(n_accounts)[None, :]).astype(dtype)


def per_account(book: Book, x: Array, n_accounts: int) -> Array:
    """Per-slot values x (..., Q) as per-account values (..., A)."""
    return x @ slot_matrix(book, n_accounts, x.dtype)


def own_orders(state: SimState, a, m) -> Array:
    """(2, G) sizes account `a` rests on market `m`, bids and asks (zeros without a slot)."""
    has, s = slot_of(state.book, a)
    return jnp.where(has, state.book.qty[m, :, :, s], 0.0)


def book_by_account(state: SimState, params: Params) -> tuple[Array, Array]:
    """(qty, ahead), each (M, 2, G, A): the books with one owner column per account."""
    p = slot_matrix(state.book, params.dims.n_accounts, state.book.qty.dtype)
    return state.book.qty @ p, state.book.ahead @ p


def slot_for(book: Book, a) -> tuple[Array, Array]:
    """(slot, ok): where account `a`'s next resting order goes. Its own slot, else the first
    free one: never used, or its owner has nothing left resting on any book (the LP's
    slot is never free). ok is False when every slot is taken."""
    has, s = slot_of(book, a)
    q = book.owner.shape[0]
    empty = sum_leading(book.qty) <= 0
    free = ((book.owner < 0) | empty) & (jnp.arange(q) != LP_SLOT)
    return jnp.where(has, s, jnp.argmax(free)), has | free.any()
