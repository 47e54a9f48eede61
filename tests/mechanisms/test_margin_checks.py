"""`jaxsim.mechanisms.margin_checks`: the pre-trade perp check (the position limit in
force scaled to the perp book's depth, flips, isolated accounts) and the maintenance
check of flat isolated accounts.

Testbed scenarios with injected orders through `jaxsim.step` (shape, price model and
tolerances: tests/support.py; the session-scoped `sim` fixture: tests/conftest.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from support import POS_TOL, USD_TOL, assert_conserved, make, pos, usdt

from jaxsim.mechanisms import accounts
from jaxsim.types import (
    KIND_MARKET,
    OK,
    PERP,
    REJ_LEVERAGE,
    REJ_MARGIN,
    REJ_POSITION_LIMIT,
    STABLE,
    USDT,
)


def _perp_depth_2pct(st, p) -> float:
    """USDT resting on the perp book within 2% of its mid, from the state's arrays."""
    q = np.asarray(st.book.qty[PERP], np.float64).sum(-1)  # (2, G)
    px = np.asarray(accounts.level_prices(st, p, PERP), np.float64)
    bid = px[q[0] > 0].max()
    ask = px[q[1] > 0].min()
    mid = 0.5 * (bid + ask)
    near = np.abs(px - mid) <= 0.02 * mid
    return float((q.sum(0) * px)[near].sum())


def test_depth_scaled_position_limit(sim):
    """`rules.depth_limit`: a position-increasing perp order may not take the position
    past mult x the perp book's depth within 2% of mid (both sides, USDT), never below
    the floor, never above `position_limit`; reducing orders are not held to it."""
    users = [
        {"name": "a", "usdt": 1.0e7, "leverage": 10},
        {"name": "b", "usdt": 1.0e7, "leverage": 10},
        {"name": "c", "usdt": 1.0e7, "position": 20.0, "leverage": 10},
    ]
    p_off = make(users)
    depth = _perp_depth_2pct(sim.start(p_off), p_off)
    assert depth > 0
    mark = 100000.0

    def reasons(mult, floor, *trades):
        """Reasons of (account, side, qty) market orders, each in its own first tick (an
        order's fills thin the book the next one is measured on)."""
        p = make(users, **{"rules.depth_limit": {"mult": mult, "band": 0.02, "floor": floor}})
        out = []
        for a, side, qty in trades:
            row = {"account": a, "market": PERP, "side": side, "kind": KIND_MARKET, "qty": qty}
            _, evs, _ = sim.run(p, 1, orders_at={0: [row]})
            out.append(int(evs[0].order_reason[0]))
        return out

    # Limit = 0.5 x depth: 1.2x that is refused (either side), 0.8x of it goes through;
    # c holds 20 long (2M, over every limit here), and selling 1 reduces it.
    lim = 0.5 * depth
    over, under = 1.2 * lim / mark, 0.8 * lim / mark
    trades = lambda q: [(0, 1, q), (1, -1, q), (2, -1, 1.0)]  # noqa: E731
    assert reasons(0.5, 0.0, *trades(over)) == [REJ_POSITION_LIMIT, REJ_POSITION_LIMIT, OK]
    assert reasons(0.5, 0.0, *trades(under)) == [OK, OK, OK]
    # The floor lifts the limit: with floor = 2 x (0.5 x depth) the same over-size passes.
    assert reasons(0.5, 2 * lim, *trades(over)) == [OK, OK, OK]
    # position_limit still caps it: 1.2 x lim is refused under a limit of lim.
    p_lim = {"rules.position_limit": lim}
    p = make(users, **p_lim, **{"rules.depth_limit": {"mult": 0.5, "band": 0.02, "floor": 4 * lim}})
    row = {"account": 0, "market": PERP, "side": 1, "kind": KIND_MARKET, "qty": over}
    _, evs, _ = sim.run(p, 1, orders_at={0: [row]})
    assert int(evs[0].order_reason[0]) == REJ_POSITION_LIMIT
    # Off (mult 0): only position_limit counts.
    assert reasons(0.0, 0.0, *trades(over)) == [OK, OK, OK]


def test_flip_is_checked_on_its_new_side(sim):
    """An order that flips the position to a smaller one on the other side (+1 -> -0.6,
    +2 -> -1.6) opens a new position: the new side is held to the position limit, the
    tier's max leverage and initial margin like any increase.

    Position limit 150,000 USDT, mark 100,000; each account sells into the LP's bids.
    - lev_125: +1 -> -0.6 is 60,000 notional, tier 2 (max 100x) < its 125x: leverage.
    - big: +2 -> -1.6 is 160,000 > 150,000: position limit.
    - thin: 5,000 USDT, +1 at 10x -> -0.6 needs IM 60,000 / 10 = 6,000 > MB 5,000 less
      the fill's impact at the LP's bid 99,900 (1.6 x 100 = 160, fee 1.6 x 99,900 x
      0.05% = 79.92): margin.
    - ok: 100,000 USDT, the same flip as `thin`: accepted, now short 0.6."""
    users = [
        {"name": "lev_125", "usdt": 100000.0, "position": 1.0, "leverage": 125},
        {"name": "big", "usdt": 100000.0, "position": 2.0, "leverage": 10},
        {"name": "thin", "usdt": 5000.0, "position": 1.0, "leverage": 10},
        {"name": "ok", "usdt": 100000.0, "position": 1.0, "leverage": 10},
    ]
    p = make(users, **{"rules.position_limit": 150000.0})
    sell = lambda a, q: {"account": a, "market": PERP, "side": -1, "kind": KIND_MARKET, "qty": q}  # noqa: E731
    rows = [sell(0, 1.6), sell(1, 3.6), sell(2, 1.6), sell(3, 1.6)]
    states, evs, st0 = sim.run(p, 1, orders_at={0: rows})
    reasons = [int(r) for r in evs[0].order_reason]
    assert reasons == [REJ_LEVERAGE, REJ_POSITION_LIMIT, REJ_MARGIN, OK]
    st = states[0]
    assert [pos(st, a) for a in range(3)] == [1.0, 2.0, 1.0]
    assert pos(st, 3) == pytest.approx(-0.6, abs=POS_TOL)
    assert_conserved(p, st0, st)


