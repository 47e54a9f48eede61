"""`jaxsim.mechanisms.orders`: validation and pre-trade checks, every reject reason.

Testbed scenarios with injected orders through `jaxsim.step` (shape, price model and
tolerances: tests/support.py; the session-scoped `sim` fixture: tests/conftest.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from support import assert_conserved, make, pos, usdt

from jaxsim.types import (
    KIND_LIMIT,
    KIND_MARKET,
    OK,
    PERP,
    REJ_BALANCE,
    REJ_INVALID,
    REJ_LEVERAGE,
    REJ_MARGIN,
    REJ_OUT_OF_RANGE,
    REJ_POSITION_LIMIT,
    REJ_PRICE_BAND,
    REJ_SYSTEM,
    SPOT,
)


def test_reject_reasons(sim):
    users = [
        {"name": "poor", "usdt": 1000.0, "leverage": 10},
        {"name": "rich_125x", "usdt": 1000000.0, "leverage": 125},
    ]
    p = make(users, **{"rules.position_limit": 150000.0, "rules.price_band.perp": 0.001})
    nan = float("nan")
    t0 = [
        # 10 BASE ~ 1e6 USDT with 1,000 USDT.
        {"account": 0, "market": SPOT, "side": 1, "kind": KIND_MARKET, "qty": 10.0},
        # 1 BTC perp needs 10,000 initial margin at 10x.
        {"account": 0, "market": PERP, "side": 1, "kind": KIND_MARKET, "qty": 1.0},
        # 2 BTC = 200k notional > 150k position limit.
        {"account": 0, "market": PERP, "side": 1, "kind": KIND_MARKET, "qty": 2.0},
        # 0.6 BTC = 60k -> tier 2 allows 100x < the account's 125x.
        {"account": 1, "market": PERP, "side": 1, "kind": KIND_MARKET, "qty": 0.6},
    ]
    t1 = [
        # Band 0.1% of mark = 100 USDT: 99,500 is on the grid but outside the band.
        {
            "account": 0,
            "market": PERP,
            "side": 1,
            "kind": KIND_LIMIT,
            "qty": 0.001,
            "price": 99500.0,
        },
        # 50,000 is off the 32-level grid (99,200 .. 100,750).
        {
            "account": 0,
            "market": PERP,
            "side": 1,
            "kind": KIND_LIMIT,
            "qty": 0.001,
            "price": 50000.0,
        },
        {"account": 0, "market": PERP, "side": 1, "kind": KIND_MARKET, "qty": nan},
        # The LP is a system account.
        {"account": p.dims.lp, "market": PERP, "side": 1, "kind": KIND_MARKET, "qty": 0.1},
    ]
    t2 = [
        {
            "account": 0,
            "market": PERP,
            "side": 1,
            "kind": KIND_LIMIT,
            "qty": 0.0,
            "price": 100000.0,
        },
        {"account": 0, "market": PERP, "side": 0, "kind": KIND_MARKET, "qty": 0.1},
        {"account": 0, "market": 7, "side": 1, "kind": KIND_MARKET, "qty": 0.1},
        # A valid order still goes through after the rejects: 0.001 BTC needs 10 USDT.
        {"account": 0, "market": PERP, "side": 1, "kind": KIND_MARKET, "qty": 0.001},
    ]
    states, evs, st0 = sim.run(p, 3, orders_at={0: t0, 1: t1, 2: t2})
    reasons = [[int(r) for r in e.order_reason] for e in evs]
    assert reasons[0] == [REJ_BALANCE, REJ_MARGIN, REJ_POSITION_LIMIT, REJ_LEVERAGE]
    assert reasons[1] == [REJ_PRICE_BAND, REJ_OUT_OF_RANGE, REJ_INVALID, REJ_SYSTEM]
    assert reasons[2] == [REJ_INVALID, REJ_INVALID, REJ_INVALID, OK]
    # The per-reason histogram agrees; OK is not counted.
    hist = np.asarray(evs[0].rejects)
    for r in (REJ_BALANCE, REJ_MARGIN, REJ_POSITION_LIMIT, REJ_LEVERAGE):
        assert hist[r] == 1
    assert hist[OK] == 0 and hist.sum() == 4
    # Rejected orders move nothing; NaN does not leak into the events.
    for i in range(2):
        assert usdt(states[1], i) == usdt(st0, i)
        assert pos(states[1], i) == 0.0
    assert float(evs[1].order_unfilled[2]) == 0.0
    assert np.isfinite(np.asarray(evs[1].order_filled)).all()
    assert pos(states[2], 0) == pytest.approx(0.001, abs=1e-7)
    assert_conserved(p, st0, states[-1])


def test_market_order_price_is_held_to_the_band(sim):
    """A market order's explicit price never takes it past the price band (MECHANICS 6,
    `marketTakeBound`): the walk stops at mark x (1 +/- band) and the rest goes unfilled.

    Perp band 0.1% of mark 100,000: buys walk up to 100,100, sells down to 99,900. The
    LP's asks at 100,050 and 100,100 (3 x exp(-5/50) = 2.714 and 3 x exp(-10/50) = 2.456)
    are all a 10 BTC buy priced at 100,700 may take (5.170); a 10 BTC sell priced at
    99,300 takes only the LP's bid at 99,900 (2.456; in the first tick the LP's 99,950
    level sits inside its half spread) and not 99,850 (2.222) below it. The rest of each
    goes unfilled."""
    users = [{"name": "buyer", "usdt": 1.0e7}, {"name": "seller", "usdt": 1.0e7}]
    p = make(users, **{"rules.price_band.perp": 0.001})
    rows = [
        {
            "account": 0,
            "market": PERP,
            "side": 1,
            "kind": KIND_MARKET,
            "qty": 10.0,
            "price": 1.007e5,
        },
        {
            "account": 1,
            "market": PERP,
            "side": -1,
            "kind": KIND_MARKET,
            "qty": 10.0,
            "price": 9.93e4,
        },
    ]
    states, evs, st0 = sim.run(p, 1, orders_at={0: rows})
    ev = evs[0]
    near = [3.0 * (np.exp(-0.1) + np.exp(-0.2)), 3.0 * np.exp(-0.2)]  # 5.170, 2.456
    assert [int(r) for r in ev.order_reason[:2]] == [OK, OK]
    for i, side in ((0, 1), (1, -1)):
        assert float(ev.order_filled[i]) == pytest.approx(near[i], rel=1e-4)
        assert float(ev.order_unfilled[i]) == pytest.approx(10.0 - near[i], rel=1e-4)
        worst = 100000.0 * (1 + 0.001 * side)
        assert side * (float(ev.order_avg_px[i]) - worst) <= 0.0
    assert pos(states[0], 0) == pytest.approx(near[0], rel=1e-4)
    assert_conserved(p, st0, states[0])
