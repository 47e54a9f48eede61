"""`jaxsim.mechanisms.insurance`: the insurance fund's takeover of bankrupt positions and
auto-deleveraging when the fund cannot absorb them.

Testbed scenarios with injected orders through `jaxsim.step` (shape, price model and
tolerances: tests/support.py; the session-scoped `sim` fixture: tests/conftest.py).
"""

from __future__ import annotations

import pytest
from support import POS_TOL, SHOCK_T1, USD_TOL, assert_conserved, bankrupt_users, make, pos, usdt


def test_insurance_fund_pays_bankruptcy(sim):
    users = bankrupt_users() + [
        # Isolated twin: 2,000 isolated margin and 1,000 in the wallet that must stay untouched.
        {
            "name": "bust_iso",
            "usdt": 1000.0,
            "position": 0.4,
            "mode": "isolated",
            "isolated_margin": 2000.0,
            "leverage": 20,
        }
    ]
    # The fund unwinds its taken-over position within the tick (if_unwind_per_h = 3600).
    p = make(users, **{"exogenous.shocks": SHOCK_T1, "rules.if_unwind_per_h": 3600.0})
    states, evs, st0 = sim.run(p, 2)
    ev, st = evs[1], states[1]
    ins = p.dims.insurance
    assert pos(st, 0) == 0.0 and pos(st, 1) == 0.0
    # Bankrupt accounts end at zero, not negative.
    assert usdt(st, 0) == pytest.approx(0.0, abs=USD_TOL)
    assert float(st.acct.iso_margin[1]) == pytest.approx(0.0, abs=USD_TOL)
    # Isolated: the loss is capped at the isolated margin; the wallet keeps its 1,000.
    assert usdt(st, 1) == pytest.approx(1000.0, abs=USD_TOL)
    # The fund took 0.8 BTC at ~95,000 (cross 95,000.5 after the 0.01% USDT haircut,
    # isolated 95,000) and sold it at <= 90,000: it lost at least 0.8 x (95,000 - 90,000)
    # = 4,000, at most 0.8 x (95,000 - 88,000) + fees.
    assert float(ev.if_takeover_notional) == pytest.approx(0.4 * (95000.5 + 95000.0), rel=1e-6)
    draw = float(ev.insurance_draw)
    assert 4000.0 < draw < 0.8 * 7000.0 + 100.0
    assert usdt(st, ins) == pytest.approx(1e6 - draw, abs=1.0)
    assert pos(st, ins) == pytest.approx(0.0, abs=POS_TOL)
    assert float(ev.bad_debt) == 0.0
    assert int(ev.adl_count) == 0
    assert_conserved(p, st0, st)


@pytest.mark.parametrize(
    "fund, cap",
    [(0.0, 0.0), (1e6, 0.0), (0.0, 1.0)],
    ids=["empty_fund_no_cap", "cap_zero", "empty_fund"],
)
def test_adl_when_fund_cannot_absorb(sim, fund, cap):
    users = bankrupt_users() + [
        # Two shorts of 0.5 at 100,000. At mark ~90,009 both have PnL% = 9.99%;
        # EffLev = 45,004 / equity: low_lev (100,000 USDT) ~0.43 -> score 0.043;
        # high_lev (2,000 USDT) ~18 -> score 1.8. high_lev sits at the higher account
        # index, so picking by index would choose low_lev.
        {"name": "low_lev", "usdt": 100000.0, "position": -0.5, "leverage": 10},
        {"name": "high_lev", "usdt": 2000.0, "position": -0.5, "leverage": 50},
    ]
    p = make(
        users,
        **{
            "exogenous.shocks": SHOCK_T1,
            "accounts.insurance_fund": fund,
            "rules.if_position_cap": cap,
        },
    )
    states, evs, st0 = sim.run(p, 2)
    ev, st = evs[1], states[1]
    assert int(ev.adl_count) == 1
    # The 0.4 BTC goes to the top-ranked short only, at the bankruptcy price 95,000.5 (no
    # fee): its realized PnL is 0.4 x (100,000 - 95,000.5) = 1,999.8.
    assert pos(st, 2) == pytest.approx(-0.1, abs=POS_TOL)
    assert usdt(st, 2) == pytest.approx(2000.0 + 1999.8, abs=USD_TOL)
    assert float(st.acct.entry[2]) == pytest.approx(100000.0, abs=0.05)
    assert pos(st, 1) == -0.5
    assert usdt(st, 1) == pytest.approx(100000.0, abs=USD_TOL)
    assert float(ev.adl_notional) == pytest.approx(0.4 * 95000.5, rel=1e-5)
    # The bankrupt account is closed at zero and the fund pays nothing: it only gets the
    # 0.2 USDT the closing left (MB 0.2 x 0.9999) as clearance fee.
    assert pos(st, 0) == 0.0
    assert usdt(st, 0) == pytest.approx(0.0, abs=USD_TOL)
    assert usdt(st, p.dims.insurance) == pytest.approx(fund + 0.2, abs=USD_TOL)
    assert pos(st, p.dims.insurance) == 0.0
    assert_conserved(p, st0, st)
