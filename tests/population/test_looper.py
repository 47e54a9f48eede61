"""`jaxsim.population.looper`: the collateral looper levering up and unwinding on a depeg.

Testbed scenarios with injected orders through `jaxsim.step` (shape, price model and
tolerances: tests/support.py; the session-scoped `sim` fixture: tests/conftest.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from support import assert_conserved, make

from jaxsim.types import KIND_MARKET, STABLE, USDT


def test_looper_levers_up_then_unwinds_on_a_depeg(sim):
    # A looper with 100k STABLE and 20k USDT debt (equity 80k) targets 2x = 160k STABLE:
    # each tick it borrows half the gap in USDT and buys STABLE with it. Then another user
    # dumps STABLE for several ticks (the LP quoting around its own book, thin depth);
    # once STABLE trades more than 3% under the external 1.0 the looper sells STABLE and
    # repays its debt from the proceeds, down to no debt.
    users = [
        {"name": "looper", "stable": 100000.0, "debt": {"usdt": 20000.0}},
        {"name": "dumper", "stable": 3000000.0},
    ]
    cohort = {
        "account": "looper", "behaviour": "looper", "market": "stable", "lev_target": 2.0,
        "threshold": 0.03, "exit": 0.005, "act_prob": 1.0, "speed": 0.5, "min_trade": 0.01,
    }  # fmt: skip
    p = make(
        users,
        **{
            "population.cohorts": [cohort],
            "markets.lp_ref_weight": {"spot": 1.0, "perp": 1.0, "stable": 0.0, "lst": 1.0},
            "markets.lp_depth": {"spot": 2.0, "perp": 3.0, "stable": 20000.0, "lst": 1.0},
        },
    )
    dump = {"account": 1, "market": 2, "side": -1, "kind": KIND_MARKET, "qty": 400000.0}
    states, evs, st0 = sim.run(p, 14, orders_at={i: [dump] for i in range(3, 12)})
    held = np.array([float(s.acct.bal[0, STABLE]) for s in states])
    debt = np.array([float(s.acct.debt[0, USDT]) for s in states])
    px = np.array([float(e.collateral_px[0]) for e in evs])
    # Levering up while STABLE is at par: debt and holding grow, towards 160k.
    assert debt[0] > 45000.0 and held[0] > 125000.0
    assert np.all(np.diff(held[:3]) > 0) and np.all(np.diff(debt[:3]) > 0)
    assert 150000.0 < held[2] < 161000.0
    # No unwinding while the discount is under 3%; selling and repaying once it is over.
    scared = px < 0.97
    first = int(np.argmax(scared))
    assert scared.any() and first >= 4
    assert held[first] == pytest.approx(held[first - 1], rel=1e-6)  # decided on the old price
    assert held[-1] < 0.5 * held[first]
    assert debt[-1] == pytest.approx(0.0, abs=1.0) and debt[first - 1] > 70000.0
    assert np.all(np.diff(debt[first:]) <= 1e-3)  # it never borrows while scared
    assert_conserved(p, st0, states[-1], debts_fixed=False)
