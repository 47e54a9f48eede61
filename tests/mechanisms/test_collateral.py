"""`jaxsim.mechanisms.collateral`: a liquidation's collateral sales, transfers between
venues (and the margin they must leave), auto-exchange of negative USDT.

Testbed scenarios with injected orders through `jaxsim.step` (shape, price model and
tolerances: tests/support.py; the session-scoped `sim` fixture: tests/conftest.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from support import DT, SHOCK_T1, USD_TOL, assert_conserved, make, mb_and_mm, pos, usdt

from jaxsim.types import (
    KIND_LIMIT,
    KIND_MARKET,
    KIND_TRANSFER_IN,
    KIND_TRANSFER_OUT,
    OK,
    PERP,
    REJ_INVALID,
    REJ_MARGIN,
    STABLE,
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


def test_auto_exchange_covers_negative_usdt(sim):
    """MECHANICS 3.3 auto-exchange: USDT below -10,000 (`rules.auto_exchange_usdt`, the
    default) is brought back to zero by converting the account's collateral with the
    outside world at index less its haircut (STABLE: 1 x 0.95), the value the margin
    check already gives it, so the margin balance does not move.

    Both hold 200,000 STABLE and 1 BTC long and sell it at the LP's best bid 99,900 (fee
    99,900 x 0.05% = 49.95):
    - from 120,000: realized -20,100, USDT -20,149.95 < -10,000: 20,149.95 / 0.95 =
      21,210.474 STABLE are converted, USDT 0; MB 190,000 - 20,149.95 either way;
    - from 105,000: USDT -5,149.95 is within the threshold and stays."""
    users = [
        {"name": "deep", "stable": 200000.0, "position": 1.0, "entry": 120000.0},
        {"name": "shallow", "stable": 200000.0, "position": 1.0, "entry": 105000.0},
    ]
    p = make(users)
    sell = lambda a: {"account": a, "market": PERP, "side": -1, "kind": KIND_MARKET, "qty": 1.0}  # noqa: E731
    states, evs, st0 = sim.run(p, 1, orders_at={0: [sell(0), sell(1)]})
    st = states[0]
    assert [float(x) for x in evs[0].order_avg_px[:2]] == pytest.approx([99900.0, 99900.0])
    owed = 20100.0 + 49.95
    assert usdt(st, 0) == pytest.approx(0.0, abs=USD_TOL)
    assert float(st.acct.bal[0, STABLE]) == pytest.approx(200000.0 - owed / 0.95, abs=0.05)
    mb, _ = mb_and_mm(st)
    assert mb[0] == pytest.approx(190000.0 - owed, abs=0.1)
    assert usdt(st, 1) == pytest.approx(-5149.95, abs=USD_TOL)
    assert float(st.acct.bal[1, STABLE]) == 200000.0
    out = p.dims.outside
    assert float(st.acct.bal[out, STABLE] - st0.acct.bal[out, STABLE]) == pytest.approx(
        owed / 0.95, abs=0.05
    )
    assert_conserved(p, st0, st)
