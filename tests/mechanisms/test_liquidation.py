"""`jaxsim.mechanisms.liquidation`: the cascade rounds within one tick.

Testbed scenarios with injected orders through `jaxsim.step` (shape, price model and
tolerances: tests/support.py; the session-scoped `sim` fixture: tests/conftest.py).
"""

from __future__ import annotations

import jax.numpy as jnp
import pytest
from support import SHOCK_T1, assert_conserved, make, mb_and_mm, pos

from jaxsim import margin as mg
from jaxsim.types import STABLE

# Cohort 1 (account 0): cross long 0.45 BTC, only 4,700 STABLE as collateral. A -10% shock
# puts it under maintenance (MB = 4,465 - 4,500 < MM = 162). Its liquidation realizes the
# loss in USDT and the engine sells STABLE into a thin STABLE/USDT book (400 per level,
# flat), which moves the STABLE index (internal book, weight 1 in the defaults).
# Cohort 2 (account 1): cross long 20 BTC whose collateral is STABLE, sized so that it is
# above maintenance after the shock at STABLE = 1 but below it once cohort 1's sale has
# printed. It can only be liquidated in the shock tick if the engine re-prices between
# cascade rounds.
THIN_STABLE = {
    "markets.lp_depth": {"spot": 2.0, "perp": 3.0, "stable": 400.0, "lst": 1.0},
    "markets.lp_decay_bps": {"spot": 50.0, "perp": 50.0, "stable": 10000.0, "lst": 40.0},
}
C2_POS = 20.0
C2_ENTRY = 120000.0  # a bad entry makes cohort 2 lean on a large STABLE balance


def _cascade_params(q_stable, rounds=3):
    users = [
        {"name": "c1", "stable": 4700.0, "position": 0.45, "leverage": 20},
        {"name": "c2", "stable": q_stable, "position": C2_POS, "entry": C2_ENTRY, "leverage": 20},
    ]
    return make(
        users, **THIN_STABLE, **{"exogenous.shocks": SHOCK_T1, "dims.cascade_rounds": rounds}
    )


@pytest.fixture(scope="module")
def cascade_q(sim):
    """STABLE collateral for cohort 2 that puts it between the two price states.

    Calibration run with cohort 2 over-collateralized: read the mark and the STABLE price
    after cohort 1's liquidation, then solve MB(STABLE = 1) - MM = +x and
    MB(STABLE = s1) - MM = -x with x = half the effect of the STABLE drop:
    MB(s) = Q s (1 - 5% haircut) + 20 (mark - 120,000).
    The only price that moves between round 0 and round 1 besides STABLE is the mark (by
    ~35 USDT: its `last` leg drops from 100,000 to the liquidation fill), so x must exceed
    20 x 35 = 700 USDT with room to spare.
    """
    p = _cascade_params(1e7)
    states, evs, _ = sim.run(p, 2)
    st = states[-1]
    assert pos(st, 0) == 0.0 and pos(st, 1) == C2_POS
    mark = float(st.px.mark)
    s1 = float(st.px.index[1])
    d = 1.0 - s1
    assert d > 0.003, "cohort 1's collateral sale should move the STABLE index"
    mm = float(mg.maint_margin(jnp.float32(C2_POS * mark), p.rules))
    upnl = C2_POS * (mark - C2_ENTRY)
    q = (mm - upnl) / (0.95 * (1.0 - d / 2))
    x = 0.95 * q * d / 2
    assert x > 2.0 * C2_POS * 35.0, (mark, s1, q, x)
    return q


def test_cascade_within_one_tick(sim, cascade_q):
    p = _cascade_params(cascade_q, rounds=3)
    states, evs, st0 = sim.run(p, 2)
    ev, st = evs[1], states[1]
    # Both cohorts are liquidated in the shock tick: cohort 1 fully (tier 1), cohort 2 at
    # least down to a lower tier (partial liquidation by tiers).
    assert pos(st, 0) == 0.0
    assert pos(st, 1) < C2_POS - 1.0
    assert int(ev.liq_accounts) >= 2
    assert float(ev.collateral_sold[STABLE]) > 0
    assert float(ev.collateral_px[0]) < 1.0
    assert pos(states[0], 1) == C2_POS  # nothing happened before the shock
    assert_conserved(p, st0, st)


def test_cascade_needs_rounds(sim, cascade_q):
    p = _cascade_params(cascade_q, rounds=1)
    states, evs, st0 = sim.run(p, 3)
    st = states[1]
    # One round: only cohort 1 goes in the shock tick...
    assert pos(st, 0) == 0.0
    assert pos(st, 1) == C2_POS
    # ...although cohort 2 is now under maintenance at the post-sale prices,
    mb, mm = mb_and_mm(st)
    assert mb[1] < mm[1]
    # ...and it is liquidated at the next tick's first round.
    assert pos(states[2], 1) < C2_POS - 1.0
    assert_conserved(p, st0, states[2])
