"""`jaxsim.mechanisms.funding`: the funding rate's settlement at the interval.

Testbed scenarios with injected orders through `jaxsim.step` (shape, price model and
tolerances: tests/support.py; the session-scoped `sim` fixture: tests/conftest.py).
"""

from __future__ import annotations

import pytest
from support import assert_conserved, make, usdt


def test_funding_settles_at_interval(sim):
    # 90-s interval (9 ticks), I = 1% per 8 h with a 1% clamp band so the rate is exactly I
    # when the premium is 0 (the symmetric LP book: impact bid 99,950 < index 100,000 <
    # impact ask 100,050). F = 1% x 90 / 28,800 = 3.125e-5 per interval.
    users = [
        {"name": "long", "usdt": 100000.0, "position": 10.0},
        {"name": "short", "usdt": 100000.0, "position": -6.0},
        {
            "name": "iso_short",
            "usdt": 10000.0,
            "position": -4.0,
            "mode": "isolated",
            "isolated_margin": 50000.0,
        },
    ]
    p = make(
        users,
        **{
            "rules.funding.interval_h": 90.0 / 3600.0,
            "rules.funding.interest_8h": 0.01,
            "rules.funding.clamp_8h": 0.01,
        },
    )
    states, evs, st0 = sim.run(p, 10)
    f = 0.01 * 90.0 / 28800.0
    settled = [bool(e.funding_settled) for e in evs]
    assert settled == [False] * 8 + [True, False]
    assert float(evs[8].funding_paid) == pytest.approx(f, rel=1e-5)
    # Nothing moves before the settlement.
    for a, b0 in ((0, 100000.0), (1, 100000.0)):
        assert usdt(states[7], a) == b0
    before, after = states[7], states[8]
    assert float(after.px.mark) == pytest.approx(100000.0, abs=0.05)
    # funding_i = -Q x mark x F: long pays 10 x 1e5 x F = 31.25; shorts get 18.75 and 12.5.
    d_long = usdt(after, 0) - usdt(before, 0)
    d_short = usdt(after, 1) - usdt(before, 1)
    d_iso = float(after.acct.iso_margin[2] - before.acct.iso_margin[2])
    assert d_long == pytest.approx(-31.25, abs=0.02)
    assert d_short == pytest.approx(18.75, abs=0.02)
    assert d_iso == pytest.approx(12.5, abs=0.02)
    assert usdt(after, 2) == usdt(before, 2)  # isolated funding goes to the position margin
    assert d_long + d_short + d_iso == pytest.approx(0.0, abs=0.03)
    # The exchange keeps nothing: the fee account and the fund do not change.
    for sys_acct in (p.dims.fees, p.dims.insurance, p.dims.lp, p.dims.outside):
        assert usdt(after, sys_acct) == usdt(before, sys_acct)
    assert_conserved(p, st0, states[-1])
