"""`jaxsim.mechanisms.orders`: validation and pre-trade checks, every reject reason.

Testbed scenarios with injected orders through `jaxsim.step` (shape, price model and
tolerances: tests/support.py; the session-scoped `sim` fixture: tests/conftest.py).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from support import assert_conserved, make, pos, usdt

from jaxsim.mechanisms import accounts
from jaxsim.types import (
    ASK,
    BASE,
    BID,
    KIND_LIMIT,
    KIND_MARKET,
    KIND_POST_ONLY,
    LP_SLOT,
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
    REJ_WOULD_TAKE,
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


# ------------------------------------------------------------------ post-only (GTX)


def _same_state(got, want):
    """Every leaf of two states equal (books with queue positions, balances, positions)."""
    leaves = jax.tree_util.tree_leaves_with_path(got)
    for (path, x), y in zip(leaves, jax.tree_util.tree_leaves(want), strict=True):
        np.testing.assert_array_equal(
            np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path)
        )


def _touch(ev, m):
    return float(ev.best_bid[m]), float(ev.best_ask[m])


def _order(a, m, side, kind, qty, px):
    return {"account": a, "market": m, "side": side, "kind": kind, "qty": qty, "price": px}


POST_USERS = [
    {"name": "perp_a", "usdt": 1.0e6, "leverage": 10},
    {"name": "perp_b", "usdt": 1.0e6, "leverage": 10},
    {"name": "spot", "usdt": 1.0e6, "base": 5.0},
]


def test_post_only_below_the_touch_rests_like_a_limit(sim):
    """Post-only orders that cross nothing (a perp bid joining the LP's best bid, a perp ask
    inside the spread, a spot bid and ask at the touch) rest exactly as the same limit
    orders do: same books and queue positions (behind the LP at its level), same spot
    reserves (the bid's USDT at its price, the ask's BASE), no fill, no fee."""
    p = make(POST_USERS)
    st1, ev0 = sim.tick(sim.start(p), p)
    bb, ba = _touch(ev0, PERP)
    sb, sa = _touch(ev0, SPOT)
    assert bb + 50.0 < ba  # the LP leaves the centre level empty

    def rows(kind):
        return [
            _order(0, PERP, 1, kind, 0.2, bb),
            _order(1, PERP, -1, kind, 0.3, ba - 50.0),
            _order(2, SPOT, 1, kind, 0.5, sb),
            _order(2, SPOT, -1, kind, 1.0, sa),
        ]

    st_lim, ev_lim = sim.tick(st1, p, rows(KIND_LIMIT))
    st_po, ev_po = sim.tick(st1, p, rows(KIND_POST_ONLY))
    assert [int(r) for r in ev_po.order_reason] == [OK] * 4
    assert [int(r) for r in ev_lim.order_reason] == [OK] * 4
    np.testing.assert_array_equal(np.asarray(ev_po.order_filled), 0.0)
    np.testing.assert_array_equal(np.asarray(ev_po.order_unfilled), 0.0)
    assert float(ev_po.fees) == 0.0
    _same_state(st_po, st_lim)
    # Account 0's bid waits behind the LP's size at the best bid.
    lvl = int(round(bb / 50.0)) - int(st_po.book.origin[PERP])
    qty, ahead = accounts.book_by_account(st_po, p)
    assert float(qty[PERP, BID, lvl, 0]) == pytest.approx(0.2)
    lp_there = float(st_po.book.qty[PERP, BID, lvl, LP_SLOT])
    assert lp_there > 0 and float(ahead[PERP, BID, lvl, 0]) == pytest.approx(lp_there)
    lvl_a = int(round((ba - 50.0) / 50.0)) - int(st_po.book.origin[PERP])
    assert float(qty[PERP, ASK, lvl_a, 1]) == pytest.approx(0.3)
    # Spot reserves: 0.5 BASE bid at sb holds 0.5 x sb USDT, the ask holds 1 BASE.
    assert usdt(st_po, 2) == pytest.approx(usdt(st1, 2) - 0.5 * sb, abs=0.05)
    assert float(st_po.acct.bal[2, BASE]) == pytest.approx(float(st1.acct.bal[2, BASE]) - 1.0)
    assert_conserved(p, st1, st_po)


def test_post_only_that_would_take_is_rejected_and_changes_nothing(sim):
    """Post-only orders whose price reaches the opposite best (at it or through it, perp
    and spot, both sides) are rejected whole with `would_take`: the state after the tick
    is the state after a tick without them. The same orders as limits do trade."""
    p = make(POST_USERS)
    st1, ev0 = sim.tick(sim.start(p), p)
    bb, ba = _touch(ev0, PERP)
    sb, sa = _touch(ev0, SPOT)

    def rows(kind):
        return [
            _order(0, PERP, 1, kind, 0.1, ba),  # at the best ask
            _order(1, PERP, -1, kind, 0.1, bb - 200.0),  # through the best bid
            _order(2, SPOT, 1, kind, 0.5, sa + 100.0),
            _order(2, SPOT, -1, kind, 1.0, sb),
        ]

    st_x, ev_x = sim.tick(st1, p, rows(KIND_POST_ONLY))
    st_n, _ = sim.tick(st1, p)
    assert [int(r) for r in ev_x.order_reason] == [REJ_WOULD_TAKE] * 4
    np.testing.assert_array_equal(np.asarray(ev_x.order_filled), 0.0)
    np.testing.assert_allclose(np.asarray(ev_x.order_unfilled), [0.1, 0.1, 0.5, 1.0], rtol=1e-6)
    assert float(ev_x.fees) == 0.0
    assert int(np.asarray(ev_x.rejects)[REJ_WOULD_TAKE]) == 4
    _same_state(st_x, st_n)
    _, ev_lim = sim.tick(st1, p, rows(KIND_LIMIT))
    assert [int(r) for r in ev_lim.order_reason] == [OK] * 4
    assert (np.asarray(ev_lim.order_filled) > 0).all()


def test_post_only_reject_order(sim):
    """Which reason a post-only order gets: a bad row is invalid; a price off the grid or
    outside the band is reported before crossing; crossing before the checks of a resting
    order (an account that could not afford to rest it still gets `would_take`); a
    non-crossing one is checked as a resting limit (margin, spot balance)."""
    users = [{"name": "poor", "usdt": 100.0, "leverage": 10}]
    p = make(users, **{"rules.price_band.perp": 0.001})
    st1, ev0 = sim.tick(sim.start(p), p)
    bb, ba = _touch(ev0, PERP)
    sb, _ = _touch(ev0, SPOT)
    t1 = [
        _order(0, PERP, 1, KIND_POST_ONLY, 1.0, ba),  # crosses; resting it needs 10k IM
        _order(0, PERP, 1, KIND_POST_ONLY, 1.0, bb),  # rests: 10k IM > 100 USDT
        _order(0, SPOT, 1, KIND_POST_ONLY, 1.0, sb),  # rests: ~1e5 USDT reserve
        _order(0, PERP, 1, KIND_POST_ONLY, 0.001, 0.0),  # no limit price
    ]
    t2 = [
        _order(0, PERP, 1, KIND_POST_ONLY, 0.001, 100700.0),  # crosses, outside the band
        _order(0, PERP, 1, KIND_POST_ONLY, 0.001, 50000.0),  # off the grid
        _order(0, PERP, 0, KIND_POST_ONLY, 0.001, bb),  # no side
        _order(0, PERP, 1, KIND_POST_ONLY, 0.001, bb),  # 10 USDT of IM: rests
    ]
    st2, ev1 = sim.tick(st1, p, t1)
    st3, ev2 = sim.tick(st2, p, t2)
    assert [int(r) for r in ev1.order_reason] == [
        REJ_WOULD_TAKE,
        REJ_MARGIN,
        REJ_BALANCE,
        REJ_INVALID,
    ]
    assert [int(r) for r in ev2.order_reason] == [REJ_PRICE_BAND, REJ_OUT_OF_RANGE, REJ_INVALID, OK]
    assert float(accounts.own_orders(st3, 0, PERP)[BID].sum()) == pytest.approx(0.001)
    assert pos(st3, 0) == 0.0
