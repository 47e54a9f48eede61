"""`jaxsim.mechanisms.schedule`: rule changes (announcement, countdown, phased steps) and
their enforcement (force-reduce, grandfather).

Testbed scenarios with injected orders through `jaxsim.step` (shape, price model and
tolerances: tests/support.py; the session-scoped `sim` fixture: tests/conftest.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from support import POS_TOL, assert_conserved, make, pos

from jaxsim.mechanisms import accounts
from jaxsim.types import BID, KIND_MARKET, PERP, POLICY_FORCE_REDUCE, REJ_POSITION_LIMIT


def _schedule_params(policy, **over):
    users = [{"name": "whale", "usdt": 100000.0, "position": 5.0, "leverage": 10}]
    rows = [
        {
            "announce_s": 20.0,
            "effective_s": 50.0,
            "field": "position_limit",
            "value": 200000.0,
            "policy": policy,
        }
    ]
    return make(users, schedule=rows, **over)


def test_schedule_next_change_countdown(sim):
    p = _schedule_params("grandfather")
    _, evs, _ = sim.run(p, 7)
    got = [float(e.next_change_s) for e in evs]
    # Events after ticks 0..6 (time 10..70 s): unannounced until 20 s, then seconds left to
    # 50 s, then -1 once the change took effect (in the tick starting at 50 s).
    assert got == [-1.0, 30.0, 20.0, 10.0, 0.0, -1.0, -1.0]
    assert [int(e.rules_changed) for e in evs] == [0, 0, 0, 0, 0, 1, 0]


def test_schedule_force_reduce(sim):
    p = _schedule_params("force_reduce")
    states, evs, st0 = sim.run(p, 7)
    for i in range(5):
        assert pos(states[i], 0) == 5.0
        assert float(evs[i].forced_reduce_notional) == 0.0
    ev, st = evs[5], states[5]
    assert float(st.rules.position_limit) == pytest.approx(200000.0)
    # 5 BTC (500k) cut to the 200k limit: ~3 BTC sold at ~99,950 = ~300k by market order.
    assert float(ev.forced_reduce_notional) == pytest.approx(3 * 99950.0, rel=0.01)
    assert pos(st, 0) == pytest.approx(2.0, rel=0.01)
    assert abs(pos(st, 0)) * float(st.px.mark) <= 200000.0 * (1 + 1e-4)
    assert float(ev.volume[PERP]) == pytest.approx(5.0 - pos(st, 0), abs=POS_TOL)
    assert_conserved(p, st0, states[-1])


def test_schedule_force_reduce_within_the_sale_band(sim):
    """Force-reduce sells no lower than the mark x (1 - sale_band); the rest stays queued.

    sale_band 0.12%: at the effective tick (tick 5) the mark is 100,000, the floor 99,880,
    and only the best perp bid level, 99,900, lies above it: the whale sells what rests
    there, short of the 3 BTC cut, and stays queued; the next tick (the LP refilled)
    finishes the cut to 200,000 / mark. Unbanded the cut would walk to 99,850."""
    p = _schedule_params("force_reduce", **{"rules.sale_band": 0.0012})
    states, evs, st0 = sim.run(p, 7)
    px = np.asarray(accounts.level_prices(states[4], p, PERP))
    bids = np.asarray(states[4].book.qty[PERP, BID].sum(-1))
    assert float(states[4].px.mark) == 100000.0 and px[bids > 0].max() == 99900.0
    top = float(bids[px == 99900.0][0])
    assert top < 3.0
    ev, st = evs[5], states[5]
    assert float(ev.perp_px) == 99900.0
    assert pos(st, 0) == pytest.approx(5.0 - top, abs=POS_TOL)
    assert float(ev.forced_reduce_notional) == pytest.approx(top * 99900.0, rel=1e-5)
    assert int(st.enforce[0]) == POLICY_FORCE_REDUCE
    st = states[6]
    assert pos(st, 0) == pytest.approx(200000.0 / float(st.px.mark), rel=1e-4)
    assert float(evs[6].perp_px) >= float(states[5].px.mark) * (1 - 0.0012)
    assert int(st.enforce[0]) == 0
    assert_conserved(p, st0, states[-1])


def test_schedule_grandfather(sim):
    p = _schedule_params("grandfather")
    # After the change (tick 6), an order that increases the position is refused.
    buy = [{"account": 0, "market": PERP, "side": 1, "kind": KIND_MARKET, "qty": 0.1}]
    states, evs, st0 = sim.run(p, 7, orders_at={6: buy})
    assert float(states[5].rules.position_limit) == pytest.approx(200000.0)
    assert all(pos(s, 0) == 5.0 for s in states)
    assert all(float(e.forced_reduce_notional) == 0.0 for e in evs)
    assert int(evs[6].order_reason[0]) == REJ_POSITION_LIMIT
    assert_conserved(p, st0, states[-1])


def test_schedule_steps_on_one_field_each_take_effect(sim):
    """A phased change (several rows on one rule field) applies every step at its own
    tick, not only the last row; the rows not yet due leave the field alone."""
    users = [{"name": "whale", "usdt": 100000.0, "position": 5.0, "leverage": 10}]
    steps = [(30.0, 400000.0), (50.0, 300000.0), (70.0, 200000.0)]
    rows = [
        {"announce_s": 10.0, "effective_s": t, "field": "position_limit", "value": v}
        for t, v in steps
    ]
    p = make(users, schedule=rows)
    states, evs, _ = sim.run(p, 9)
    lim = [float(s.rules.position_limit) for s in states]
    initial = float(p.rules.position_limit)
    # The tick starting at t s is tick t / 10 (dt = 10 s); its state carries the change.
    want = [initial] * 3 + [4e5] * 2 + [3e5] * 2 + [2e5] * 2
    np.testing.assert_allclose(lim, want, rtol=1e-6)
    assert [int(e.rules_changed) for e in evs] == [0, 0, 0, 1, 0, 1, 0, 1, 0]
