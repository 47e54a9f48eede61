"""`jaxsim.mechanisms.index_mark`: the index as the shipped configs weight it (clip
reference of a two-leg index) and the staleness rule of the internal leg.

The shipped-config cases evaluate `index_prices` on a testbed state (tests/support.py)
carrying the shipped rules: at reset every venue is at its start price (BASE 100,000, so
LST redeems at 1.05 x 100,000 = 105,000). The staleness case runs the testbed through
`jaxsim.step` (the session-scoped `sim` fixture: tests/conftest.py).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from support import make

import jaxsim
from jaxsim.mechanisms import index_mark
from jaxsim.types import KIND_MARKET, LST_SPOT, STABLE_SPOT

STABLE_ROW, LST_ROW = 1, 2


@pytest.fixture(scope="module")
def testbed_state(sim):
    return sim.start(make([{"name": "agent", "usdt": 100000.0}]))


def _index(st, p, stable_px, lst_px, price_floor=None):
    """(3,) index of the shipped params `p` with the internal STABLE / LST books printing
    `stable_px` / `lst_px` (both legs fresh: the state is at tick 0)."""
    rules = p.rules
    if price_floor is not None:
        rules = rules.replace(price_floor=jnp.asarray(price_floor, rules.price_floor.dtype))
    last = st.px.last.at[STABLE_SPOT].set(stable_px).at[LST_SPOT].set(lst_px)
    st = st.replace(rules=rules, px=st.px.replace(last=last))
    return np.asarray(index_mark.index_prices(st, p), np.float64)


def test_shipped_two_leg_indices_clip_around_the_redemption_leg(testbed_state):
    st = testbed_state
    # collateral_depeg's fixed_index: STABLE 0.2 internal + 0.8 redemption (1.0), clip 3%,
    # floor 0.95. A 0.65 print is capped at 0.97 x 1.0: 0.2 x 0.97 + 0.8 x 1.0 = 0.994,
    # above the floor. Clipping around the two legs' midpoint (0.825) gave 0.83985, which
    # the 0.95 floor hid: the floor, not the index, did the fix's work.
    fixed = jaxsim.load_scenario("collateral_depeg", variant="fixed_index")
    assert float(fixed.rules.price_floor[STABLE_ROW]) == pytest.approx(0.95)
    assert _index(st, fixed, 0.65, 105000.0)[STABLE_ROW] == pytest.approx(0.994, abs=1e-6)
    no_floor = _index(st, fixed, 0.65, 105000.0, price_floor=[0.0, 0.0, 0.0])
    assert no_floor[STABLE_ROW] == pytest.approx(0.994, abs=1e-6)
    # The defaults' LST (calm): 0.2 internal + 0.8 redemption (105,000), clip 3%. A 60,000
    # print is capped at 0.97 x 105,000 = 101,850: 0.2 x 101,850 + 0.8 x 105,000 = 104,370
    # (the midpoint reference gave 83,985).
    calm = jaxsim.load_scenario("calm")
    assert _index(st, calm, 1.0, 60000.0)[LST_ROW] == pytest.approx(104370.0, abs=0.05)
    # collateral_depeg's own rules: STABLE is the internal book alone (its print is the
    # index); LST 0.25 internal + 0.75 redemption, clip 50%: 60,000 is within
    # [52,500, 157,500] of 105,000, so 0.25 x 60,000 + 0.75 x 105,000 = 93,750.
    depeg = jaxsim.load_scenario("collateral_depeg")
    idx = _index(st, depeg, 0.65, 60000.0)
    assert idx[STABLE_ROW] == pytest.approx(0.65, abs=1e-6)
    assert idx[LST_ROW] == pytest.approx(93750.0, abs=0.05)


def test_stale_internal_leg_drops_out_of_the_index(sim):
    """MECHANICS 8: an internal leg whose last trade is more than 5 minutes old gets weight
    0 and the other weights are renormalised; a new trade brings it back. The testbed's LST
    index is 0.2 internal + 0.8 redemption (lst_rate 1.05 x the BASE index, 105,000 with
    zero volatility); STABLE's is its internal book alone, which is kept when stale."""
    users = [{"name": "seller", "usdt": 100000.0, "stable": 400000.0, "lst": 10.0}]
    p = make(users)
    sell = [
        {"account": 0, "market": LST_SPOT, "side": -1, "kind": KIND_MARKET, "qty": 5.0},
        {"account": 0, "market": STABLE_SPOT, "side": -1, "kind": KIND_MARKET, "qty": 3e5},
    ]
    buy = [{"account": 0, "market": LST_SPOT, "side": 1, "kind": KIND_MARKET, "qty": 0.1}]
    states, _, _ = sim.run(p, 34, orders_at={0: sell, 33: buy})
    dt = float(p.dt)
    assert dt == 10.0

    def lst_index(st):
        return float(st.px.index[LST_ROW])

    def redemption(st):
        return 1.05 * float(st.px.index[0])

    def blend(st):
        # Inside the 3% band around the redemption leg, so unclipped.
        return 0.2 * float(st.px.last[LST_SPOT]) + 0.8 * redemption(st)

    assert redemption(states[0]) == pytest.approx(105000.0, abs=0.05)
    low = float(states[0].px.last[LST_SPOT])
    assert low < 105000.0 * (1 - 0.001)  # the sale printed below the redemption price
    assert low > 105000.0 * (1 - 0.03)
    # Traded at tick 0: live while (t - 0) x 10 s <= 300 s, i.e. through tick 30.
    for t in (1, 15, 30):
        assert lst_index(states[t]) == pytest.approx(blend(states[t]), abs=0.05), t
    assert lst_index(states[30]) < redemption(states[30]) - 10.0
    # From tick 31 the leg is stale: the index is the redemption leg alone.
    for t in (31, 32):
        assert lst_index(states[t]) == pytest.approx(redemption(states[t]), abs=0.05), t
    # A trade at tick 33 refreshes it.
    assert int(states[33].px.last_trade_t[LST_SPOT]) == 33
    assert lst_index(states[33]) == pytest.approx(blend(states[33]), abs=0.05)
    assert float(states[33].px.last[LST_SPOT]) != pytest.approx(redemption(states[33]), abs=1.0)
    # STABLE: no other leg to renormalise onto, so the stale print stays the index.
    st = states[32]
    assert float(st.px.last[STABLE_SPOT]) < 1.0
    assert float(st.px.index[STABLE_ROW]) == pytest.approx(float(st.px.last[STABLE_SPOT]))
