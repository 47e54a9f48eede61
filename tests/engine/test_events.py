"""`jaxsim.events`: what a tick's events report (the grid-edge flag).

Testbed scenarios with injected orders through `jaxsim.step` (shape, price model and
tolerances: tests/support.py; the session-scoped `sim` fixture: tests/conftest.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from support import make

from jaxsim.types import BID, KIND_MARKET, SPOT


def test_grid_edge_flags_a_sale_stopped_by_the_grid(sim):
    """A market sale larger than every bid on the spot grid fills what the grid holds and
    prints its last trade on the grid's lowest level: `grid_edge` flags that book and tick
    only. A small sale, and a tick without a spot trade, are not flagged."""
    users = [{"name": "seller", "usdt": 1000.0, "base": 5000.0}]
    p = make(users)
    sell = lambda q: [{"account": 0, "market": SPOT, "side": -1, "kind": KIND_MARKET, "qty": q}]
    st0 = sim.start(p)
    bids = float(st0.book.qty[SPOT, BID].sum())  # every resting bid on the spot grid
    states, evs, _ = sim.run(p, 3, orders_at={0: sell(0.01), 2: sell(2.0 * bids + 1.0)})
    edge = np.array([np.asarray(ev.grid_edge) for ev in evs])
    assert not edge[0].any() and float(evs[0].volume[SPOT]) > 0  # small sale, mid-grid
    assert not edge[1].any()  # no order: no trade to flag
    assert edge[2].tolist() == [True, False, False, False]
    st = states[2]
    lowest = float(st.book.origin[SPOT]) * float(p.markets.tick_size[SPOT])
    assert float(st.px.last[SPOT]) == pytest.approx(lowest)
    filled = float(evs[2].order_filled[0])
    assert 0 < filled < 2.0 * bids + 1.0  # the rest found no bid on the grid
    assert float(evs[2].order_unfilled[0]) == pytest.approx(2.0 * bids + 1.0 - filled, rel=1e-5)
