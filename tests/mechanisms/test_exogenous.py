"""`jaxsim.mechanisms.exogenous`: the venues' price impact from the flow traded here.

Testbed scenarios with injected orders through `jaxsim.step` (shape, price model and
tolerances: tests/support.py; the session-scoped `sim` fixture: tests/conftest.py).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from support import DT, make

from jaxsim.types import KIND_MARKET, SPOT


@pytest.mark.parametrize("halflife_h", [0.0, 0.5])
def test_venue_impact_moves_the_venues_by_the_flow_traded_here(sim, halflife_h):
    """`venue_impact_bps_per_musdt: 10`: a market sale of N USDT at tick 1 moves the venues'
    BASE price (no diffusion in the testbed) by exp(-10e-10 N) from tick 2 on; with a
    half-life the offset decays by exp(-ln 2 dt / half-life) each tick after. No trade, no
    move (tick 1 itself, before the sale is seen)."""
    users = [{"name": "seller", "usdt": 1000.0, "base": 50.0}]
    over = {
        "exogenous.venue_impact_bps_per_musdt": 10.0,
        "exogenous.venue_impact_halflife_h": halflife_h,
    }
    p = make(users, **over)
    sell = [{"account": 0, "market": SPOT, "side": -1, "kind": KIND_MARKET, "qty": 5.0}]
    states, evs, st0 = sim.run(p, 5, orders_at={1: sell})
    p0 = float(st0.px.ext_common[0])
    n = float(evs[1].order_filled[0]) * float(evs[1].order_avg_px[0])
    assert n > 4e5
    ext = np.array([float(ev.ext_px[0]) for ev in evs])
    imp = np.array([float(ev.venue_impact) for ev in evs])
    assert ext[0] == pytest.approx(p0, rel=1e-6) and ext[1] == pytest.approx(p0, rel=1e-6)
    assert imp[0] == 0.0 and imp[1] == 0.0
    decay = math.exp(-math.log(2.0) * DT / (3600.0 * halflife_h)) if halflife_h else 1.0
    want = -10e-4 / 1e6 * n * decay ** np.arange(3)
    # The LP's requotes after the sale trade nothing (no taker): no further flow.
    np.testing.assert_allclose(imp[2:], want, rtol=1e-3)
    np.testing.assert_allclose(ext[2:], p0 * np.exp(want), rtol=1e-6)


def test_venue_impact_leaves_the_arbitrageurs_out(sim):
    """The cross-venue arbitrageur's purchases after a sale (ticks 2-4) are not the market's
    flow (its other leg is on the venues): the venues' offset stays the sale's while it
    buys (counted, they would lift it by ~0.06%)."""
    users = [
        {"name": "seller", "usdt": 1000.0, "base": 50.0},
        {"name": "arb", "usdt": 5.0e6},
    ]
    arb = {
        "account": "arb",
        "behaviour": "xvenue_arb",
        "market": "spot",
        "threshold": 0.001,
        "act_prob": 1.0,
        "speed": 0.5,
    }
    # The spot maker quotes around its own book, so the sale leaves the book under the venues.
    over = {
        "exogenous.venue_impact_bps_per_musdt": 10.0,
        "population.cohorts": [arb],
        "markets.lp_ref_weight.spot": 0.0,
    }
    p = make(users, **over)
    sell = [{"account": 0, "market": SPOT, "side": -1, "kind": KIND_MARKET, "qty": 30.0}]
    states, evs, _ = sim.run(p, 5, orders_at={1: sell})
    arb_vol = np.array([float(ev.arb_volume) for ev in evs])
    bg_vol = np.array([float(ev.bg_volume[SPOT]) for ev in evs])
    assert arb_vol[2:].sum() > 0.1  # it bought the dip
    np.testing.assert_allclose(arb_vol, bg_vol, atol=1e-6)  # the only background trader
    n = float(evs[1].order_filled[0]) * float(evs[1].order_avg_px[0])
    imp = np.array([float(ev.venue_impact) for ev in evs])
    np.testing.assert_allclose(imp[2:], -10e-4 / 1e6 * n, rtol=1e-3)
