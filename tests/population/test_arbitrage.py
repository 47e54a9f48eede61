"""`jaxsim.population.arbitrage`: the bidding cross-venue arbitrageur.

Testbed scenarios with injected orders through `jaxsim.step` (shape, price model and
tolerances: tests/support.py; the session-scoped `sim` fixture: tests/conftest.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from support import USD_TOL, assert_conserved, make, usdt

from jaxsim.mechanisms import accounts
from jaxsim.types import BID, KIND_MARKET, STABLE, USDT


def test_bidding_arb_rests_a_bid_and_brings_its_capital_on_a_discount(sim):
    # A bidding cross-venue arb (`bid: 1`, threshold 0.5%, speed 0.5) with 20k USDT on the
    # exchange and 1M on the other venues rests a bid at 0.995 (the external 1.0 less its
    # threshold, rounded down to the grid), topped up with half its free USDT each tick, and
    # leaves the 1M where it is while STABLE trades at par. A dumper then sells through the
    # bid: the arb sends for its 1M, which lands after the withdrawal delay (30 s = 3 ticks)
    # and goes into the bid. A -5% shock to STABLE's external price leaves the bid above the
    # new reservation price: it is cancelled.
    users = [
        {"name": "arb", "usdt": 20000.0, "external": {"usdt": 1.0e6}},
        {"name": "dumper", "stable": 3.0e6},
    ]
    cohort = {"account": "arb", "behaviour": "xvenue_arb", "market": "stable",
              "threshold": 0.005, "speed": 0.5, "bid": 1.0}  # fmt: skip
    p = make(
        users,
        **{
            "population.cohorts": [cohort],
            "rules.withdrawal_delay_s": 30.0,
            "markets.lp_ref_weight": {"spot": 1.0, "perp": 1.0, "stable": 0.0, "lst": 1.0},
            "markets.lp_depth": {"spot": 2.0, "perp": 3.0, "stable": 20000.0, "lst": 1.0},
            "exogenous.shocks": [
                {"start_s": 120.0, "duration_s": 10.0, "asset": "stable", "return_pct": -5.0}
            ],
        },
    )
    dump = {"account": 1, "market": STABLE, "side": -1, "kind": KIND_MARKET, "qty": 300000.0}
    states, evs, st0 = sim.run(p, 14, orders_at={3: [dump]})
    bids = lambda st: np.asarray(accounts.own_orders(st, 0, STABLE)[BID])
    lvl = lambda st: np.asarray(accounts.level_prices(st, p, STABLE))
    reserved = lambda st: float(np.sum(bids(st) * lvl(st)))
    ext = lambda st: float(st.acct.ext_bal[0, USDT])
    in_transit = lambda st: float(np.sum(st.acct.transit_amt[0]))

    def bid_px(st):
        nz = np.flatnonzero(bids(st))
        assert len(nz) == 1, nz
        return float(lvl(st)[nz[0]])

    # At par: one bid level at 0.995 (0.9945 after float32 rounding down), half the free
    # USDT added each tick; the capital abroad stays abroad.
    for i, st in enumerate(states[:3]):
        assert 0.9945 - 1e-6 <= bid_px(st) <= 0.995 + 1e-6
        assert usdt(st, 0) == pytest.approx(20000.0 * 0.5 ** (i + 1), rel=2e-3)
        assert usdt(st, 0) + reserved(st) == pytest.approx(20000.0, abs=USD_TOL)
        assert ext(st) == 1.0e6 and in_transit(st) == 0.0
    # The dump fills the whole bid (and the arb's top-up of that tick).
    assert float(evs[3].order_filled[0]) > 0 and bids(states[3]).sum() == 0.0
    assert float(states[3].acct.bal[0, STABLE]) >= bids(states[2]).sum()
    # STABLE now trades under 0.995: the 1M is sent for and lands 3 ticks later.
    assert ext(states[3]) == 1.0e6
    assert ext(states[4]) == 0.0 and in_transit(states[4]) >= 1.0e6
    landed = [i for i, st in enumerate(states) if usdt(st, 0) > 0.9e6]
    assert landed and landed[0] == 4 + 3
    # The next tick half of it bids at 0.995 again.
    assert 0.9945 - 1e-6 <= bid_px(states[8]) <= 0.995 + 1e-6
    assert reserved(states[8]) > 0.4e6
    # The shock (tick 12): the bid is cancelled, its USDT released, no new bid.
    assert bids(states[11]).sum() > 0 and bids(states[12]).sum() == 0.0
    assert usdt(states[12], 0) == pytest.approx(
        usdt(states[11], 0) + reserved(states[11]), rel=1e-5
    )
    assert bids(states[13]).sum() == 0.0
    assert_conserved(p, st0, states[-1])
