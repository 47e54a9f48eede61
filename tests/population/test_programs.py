"""`jaxsim.population.programs`: scripted order-flow programs (carry, limit price).

Testbed scenarios with injected orders through `jaxsim.step` (shape, price model and
tolerances: tests/support.py; the session-scoped `sim` fixture: tests/conftest.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from support import DT, assert_conserved, make

from jaxsim.types import BASE, BID, KIND_MARKET, SPOT


def test_program_carry_sends_the_unfilled_schedule_again(sim):
    """Two sellers with the same schedule (0.4 BASE over ticks 0-3) and no BASE until each
    buys 1 BASE at tick 2: every slice before is rejected (balance). At tick 3 the carrying
    program sends what is due by then, 0.4, and the other only its slice, 0.1; nothing
    after the window."""
    users = [{"name": "carry", "usdt": 1.0e6}, {"name": "drop", "usdt": 1.0e6}]
    row = dict(market="spot", side="sell", start_s=0.0, duration_s=4 * DT, qty=0.4)
    progs = [dict(row, account="carry", carry=True), dict(row, account="drop")]
    p = make(users, **{"population.programs": progs})
    assert bool(p.pop.prog_carry[0]) and not bool(p.pop.prog_carry[1])
    buy = [
        {"account": a, "market": SPOT, "side": 1, "kind": KIND_MARKET, "qty": 1.0} for a in (0, 1)
    ]
    states, evs, st0 = sim.run(p, 6, orders_at={2: buy})
    done = np.array([np.asarray(ev.prog_filled)[:2] for ev in evs])
    np.testing.assert_array_equal(done[:3], 0.0)
    np.testing.assert_allclose(done[3], [0.4, 0.1], rtol=1e-5)
    np.testing.assert_array_equal(done[4:], 0.0)
    np.testing.assert_allclose(np.asarray(states[-1].pop.prog_done[:2]), [0.4, 0.1], rtol=1e-5)
    assert float(states[-1].acct.bal[0, BASE]) == pytest.approx(0.6, rel=1e-5)
    assert float(states[-1].acct.bal[1, BASE]) == pytest.approx(0.9, rel=1e-5)
    assert_conserved(p, st0, states[-1])


def test_program_limit_stops_a_sale_at_its_price(sim):
    """A one-tick sale of twice every bid on the spot grid with `limit_pct: 0.5` trades
    down to 0.5% under the venues' price (inside the 32-level grid) and no further: its last trade is the lowest level at or
    above that price, the bids under it stay; the same sale without a limit sweeps the
    grid (tests/engine/test_events.py::test_grid_edge_flags_a_sale_stopped_by_the_grid)."""
    users = [{"name": "seller", "usdt": 1000.0, "base": 5000.0}]
    p0 = make(users)
    qty = 2.0 * float(sim.start(p0).book.qty[SPOT, BID].sum()) + 1.0
    prog = dict(account="seller", market="spot", side="sell", start_s=DT, duration_s=DT)
    p = make(users, **{"population.programs": [dict(prog, qty=qty, limit_pct=0.5)]})
    states, evs, st0 = sim.run(p, 3)
    ev, st = evs[1], states[1]
    limit = 0.995 * float(ev.ext_px[0])
    assert limit > float(st0.book.origin[SPOT]) * float(p.markets.tick_size[SPOT])
    tick = float(p.markets.tick_size[SPOT])
    filled = float(ev.prog_filled[0])
    assert 0 < filled < qty
    last = float(st.px.last[SPOT])
    assert limit <= last < limit + tick
    assert not bool(ev.grid_edge[SPOT])
    px = (float(st.book.origin[SPOT]) + np.arange(p.dims.n_levels)) * tick
    bids = np.asarray(st.book.qty[SPOT, BID]).sum(-1)
    assert bids[px < limit].sum() > 0 and bids[px >= limit].sum() == 0
    assert float(evs[0].prog_filled[0]) == 0 and float(evs[2].prog_filled[0]) == 0
    assert_conserved(p, st0, states[-1])