def test_isolated_increase_is_checked_as_settled(sim):
    """The pre-trade check of an isolated account asks its wallet for what settlement
    takes from it: the increase's margin at the fill price plus the taker fee (and the
    IM of resting orders), whatever surplus the position's own margin has.

    Each holds 1 BTC long (entry 100,000, 10x) on 20,000 isolated margin (IM 10,000: a
    10,000 surplus) and buys 0.5 more at the LP's ask 100,050: settlement moves 0.5 x
    100,050 / 10 = 5,002.5 into the margin and charges 0.5 x 100,050 x 0.05% = 25.01
    from the wallet, 5,027.51 in all.
    - short_wallet (5,000 USDT, 4,999.5 after the 0.01% haircut): refused (the old check
      counted the position's surplus and let the wallet go to -27.51).
    - wallet (6,000 USDT): accepted; the wallet keeps 972.49, the margin is 25,002.5."""
    iso = {"position": 1.0, "mode": "isolated", "isolated_margin": 20000.0, "leverage": 10}
    users = [
        {"name": "short_wallet", "usdt": 5000.0, **iso},
        {"name": "wallet", "usdt": 6000.0, **iso},
    ]
    p = make(users)
    buy = lambda a: {"account": a, "market": PERP, "side": 1, "kind": KIND_MARKET, "qty": 0.5}  # noqa: E731
    states, evs, st0 = sim.run(p, 1, orders_at={0: [buy(0), buy(1)]})
    assert [int(r) for r in evs[0].order_reason[:2]] == [REJ_MARGIN, OK]
    st = states[0]
    assert float(evs[0].order_avg_px[1]) == pytest.approx(100050.0, abs=0.01)
    assert usdt(st, 0) == 5000.0 and pos(st, 0) == 1.0
    assert usdt(st, 1) == pytest.approx(6000.0 - 5002.5 - 25.0125, abs=USD_TOL)
    assert float(st.acct.iso_margin[1]) == pytest.approx(25002.5, abs=USD_TOL)
    assert pos(st, 1) == pytest.approx(1.5, abs=POS_TOL)
    assert_conserved(p, st0, st)


def test_flat_isolated_account_with_negative_usdt_is_liquidated(sim):
    """A flat isolated account has no position margin to check: its wallet is checked,
    and a wallet whose haircut value is negative (MECHANICS 3.3: LTV >= 1 with no
    position) goes to the liquidation engine like a cross account's.

    Flat, isolated, -50 USDT (say, fees) and 30 STABLE: wallet value 30 x 0.95 - 50 =
    -21.5 < 0 = MM. The engine sells the 30 STABLE into the STABLE book at its best bid
    0.999 (in the first tick the LP's 0.9995 level sits inside its half spread): 29.97
    less the 0.05% taker fee 0.015, USDT -20.045; the fund resets that hole. Before,
    such an account was never checked (its margin balance is its isolated margin, 0) and
    kept its -50 USDT for ever."""
    users = [{"name": "iso_flat", "stable": 30.0, "mode": "isolated"}]
    p = make(users)
    st0 = sim.start(p)
    st0 = st0.replace(acct=st0.acct.replace(bal=st0.acct.bal.at[0, USDT].set(-50.0)))
    states, evs, _ = sim.run(p, 2, st=st0)
    ev, st = evs[0], states[0]
    assert int(ev.liq_accounts) == 1 and bool(ev.liq_mask[0])
    assert float(ev.collateral_sold[STABLE]) == pytest.approx(30.0, abs=1e-4)
    assert float(ev.collateral_sold_usdt) == pytest.approx(30.0 * 0.999, abs=1e-3)
    assert usdt(st, 0) == 0.0 and float(st.acct.bal[0, STABLE]) == 0.0
    fund = p.dims.insurance
    hole = 50.0 - 30.0 * 0.999 * (1 - 0.0005)
    # (float32 resolves the 1e6 fund to 0.0625)
    assert usdt(st, fund) - usdt(st0, fund) == pytest.approx(-hole, abs=0.07)
    assert int(evs[1].liq_accounts) == 0
    assert_conserved(p, st0, states[-1])
