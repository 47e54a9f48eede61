"""`jaxsim.mechanisms.liquidation`: the cascade rounds within one tick.

Testbed scenarios with injected orders through `jaxsim.step` (shape, price model and
tolerances: tests/support.py; the session-scoped `sim` fixture: tests/conftest.py).
"""

from __future__ import annotations

import jax.numpy as jnp
import pytest
from support import POS_TOL, SHOCK_T1, USD_TOL, assert_conserved, make, mb_and_mm, pos, usdt

from jaxsim import margin as mg
from jaxsim.types import POLICY_LIQUIDATE, STABLE, STABLE_SPOT

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


def test_bankruptcy_price_at_zero_margin_balance(sim):
    """MECHANICS 3.4: the bankruptcy price is where the margin balance, haircuts applied, is
    zero. Cross long 0.4 BTC at 100,000 with 2,000 STABLE only (haircut 5%, STABLE index 1):
    MB = 2,000 x 0.95 + 0.4 (mark - 100,000), zero at p_bk = 100,000 - 1,900 / 0.4 = 95,250
    (unhaircut equity would give 100,000 - 2,000 / 0.4 = 95,000). After the -10% shock
    (mark ~90,009) p_bk is above every bid: the IOC fills nothing and the fund takes the
    0.4 BTC at 95,250, a takeover notional of 38,100.

    The account is left with USDT 0.4 x (95,250 - 100,000) = -1,900 against 2,000 STABLE:
    MB = 0, so no clearance fee. The collateral sale raises 1,900 x (1 + 0.05% taker fee)
    = 1,900.95 USDT at the STABLE book's best bid 0.999: 1,900.95 / 0.999 = 1,902.853
    STABLE sold; its proceeds after the fee, 1,900.95 x 0.9995 = 1,899.9995, leave USDT at
    -0.0005, which the fund covers with 0.0005 STABLE. The haircut cushion pays for the
    sale: the account keeps 2,000 - 1,902.853 - 0.0005 = 97.147 STABLE and the fund has no
    hole to fill (at 95,000 all 2,000 STABLE were sold and the fund paid the shortfall).
    """
    users = [{"name": "stable_long", "stable": 2000.0, "position": 0.4, "leverage": 20}]
    p = make(users, **{"exogenous.shocks": SHOCK_T1})
    states, evs, st0 = sim.run(p, 2)
    ev, st = evs[1], states[1]
    ins = p.dims.insurance
    assert float(evs[0].best_bid[STABLE_SPOT]) == pytest.approx(0.999, abs=1e-6)
    assert float(ev.if_takeover_notional) == pytest.approx(0.4 * 95250.0, rel=1e-6)
    assert float(st.acct.entry[ins]) == pytest.approx(95250.0, rel=1e-6)
    assert int(ev.adl_count) == 0
    assert pos(st, 0) == 0.0
    assert float(ev.collateral_sold[STABLE]) == pytest.approx(1900.95 / 0.999, abs=0.01)
    assert float(st.acct.bal[0, STABLE]) == pytest.approx(97.147, abs=0.01)
    assert usdt(st, 0) == pytest.approx(0.0, abs=USD_TOL)
    assert float(ev.bad_debt) == 0.0
    assert_conserved(p, st0, st)


def test_solvent_account_keeps_what_the_book_cannot_take(sim):
    """A solvent account (MB > 0 at mark, so p_bk better than mark) keeps the part of its
    cut the book did not take, for its next turn; nothing goes to the fund at p_bk (which
    would hand the fund that share of the account's margin balance).

    Cross long 10 BTC at 100,000 with 102,010.2 USDT: MB = 0.9999 x 102,010.2 + 10 (mark -
    100,000) = 102,000 + 10 (mark - 100,000), zero at p_bk = 100,000 - 102,000 / 10 =
    89,800 (whatever the mark). After the -10% shock (mark ~90,009): MB ~2,090 > 0, below
    MM(900k, tier 3) = 900,090 x 0.65% - 950 ~ 4,900. The cut to the top of tier 2 (~3.3
    BTC) meets bids only down to p_bk, ~1.3 BTC a level: the book takes part of it (at
    most, after further rounds, down to the then bankruptcy price of what is left, which
    the fills only lower). The rest stays with the account, solvent and still under
    maintenance: the tick's backlog. The next tick, with the book refilled, takes it again.

    The clearance fee is off: at 1.5% of the filled notional (against MM at 0.65%) it would
    take the whole margin balance at the first fill, and the account would be insolvent at
    its next turn (closed in full: the book first, the rest to the fund).
    """
    users = [{"name": "solvent", "usdt": 102010.2, "position": 10.0, "leverage": 20}]
    p = make(users, **{"exogenous.shocks": SHOCK_T1, "rules.fees.liquidation": 0.0})
    states, evs, st0 = sim.run(p, 3)
    ev, st = evs[1], states[1]
    ins = p.dims.insurance
    assert bool(ev.liq_mask[0])
    sold = 10.0 - pos(st, 0)
    assert 0.0 < sold < 10.0
    # Nothing was handed over: no takeover, no ADL, the fund holds no position.
    assert float(ev.if_takeover_notional) == 0.0
    assert int(ev.adl_count) == 0
    assert pos(st, ins) == 0.0
    # The liquidated notional is the book's fills, on average between p_bk and the mark.
    assert 89800.0 <= float(ev.liq_notional_long) / sold <= float(st.px.mark)
    mb, mm = mb_and_mm(st)
    assert 0.0 < mb[0] < mm[0]
    assert int(ev.liq_backlog) == 1
    # Re-checked the next tick.
    assert bool(evs[2].liq_mask[0]) and pos(states[2], 0) < pos(st, 0)
    assert float(evs[2].if_takeover_notional) == 0.0
    assert_conserved(p, st0, states[2])


