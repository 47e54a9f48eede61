"""`jaxsim.mechanisms.index_mark`: the index as the shipped configs weight it (clip
reference of a two-leg index).

The cases evaluate `index_prices` on a testbed state (tests/support.py) carrying the
shipped rules: at reset every venue is at its start price (BASE 100,000, so LST redeems at
1.05 x 100,000 = 105,000).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from support import make

import jaxsim
from jaxsim.mechanisms import index_mark
from jaxsim.types import LST_SPOT, STABLE_SPOT

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
