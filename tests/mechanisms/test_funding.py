"""`jaxsim.mechanisms.funding`: the funding rate's settlement at the interval.

Testbed scenarios with injected orders through `jaxsim.step` (shape, price model and
tolerances: tests/support.py; the session-scoped `sim` fixture: tests/conftest.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from support import assert_conserved, make, usdt

from jaxsim.mechanisms import funding


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


def test_auto_cap_follows_scheduled_tier_changes(sim):
    """`cap: auto` is computed from the rules in force (MECHANICS 1.1, 5), so a scheduled
    bracket change moves it. I = 1% per 8 h with a 1% clamp band and a zero premium (the
    symmetric LP book) give F = 1% per 8-h interval before the cap:

    - BTC table (tier 1: 125x, MMR 0.4%): cap 0.75 x 0.4% = 0.30%, F = 0.30%;
    - from 30 s, tiers [[0, 50x, 1%], [1M, 20x, 2.5%]]: cap 0.75 x 1% = 0.75%, F = 0.75%;
    - from 60 s, every tier capped at 20x: tier 1 at <= 25x gets 3%, F = 1% (uncapped).
    """
    rows = [
        {"effective_s": 30.0, "field": "tiers", "value": [[0, 50, 0.01], [1e6, 20, 0.025]]},
        {"effective_s": 60.0, "field": "max_leverage_cap", "value": 20.0},
    ]
    p = make(
        [{"name": "agent", "usdt": 100000.0}],
        schedule=rows,
        **{"rules.funding.interest_8h": 0.01, "rules.funding.clamp_8h": 0.01},
    )
    states, evs, _ = sim.run(p, 8)
    # The tick starting at 30 s (tick 3) and at 60 s (tick 6) carry the changes.
    # (a table swap writes 3 x 12 padded tier elements; the leverage cap lowers the one
    # tier of the table in force above 20x)
    assert [int(e.rules_changed) for e in evs] == [0, 0, 0, 36, 0, 0, 1, 0]
    rate = [float(s.px.funding_rate) for s in states]
    want = [0.003] * 3 + [0.0075] * 3 + [0.01] * 2
    np.testing.assert_allclose(rate, want, rtol=1e-6)
    cap = [float(funding.cap_in_force(s.rules)) for s in states]
    np.testing.assert_allclose(cap, [0.003] * 3 + [0.0075] * 3 + [0.03] * 2, rtol=1e-6)


def test_explicit_cap_does_not_follow_tier_changes(sim):
    # A cap set in the rules (0.5% here) stays in force through a bracket change.
    rows = [{"effective_s": 30.0, "field": "tiers", "value": [[0, 20, 0.025]]}]
    over = {
        "rules.funding.interest_8h": 0.01,
        "rules.funding.clamp_8h": 0.01,
        "rules.funding.cap": 0.005,
    }
    p = make([{"name": "agent", "usdt": 100000.0}], schedule=rows, **over)
    states, _, _ = sim.run(p, 5)
    np.testing.assert_allclose([float(s.px.funding_rate) for s in states], [0.005] * 5, rtol=1e-6)
