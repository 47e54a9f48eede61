"""`jaxsim.mechanisms.margin_checks`: the pre-trade perp check's position limit in force,
scaled to the perp book's depth.

Testbed scenarios with injected orders through `jaxsim.step` (shape, price model and
tolerances: tests/support.py; the session-scoped `sim` fixture: tests/conftest.py).
"""

from __future__ import annotations

import numpy as np
from support import make

from jaxsim.mechanisms import accounts
from jaxsim.types import KIND_MARKET, OK, PERP, REJ_POSITION_LIMIT


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
