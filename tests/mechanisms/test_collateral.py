"""`jaxsim.mechanisms.collateral`: a liquidation's collateral sales (and their price
band), transfers between venues (and the margin they must leave), interest on debts and
negative USDT.

Testbed scenarios with injected orders through `jaxsim.step` (shape, price model and
tolerances: tests/support.py; the session-scoped `sim` fixture: tests/conftest.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from support import DT, SHOCK_T1, USD_TOL, assert_conserved, make, pos, usdt

from jaxsim.mechanisms import accounts
from jaxsim.types import (
    BID,
    KIND_LIMIT,
    KIND_TRANSFER_IN,
    KIND_TRANSFER_OUT,
    OK,
    PERP,
    REJ_INVALID,
    REJ_MARGIN,
    STABLE,
    STABLE_SPOT,
    USDT,
)


def test_collateral_liquidation_sells_stable(sim):
    # Cross long 0.45 BTC with 4,700 STABLE only (MB = 4,700 x 0.95 = 4,465). After the
    # -10% shock uPnL = -4,500 -> MB < 0 < MM: liquidated. The realized loss leaves USDT
    # negative, and the engine sells STABLE into the STABLE/USDT book to cover it.
    users = [{"name": "stable_long", "stable": 4700.0, "position": 0.45, "leverage": 20}]
    p = make(users, **{"exogenous.shocks": SHOCK_T1})
    states, evs, st0 = sim.run(p, 2)
    ev, st = evs[1], states[1]
    assert float(evs[0].collateral_sold[STABLE]) == 0.0
    sold = float(ev.collateral_sold[STABLE])
    assert sold > 0
    assert float(st.acct.bal[0, STABLE]) == pytest.approx(4700.0 - sold, abs=0.01)
    assert float(ev.collateral_sold_usdt) > 0
    # The internal STABLE price (last trade) and with it the STABLE index fall below 1.
    assert float(ev.collateral_px[0]) < 1.0
    assert float(ev.collateral_index[0]) < 1.0
    assert float(evs[0].collateral_px[0]) == 1.0
    assert pos(st, 0) == 0.0
    assert usdt(st, 0) >= -USD_TOL  # the deficit is covered
    assert int(ev.liq_accounts) >= 1
    assert_conserved(p, st0, st)


def test_collateral_sales_stop_at_the_sale_band(sim):
    """The collateral sales of a liquidation fill no lower than the tick's opening index x
    (1 - sale_band); what the band stops is carried and sold in later ticks.

    The stable_long of the test above on a thinner STABLE book (LP 1,000 per level at the
    touch) with sale_band 0.11%: the STABLE index (its internal book, weight 1) opens the
    shock tick at 1.0, so the floor is 1.0 x (1 - 0.0011) = 0.9989 and only the best bid
    level, 0.999, qualifies; unbanded, the ~4,500 USDT deficit would walk the bids down to
    ~0.996. The rest of the STABLE goes to the fund with the account's hole, and the fund
    sells if_unwind_per_h / 3600 x dt = 1/360 of it per tick from the next tick on."""
    users = [{"name": "stable_long", "stable": 4700.0, "position": 0.45, "leverage": 20}]
    p = make(
        users,
        **{
            "exogenous.shocks": SHOCK_T1,
            "markets.lp_depth": {"spot": 2.0, "perp": 3.0, "stable": 1000.0, "lst": 1.0},
            "rules.sale_band": 0.0011,
        },
    )
    ins = p.dims.insurance
    states, evs, st0 = sim.run(p, 3)
    px = np.asarray(accounts.level_prices(states[0], p, STABLE_SPOT))
    bids = np.asarray(states[0].book.qty[STABLE_SPOT, BID].sum(-1))
    in_band = bids[px >= 1.0 * (1 - 0.0011)]
    assert float(states[0].px.index[1]) == 1.0 and px[bids > 0].max() == pytest.approx(0.999)
    ev, st = evs[1], states[1]
    sold = float(ev.collateral_sold[STABLE])
    assert sold == pytest.approx(in_band.sum(), rel=1e-5)
    assert float(ev.collateral_px[0]) == pytest.approx(0.999)
    assert pos(st, 0) == 0.0 and usdt(st, 0) >= -USD_TOL
    # Carried: the unsold STABLE is held (here all of it by the fund, for the hole it paid).
    held = float(st.acct.bal[0, STABLE]) + float(st.acct.bal[ins, STABLE])
    assert held == pytest.approx(4700.0 - sold, abs=0.01)
    fund_stable = float(st.acct.bal[ins, STABLE])
    assert fund_stable > 0
    assert float(evs[2].collateral_sold[STABLE]) == pytest.approx(fund_stable / 360.0, rel=1e-4)
    assert float(evs[2].collateral_px[0]) >= 0.999 * (1 - 0.0011)
    assert_conserved(p, st0, states[2])


@pytest.mark.parametrize("delay_s", [30.0, 25.0, 0.0])
def test_transfers_arrive_after_delay(sim, delay_s):
    users = [{"name": "arb", "usdt": 10000.0, "external": {"usdt": 5000.0}}]
    p = make(users, **{"rules.withdrawal_delay_s": delay_s})
    moves = [
        {"account": 0, "market": USDT, "kind": KIND_TRANSFER_OUT, "qty": 1000.0},
        {"account": 0, "market": USDT, "kind": KIND_TRANSFER_IN, "qty": 2000.0},
        # Both transfer slots are taken: a third transfer is refused.
        {"account": 0, "market": USDT, "kind": KIND_TRANSFER_OUT, "qty": 1.0},
    ]
    states, evs, st0 = sim.run(p, 5, orders_at={0: moves})
    assert [int(r) for r in evs[0].order_reason[:3]] == [OK, OK, REJ_INVALID]
    ext = lambda st: float(st.acct.ext_bal[0, USDT])
    # Sent at time 0; it lands in the first tick starting at or after delay_s.
    n_ticks = int(np.ceil(delay_s / DT))
    for i, st in enumerate(states):
        arrived = i >= n_ticks
        assert usdt(st, 0) == (11000.0 if arrived else 9000.0), (i, delay_s)
        assert ext(st) == (4000.0 if arrived else 3000.0), (i, delay_s)
        assert_conserved(p, st0, st)  # in-flight amounts stay on the ledger


def test_isolated_withdrawal_keeps_resting_order_margin(sim):
    """An isolated account's wallet funds the margin of its resting perp orders when they
    fill, so a withdrawal may not take it below their initial margin.

    10,000 USDT, isolated at 10x, a resting bid for 1 BTC at 99,500: IM 9,950. Leaving
    5,000 (wallet 5,000 x 0.9999 = 4,999.5 < 9,950) is refused; leaving 40 (9,960 x
    0.9999 = 9,959.0 >= 9,950) goes through."""
    users = [{"name": "iso", "usdt": 10000.0, "mode": "isolated", "leverage": 10}]
    p = make(users)
    rows = [
        {"account": 0, "market": PERP, "side": 1, "kind": KIND_LIMIT, "qty": 1.0, "price": 99500.0},
        {"account": 0, "market": USDT, "kind": KIND_TRANSFER_OUT, "qty": 5000.0},
        {"account": 0, "market": USDT, "kind": KIND_TRANSFER_OUT, "qty": 40.0},
    ]
    states, evs, st0 = sim.run(p, 1, orders_at={0: rows})
    assert [int(r) for r in evs[0].order_reason[:3]] == [OK, REJ_MARGIN, OK]
    assert usdt(states[0], 0) == pytest.approx(9960.0, abs=USD_TOL)
    assert_conserved(p, st0, states[0])


def test_interest_on_debts_and_negative_usdt(sim):
    """Debts and a negative USDT balance pay interest to the lender (the outside world) at
    each funding settlement, for the interval: owed x `rules.borrow_interest_8h` (default
    0.01%) x interval / 8 h. A negative balance is credit like a USDT loan, not free.

    The first settlement ends tick 0 (`first_funding_h` = 10 s); the interval is 8 h:
    - borrower, 1e7 USDT debt: 1e7 x 0.0001 = 1,000 USDT, its whole USDT balance;
    - overdrawn, USDT -200,000: 200,000 x 0.0001 = 20, USDT -200,020.
    The lender receives 1,020; nothing more until the next settlement 8 h later."""
    users = [
        {"name": "borrower", "usdt": 1000.0, "stable": 2.2e7, "debt": {"usdt": 1.0e7}},
        {"name": "overdrawn", "stable": 1.0e6},
    ]
    p = make(users, **{"first_funding_h": DT / 3600.0})
    st0 = sim.start(p)
    st0 = st0.replace(acct=st0.acct.replace(bal=st0.acct.bal.at[1, USDT].set(-2.0e5)))
    states, evs, _ = sim.run(p, 2, st=st0)
    assert [bool(e.funding_settled) for e in evs] == [True, False]
    out = p.dims.outside
    for st in states:
        assert usdt(st, 0) == pytest.approx(0.0, abs=USD_TOL)
        assert usdt(st, 1) == pytest.approx(-200020.0, abs=USD_TOL)
        assert usdt(st, out) - usdt(st0, out) == pytest.approx(1020.0, abs=0.07)
        assert float(st.acct.debt[0, USDT]) == 1.0e7  # paid in USDT, the debt unchanged
    assert int(evs[0].liq_accounts) == 0
    assert_conserved(p, st0, states[-1])
