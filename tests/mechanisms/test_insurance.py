"""`jaxsim.mechanisms.insurance`: the insurance fund's takeover of bankrupt positions,
auto-deleveraging when the fund cannot absorb them, and the write-off of what it cannot
back (bad debt).

Testbed scenarios with injected orders through `jaxsim.step` (shape, price model and
tolerances: tests/support.py; the session-scoped `sim` fixture: tests/conftest.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from support import POS_TOL, SHOCK_T1, USD_TOL, assert_conserved, bankrupt_users, make, pos, usdt

from jaxsim.mechanisms import accounts
from jaxsim.types import BID, KIND_LIMIT, OK, STABLE_SPOT


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


def _adl_users():
    """The bankrupt 0.4 BTC long and two shorts of 0.5 at 100,000 (see
    test_adl_when_fund_cannot_absorb: ADL ranks high_lev, account 2, first)."""
    return bankrupt_users() + [
        {"name": "low_lev", "usdt": 100000.0, "position": -0.5, "leverage": 10},
        {"name": "high_lev", "usdt": 2000.0, "position": -0.5, "leverage": 50},
    ]


def test_fund_cap_counts_its_unrealized_loss(sim):
    """The fund's position cap is on its marked equity, not its USDT (MECHANICS 4.3/4.4).

    The fund holds 100,000 USDT and a 1 BTC long bought at 150,000 (the outside world is
    the short side); it does not unwind (if_unwind_per_h 0). After the -10% shock (mark
    ~90,009) its marked equity is 100,000 + 1 x (90,009 - 150,000) = ~40,009, so its cap
    is 1.0 x 40,009 / 90,009 = 0.44 BTC, below the 1 BTC it holds: no room, and the whole
    0.4 BTC goes to ADL at p_bk = 95,000.5 (the margin balance's 0.01% USDT haircut), and
    the fund gets the 0.2 USDT the closing left as clearance fee. Capped on its USDT
    (100,000 / 90,009 = 1.11 BTC) it would take over 0.11 BTC.
    """
    p = make(
        _adl_users(),
        **{
            "exogenous.shocks": SHOCK_T1,
            "accounts.insurance_fund": 100000.0,
            "rules.if_position_cap": 1.0,
            "rules.if_unwind_per_h": 0.0,
        },
    )
    ins, out = p.dims.insurance, p.dims.outside
    st0 = sim.start(p)
    a = st0.acct
    st0 = st0.replace(
        acct=a.replace(
            pos=a.pos.at[ins].set(1.0).at[out].set(-1.0),
            entry=a.entry.at[ins].set(150000.0).at[out].set(150000.0),
        )
    )
    states, evs, _ = sim.run(p, 2, st=st0)
    ev, st = evs[1], states[1]
    assert float(ev.if_takeover_notional) == 0.0
    assert float(ev.adl_notional) == pytest.approx(0.4 * 95000.5, rel=1e-5)
    assert pos(st, 2) == pytest.approx(-0.1, abs=POS_TOL)
    assert pos(st, ins) == 1.0 and usdt(st, ins) == pytest.approx(100000.2, abs=USD_TOL)
    # Its marked equity is reported beside its USDT: 100,000 + 1 x (100,000 - 150,000) =
    # 50,000 at the unshocked mark, then 100,000 + 1 x (mark - 150,000).
    assert float(evs[0].insurance_equity) == pytest.approx(50000.0, abs=USD_TOL)
    want = 100000.2 + (float(st.px.mark) - 150000.0)
    assert float(ev.insurance_equity) == pytest.approx(want, abs=USD_TOL)
    assert float(ev.insurance_fund) == pytest.approx(100000.2, abs=USD_TOL)
    assert_conserved(p, st0, st)


def test_fund_deficit_is_bad_debt_not_a_negative_fund(sim):
    """ADL off, a 1,000 USDT fund: it takes the whole bankrupt 0.4 BTC over at p_bk =
    95,000 (38,000) and unwinds it within the tick into bids at <= ~90,009, a loss L >=
    0.4 x (95,000 - 90,009) = ~1,996 plus the taker fee. It pays 1,000; the rest, L - 1,000,
    is bad debt, written off (its USDT ends at 0, not at 1,000 - L) and counted in the
    state's ledger. L from the events: the unwind's proceeds are its taker fee / 0.05%, so
    L = 38,000 - proceeds x (1 - 0.0005)."""
    p = make(
        bankrupt_users(),
        **{
            "exogenous.shocks": SHOCK_T1,
            "accounts.insurance_fund": 1000.0,
            "rules.adl": False,
            "rules.if_unwind_per_h": 3600.0,
        },
    )
    ins = p.dims.insurance
    states, evs, st0 = sim.run(p, 2)
    ev, st = evs[1], states[1]
    assert usdt(st, ins) == 0.0
    assert pos(st, ins) == pytest.approx(0.0, abs=POS_TOL)
    assert float(ev.if_takeover_notional) == pytest.approx(0.4 * 95000.0, rel=1e-5)
    proceeds = float(ev.fees_paid[ins]) / 0.0005
    loss = 0.4 * 95000.0 - proceeds * (1 - 0.0005)
    assert loss > 0.4 * (95000.0 - 90009.0)
    assert float(ev.bad_debt) == pytest.approx(loss - 1000.0, abs=0.5)
    assert float(st.bad_debt) == pytest.approx(float(ev.bad_debt), rel=1e-6)
    assert float(ev.insurance_draw) == pytest.approx(1000.0, abs=USD_TOL)
    assert float(ev.insurance_equity) == 0.0
    assert float(evs[0].bad_debt) == 0.0
    assert_conserved(p, st0, st)  # the audit's USDT ledger counts the write-off


def test_adl_cancels_the_counterparty_orders(sim):
    """ADL closes high_lev (account 2) against the bankrupt long and cancels its open
    orders (MECHANICS 4.4); low_lev (account 1), not deleveraged, keeps its own. Each
    rested a STABLE bid of 100 at 0.995 in tick 0 (reserving 99.5 USDT; STABLE does not
    move in the BASE shock). high_lev gets its reserve back: 2,000 + ADL PnL 0.4 x
    (100,000 - 95,000.5) = 3,999.8 USDT (p_bk at zero margin balance, the 0.01% USDT
    haircut included)."""
    p = make(
        _adl_users(),
        **{"exogenous.shocks": SHOCK_T1, "accounts.insurance_fund": 0.0},
    )
    bid = lambda a: {
        "account": a,
        "market": STABLE_SPOT,
        "side": 1,
        "kind": KIND_LIMIT,
        "qty": 100.0,
        "price": 0.995,
    }
    states, evs, st0 = sim.run(p, 2, orders_at={0: [bid(1), bid(2)]})
    assert [int(r) for r in evs[0].order_reason[:2]] == [OK, OK]
    own = lambda st, a: np.asarray(accounts.own_orders(st, a, STABLE_SPOT)[BID])
    assert own(states[0], 2).sum() == pytest.approx(100.0)
    ev, st = evs[1], states[1]
    assert int(ev.adl_count) == 1 and pos(st, 2) == pytest.approx(-0.1, abs=POS_TOL)
    assert own(st, 2).sum() == 0.0
    assert usdt(st, 2) == pytest.approx(3999.8, abs=USD_TOL)
    assert own(st, 1).sum() == pytest.approx(100.0)
    assert usdt(st, 1) == pytest.approx(100000.0 - 99.5, abs=USD_TOL)
    assert_conserved(p, st0, st)