def test_worst_margin_ratio_first_and_backlog(sim):
    """One cascade round of at most 4 accounts (`liq_per_round`) takes the 4 lowest margin
    ratios MB / MM, not the 4 lowest account indices; the other 4 are the tick's backlog.

    Eight cross longs of 0.4 BTC at 100,000 with W USDT each. After the -10% shock (mark
    ~90,009): MB = 0.9999 W + 0.4 (90,009 - 100,000) = 0.9999 W - 3,996.4, MM = 0.4% x
    36,004 = 144.0, all under maintenance:
      W  = 4,100  4,080  4,060  4,040 | 3,000  2,800  2,600  2,400
      MB = 103.2   83.2   63.2   43.2 |  -997 -1,197 -1,397 -1,597
      MB/MM 0.72   0.58   0.44   0.30 | -6.9   -8.3   -9.7  -11.1
    The insolvent accounts 4-7 go first (closed in full, the fund taking what the book did
    not); accounts 0-3 wait, and the next tick's round takes them.
    """
    w = [4100.0, 4080.0, 4060.0, 4040.0, 3000.0, 2800.0, 2600.0, 2400.0]
    users = [{"name": f"u{i}", "usdt": x, "position": 0.4, "leverage": 20} for i, x in enumerate(w)]
    # The same shape as test_cascade_needs_rounds (one round): no new compile.
    p = make(users, **{"exogenous.shocks": SHOCK_T1, "dims.cascade_rounds": 1})
    assert p.dims.liq_per_round == 4
    states, evs, st0 = sim.run(p, 3)
    ev, st = evs[1], states[1]
    assert [pos(st, a) for a in range(8)] == pytest.approx([0.4] * 4 + [0.0] * 4, abs=POS_TOL)
    assert [bool(x) for x in ev.liq_mask[:8]] == [False] * 4 + [True] * 4
    mb, mm = mb_and_mm(st)
    assert all(mb[a] < mm[a] for a in range(4))
    assert int(ev.liq_backlog) == 4
    assert int(evs[0].liq_backlog) == 0
    assert [bool(x) for x in evs[2].liq_mask[:8]] == [True] * 4 + [False] * 4
    assert_conserved(p, st0, states[2])


def test_forced_liquidation_of_a_solvent_account_stays_queued(sim):
    """A rule change's `liquidate` policy closes the position in full; a solvent account
    keeps what the book cannot take and stays queued (and in the backlog) until it is
    closed, tick after tick as the LP refills; the fund takes nothing.

    Cross long 60 BTC with 2,000,000 USDT; the position limit drops to 200,000 USDT at 50 s
    (tick 5). MB = 0.9999 x 2,000,000 + 60 (mark - 100,000) ~ 1,998,300 at mark ~99,975:
    p_bk = 99,975 - 1,998,300 / 60 ~ 66,670, far below every bid, so the IOC takes the
    whole book (~20 BTC) and the rest waits. Handing it to the fund at p_bk, as before,
    gave the fund ~40 x (99,975 - 66,670) ~ 1.3M USDT of the account's margin.
    """
    rows = [
        {
            "announce_s": 20.0,
            "effective_s": 50.0,
            "field": "position_limit",
            "value": 200000.0,
            "policy": "liquidate",
        }
    ]
    users = [{"name": "whale", "usdt": 2e6, "position": 60.0, "leverage": 10}]
    p = make(users, schedule=rows)
    states, evs, st0 = sim.run(p, 10)
    ins = p.dims.insurance
    assert all(pos(states[i], 0) == 60.0 for i in range(5))
    st, ev = states[5], evs[5]
    assert 0.0 < pos(st, 0) < 60.0
    assert int(st.enforce[0]) == POLICY_LIQUIDATE
    assert int(ev.liq_backlog) == 1
    left = [pos(s, 0) for s in states[5:]]
    assert all(b < a for a, b in zip(left, left[1:], strict=False) if a > 0)
    assert left[-1] == 0.0 and int(states[-1].enforce[0]) == 0
    assert int(evs[-1].liq_backlog) == 0
    assert sum(float(e.if_takeover_notional) for e in evs) == 0.0
    assert sum(int(e.adl_count) for e in evs) == 0
    assert pos(states[-1], ins) == 0.0
    assert_conserved(p, st0, states[-1])
