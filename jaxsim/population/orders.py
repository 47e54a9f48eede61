"""The background population's orders for a tick: every behaviour's rows assembled into one
(K,) `Orders` batch, K = 2 U + P (`state.n_background_orders`): slot 1 of the U user
accounts, then their slot 2, then the P program rows.

What each behaviour puts in its two slots (market field: the book, or for a transfer,
borrow or repay the asset):

| behaviour            | slot 1                                    | slot 2                         |
|----------------------|-------------------------------------------|--------------------------------|
| retail (perp)        | market order on the perp                  | none                           |
| retail (spot)        | cancel its resting bids                   | market or limit order on spot  |
| basis_arb            | perp leg (price-limited market order)     | spot hedge (market order)      |
| xvenue_arb           | market order, standing bid, or its cancel | transfer in or out             |
| panic_seller         | market sell on spot                       | none                           |
| looper               | market sell on its market, or borrow USDT | market buy, or repay USDT      |
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxsim.population.arbitrage import BasisArb, XvenueArb, basis_arb, xvenue_arb
from jaxsim.population.looper import Looper, looper
from jaxsim.population.panic import panic_seller
from jaxsim.population.programs import program_orders
from jaxsim.population.retail import Retail, retail
from jaxsim.population.view import View, view
from jaxsim.types import (
    BEH_BASIS_ARB,
    BEH_LOOPER,
    BEH_PANIC,
    BEH_RETAIL,
    BEH_XVENUE_ARB,
    KIND_CANCEL,
    KIND_LIMIT,
    KIND_MARKET,
    KIND_NONE,
    PERP,
    SPOT,
    USDT,
    Orders,
    Params,
    SimState,
)

Array = jax.Array
# One slot's (U,) fields: kind, market, side, qty, price.
Slot = tuple[Array, Array, Array, Array, Array]


def background_orders(
    key: Array, state: SimState, params: Params, equity: Array
) -> tuple[Orders, Array]:
    """Orders of the background population for this tick.

    Returns (Orders of shape (K,) = (2 * n_user + n_programs,), (K,) bool arb mask: the rows
    of basis and cross-venue arbitrageurs). `equity`: (A,) each account's unhaircut equity
    in USDT; `key` draws who acts and the retail noise.
    """
    v = view(key, state, params, equity)
    r = retail(v, state, params)
    b = basis_arb(v, state, params)
    x = xvenue_arb(v, state, params)
    p_qty = panic_seller(v, state, params)
    lp = looper(v, state, params)
    k1, m1, s1, q1, p1 = _slot1(v, r, b, x, p_qty, lp)
    k2, m2, s2, q2, p2 = _slot2(v, r, b, x, lp)
    on, kp, q_prog, px_prog = program_orders(state, params)
    pp, dtype = params.pop, state.acct.bal.dtype

    def cat(*xs):
        return jnp.concatenate([jnp.asarray(x) for x in xs])

    # The users' rows as one (10, U) array first: one fusion computes every field from
    # the behaviours' decisions, which each field's own assembly would otherwise repeat
    # (benchmarks.compile_size). Kinds, markets and sides are small integers: exact in
    # any float dtype.
    u = jnp.stack([jnp.asarray(x, dtype) for x in (m1, m2, s1, s2, k1, k2, q1, q2, p1, p2)])
    m1, m2, s1, s2, k1, k2, q1, q2, p1, p2 = (u[i] for i in range(10))
    orders = Orders(
        account=cat(v.ids, v.ids, pp.prog_account).astype(jnp.int32),
        market=cat(m1, m2, pp.prog_market).astype(jnp.int32),
        side=cat(s1, s2, pp.prog_side).astype(jnp.int32),
        kind=cat(k1, k2, kp).astype(jnp.int32),
        qty=cat(q1, q2, q_prog).astype(dtype),
        price=cat(p1, p2, px_prog).astype(dtype),
    )
    is_arb = (v.kind == BEH_BASIS_ARB) | (v.kind == BEH_XVENUE_ARB)
    arb = cat(is_arb, is_arb, jnp.zeros_like(on))
    return orders, arb


def _slot1(v: View, r: Retail, b: BasisArb, x: XvenueArb, p_qty: Array, lp: Looper) -> Slot:
    """Slot 1 of each user account (U,): its behaviour's first row (see the module table).
    An account with no behaviour sends KIND_NONE."""
    kind = v.kind
    is_r, is_b = kind == BEH_RETAIL, kind == BEH_BASIS_ARB
    is_x, is_p = kind == BEH_XVENUE_ARB, kind == BEH_PANIC
    is_l = kind == BEH_LOOPER
    q1 = jnp.where(
        is_r, r.qty, jnp.where(is_b, b.qty, jnp.where(is_x, x.qty, jnp.where(is_p, p_qty, 0.0)))
    )
    q1 = jnp.where(is_l, lp.qty1, q1)
    q1 = jnp.where(r.spot, 0.0, q1)
    s1 = jnp.where(is_r, r.side, jnp.where(is_b, jnp.sign(b.gap), jnp.where(is_x, x.side, -1.0)))
    m1 = jnp.where(is_r | is_b, jnp.where(r.spot, SPOT, PERP), jnp.where(is_x, v.xm, SPOT))
    # A looper's slot 1 is a sale on its market or a USDT borrow (the market field names
    # the asset for borrow / repay).
    m1 = jnp.where(is_l, jnp.where(lp.unwind, v.xm, USDT), m1)
    p1 = jnp.where(is_x, x.limit, jnp.where(is_b, b.limit, 0.0))
    k1 = jnp.where(is_l, lp.kind1, jnp.where(is_x, x.kind, KIND_MARKET))
    k1 = jnp.where((q1 > 0) | (is_x & x.stale), k1, KIND_NONE)
    # Slot 1 of a spot cohort: cancel its resting bids (side +1: the bid side only).
    k1 = jnp.where(r.cancel, KIND_CANCEL, k1)
    s1 = jnp.where(r.spot, 1.0, s1)
    return k1, m1, s1, q1, p1


def _slot2(v: View, r: Retail, b: BasisArb, x: XvenueArb, lp: Looper) -> Slot:
    """Slot 2 of each user account (U,): its behaviour's second row (see the module table).
    An account with no behaviour, or a zero quantity, sends KIND_NONE."""
    kind = v.kind
    is_b, is_x, is_l = kind == BEH_BASIS_ARB, kind == BEH_XVENUE_ARB, kind == BEH_LOOPER
    q2 = jnp.where(is_b, b.hedge_qty, jnp.where(is_x, x.t_qty, jnp.where(is_l, lp.qty2, 0.0)))
    q2 = jnp.where(r.spot, r.qty, q2)
    k2 = jnp.where(
        is_b, KIND_MARKET, jnp.where(is_x, x.t_kind, jnp.where(is_l, lp.kind2, KIND_NONE))
    )
    k2 = jnp.where(r.spot, jnp.where(r.limit, KIND_LIMIT, KIND_MARKET), k2)
    k2 = jnp.where(q2 > 0, k2, KIND_NONE)
    s2 = jnp.where(is_b, jnp.sign(b.hedge_gap), jnp.where(is_l & lp.lever, 1.0, 0.0))
    s2 = jnp.where(r.spot, r.side, s2)
    m2 = jnp.where(
        is_b | r.spot,
        SPOT,
        jnp.where(is_x, x.t_asset, jnp.where(is_l, jnp.where(lp.lever, v.xm, USDT), 0)),
    )
    p2 = jnp.where(r.limit, r.bid_px, 0.0)
    return k2, m2, s2, q2, p2
