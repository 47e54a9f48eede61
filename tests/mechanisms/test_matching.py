"""`jaxsim.mechanisms.matching` (with the maker slots of `accounts`): FIFO queue priority
and maker credit, fees, maker slots taken and freed, cancels and their refunds (one
account's, or a masked set's in one pass).

Testbed scenarios with injected orders through `jaxsim.step` (shape, price model and
tolerances: tests/support.py; the session-scoped `sim` fixture: tests/conftest.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from support import POS_TOL, USD_TOL, assert_conserved, make, pos, usdt

from jaxsim.mechanisms import accounts
from jaxsim.types import (
    BASE,
    BID,
    KIND_CANCEL,
    KIND_LIMIT,
    KIND_MARKET,
    OK,
    PERP,
    REJ_BALANCE,
    REJ_MARGIN,
    REJ_QUEUE_FULL,
    SPOT,
    STABLE,
    STABLE_SPOT,
)


def test_fifo_queue_priority(sim):
    users = [{"name": f"u{i}", "usdt": 100000.0} for i in range(3)]
    p = make(users)
    px = 100000.0  # inside the LP spread (bids <= 99,950, asks >= 100,050): an empty level
    rest = [
        {"account": 1, "market": PERP, "side": 1, "kind": KIND_LIMIT, "qty": 0.3, "price": px},
        {"account": 0, "market": PERP, "side": 1, "kind": KIND_LIMIT, "qty": 0.3, "price": px},
    ]
    sell = [{"account": 2, "market": PERP, "side": -1, "kind": KIND_MARKET, "qty": 0.4}]
    states, evs, st0 = sim.run(p, 2, orders_at={0: rest, 1: sell})
    assert [int(r) for r in evs[0].order_reason[:2]] == [OK, OK]
    st, ev = states[1], evs[1]
    # Account 1 was first in the queue: it fills its 0.3, account 0 gets the other 0.1.
    assert pos(st, 1) == pytest.approx(0.3, abs=POS_TOL)
    assert pos(st, 0) == pytest.approx(0.1, abs=POS_TOL)
    assert pos(st, 2) == pytest.approx(-0.4, abs=POS_TOL)
    assert float(ev.order_avg_px[0]) == pytest.approx(px, abs=0.05)
    lvl = int(round(px / 50.0)) - int(st.book.origin[PERP])
    q = np.asarray(accounts.book_by_account(st, p)[0][PERP, BID, lvl])
    assert q[1] == pytest.approx(0.0, abs=POS_TOL) and q[0] == pytest.approx(0.2, abs=POS_TOL)
    assert_conserved(p, st0, st)
    # Fees per account (maker 0.02%, taker 0.05%): the makers pay on their own fills, the
    # taker on the whole 0.4 at 100,000; they add up to the exchange's total.
    paid = np.asarray(ev.fees_paid)
    assert paid[1] == pytest.approx(0.3 * px * 0.0002, rel=1e-4)  # 6 USDT
    assert paid[0] == pytest.approx(0.1 * px * 0.0002, rel=1e-4)  # 2 USDT
    assert paid[2] == pytest.approx(0.4 * px * 0.0005, rel=1e-4)  # 20 USDT
    assert paid.sum() == pytest.approx(float(ev.fees), rel=1e-5)
    assert float(np.asarray(evs[0].fees_paid)[:3].sum()) == 0.0  # resting costs nothing


def test_maker_slots_are_taken_and_freed(sim):
    """The books hold the LP and dims.n_makers - 1 = 3 user accounts at once. A fourth
    account's limit order that would rest is rejected whole (queue_full) while its
    marketable limit trades; a cancel or a complete fill frees the slot for the next one."""
    users = [{"name": f"u{i}", "usdt": 1.0e6, "leverage": 10} for i in range(5)]
    p = make(users)
    assert p.dims.n_makers == 4
    st0 = sim.start(p)
    _, ev0 = sim.tick(st0, p)
    best_bid, best_ask = float(ev0.best_bid[PERP]), float(ev0.best_ask[PERP])
    inside = best_bid + 50.0  # the LP leaves the centre level empty: a bid there is alone
    assert inside < best_ask
    low = best_bid - 500.0

    def bid(a, px, q=0.1):
        return {"account": a, "market": PERP, "side": 1, "kind": KIND_LIMIT, "qty": q, "price": px}

    sell = {"account": 4, "market": PERP, "side": -1, "kind": KIND_MARKET, "qty": 0.1}
    plan = {
        0: [bid(0, inside), bid(1, low), bid(2, low), bid(3, low)],
        # A marketable limit that fills completely needs no slot.
        1: [bid(3, best_ask + 500.0, 0.05)],
        2: [
            {"account": 1, "market": PERP, "side": 0, "kind": KIND_CANCEL},
            bid(3, low),
            bid(4, low),
        ],
        3: [sell, bid(4, low)],
    }
    states, evs, st0 = sim.run(p, 4, orders_at=plan, st=st0)
    reasons = [[int(r) for r in e.order_reason[: len(plan[i])]] for i, e in enumerate(evs)]
    assert reasons == [
        [OK, OK, OK, REJ_QUEUE_FULL],
        [OK],
        [OK, OK, REJ_QUEUE_FULL],
        [OK, OK],
    ]
    own = lambda st, a: np.asarray(accounts.own_orders(st, a, PERP)[BID])
    assert own(states[0], 3).sum() == 0.0  # the rejected order rests nowhere
    assert float(evs[1].order_filled[0]) == pytest.approx(0.05, abs=POS_TOL)
    assert own(states[1], 3).sum() == 0.0 and pos(states[1], 3) == pytest.approx(0.05, abs=POS_TOL)
    owners = lambda st: sorted(int(x) for x in np.asarray(st.book.owner))
    # The cancel freed account 1's slot; account 3 took it.
    assert owners(states[2]) == sorted([p.dims.lp, 0, 2, 3])
    assert own(states[2], 1).sum() == 0.0 and own(states[2], 3).sum() == pytest.approx(0.1)
    # The sale filled account 0's bid completely (first at the best level); account 4 rests.
    assert float(evs[3].order_filled[0]) == pytest.approx(0.1, abs=POS_TOL)
    assert pos(states[3], 0) == pytest.approx(0.1, abs=POS_TOL)
    assert owners(states[3]) == sorted([p.dims.lp, 2, 3, 4])
    qty, _ = accounts.book_by_account(states[3], p)
    per_acct = np.asarray(qty[PERP, BID]).sum(0)
    np.testing.assert_allclose(per_acct[[0, 1, 2, 3, 4]], [0.0, 0.0, 0.1, 0.1, 0.1], atol=POS_TOL)
    assert_conserved(p, st0, states[-1])


def test_cancel_refunds_spot_reserves(sim):
    users = [{"name": "spot", "usdt": 100000.0, "base": 2.0}]
    p = make(users)
    place = [
        {"account": 0, "market": SPOT, "side": 1, "kind": KIND_LIMIT, "qty": 0.5, "price": 99500.0},
        {
            "account": 0,
            "market": SPOT,
            "side": -1,
            "kind": KIND_LIMIT,
            "qty": 1.0,
            "price": 100500.0,
        },
    ]
    cancel = lambda side: [{"account": 0, "market": SPOT, "side": side, "kind": KIND_CANCEL}]
    plan = {0: place, 1: cancel(1), 2: cancel(-1), 3: place, 4: cancel(0)}
    states, evs, st0 = sim.run(p, 5, orders_at=plan)
    base = lambda st: float(st.acct.bal[0, BASE])
    # Resting buy reserves 0.5 x 99,500 = 49,750 USDT; resting sell reserves 1 BASE.
    assert [int(r) for r in evs[0].order_reason[:2]] == [OK, OK]
    assert usdt(states[0], 0) == 100000.0 - 49750.0
    assert base(states[0]) == 1.0
    # Cancel bids only: the USDT comes back exactly, the BASE stays reserved.
    assert usdt(states[1], 0) == 100000.0 and base(states[1]) == 1.0
    assert base(states[2]) == 2.0 and usdt(states[2], 0) == 100000.0
    # Both sides at once.
    assert usdt(states[3], 0) == 50250.0 and base(states[3]) == 1.0
    assert usdt(states[4], 0) == 100000.0 and base(states[4]) == 2.0
    assert float(np.asarray(accounts.own_orders(states[4], 0, SPOT)).sum()) == 0.0
    assert_conserved(p, st0, states[-1])


def test_cancel_accounts_is_cancel_all_in_turn(sim):
    """`matching.cancel_accounts` (one masked pass, as ADL uses it) leaves the books and
    balances `cancel_all` leaves account by account. u0, u1, u2 queue STABLE bids of 100
    at 0.998 in that order (behind the LP's); u0 also rests a STABLE ask of 50 at 1.003.
    Cancelling u0 and u2: u1 moves forward by u0's 100; u0 gets 99.8 USDT and 50 STABLE
    back, u2 99.8 USDT."""
    import jax

    from jaxsim.mechanisms import matching

    users = [{"name": f"u{i}", "usdt": 10000.0, "stable": 1000.0} for i in range(3)]
    p = make(users)
    bid = lambda a: {
        "account": a,
        "market": STABLE_SPOT,
        "side": 1,
        "kind": KIND_LIMIT,
        "qty": 100.0,
        "price": 0.998,
    }
    ask = {"account": 0, "market": STABLE_SPOT, "side": -1, "kind": KIND_LIMIT, "qty": 50.0}
    states, evs, _ = sim.run(p, 1, orders_at={0: [bid(0), bid(1), bid(2), {**ask, "price": 1.003}]})
    assert [int(r) for r in evs[0].order_reason] == [OK] * 4
    st = states[0]
    mask = np.zeros(p.dims.n_accounts, bool)
    mask[[0, 2]] = True
    got = jax.jit(matching.cancel_accounts)(st, p, mask)
    want = matching.cancel_all(matching.cancel_all(st, p, 0), p, 2)
    for x, y in ((got.book.qty, want.book.qty), (got.book.ahead, want.book.ahead)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6)
    np.testing.assert_allclose(np.asarray(got.acct.bal), np.asarray(want.acct.bal), atol=1e-6)
    lvl = int(round(0.998 / 0.0005)) - int(st.book.origin[STABLE_SPOT])
    ahead = lambda s: np.asarray(accounts.book_by_account(s, p)[1][STABLE_SPOT, BID, lvl])
    assert ahead(got)[1] == pytest.approx(ahead(st)[1] - 100.0, abs=1e-3)
    for a in (0, 2):
        assert float(np.asarray(accounts.own_orders(got, a, STABLE_SPOT)).sum()) == 0.0
    assert usdt(got, 0) == pytest.approx(usdt(st, 0) + 99.8, abs=1e-3)
    assert float(got.acct.bal[0, STABLE]) == pytest.approx(float(st.acct.bal[0, STABLE]) + 50.0)
    assert usdt(got, 2) == pytest.approx(usdt(st, 2) + 99.8, abs=1e-3)
    assert float(np.asarray(accounts.own_orders(got, 1, STABLE_SPOT)).sum()) == 100.0


def test_isolated_close_settles_the_whole_margin(sim):
    """Closing an isolated position in full settles its whole margin: a surplus goes to
    the wallet, a deficit is the insurance fund's (the position's loss is capped at its
    margin); no margin, negative or not, outlives the position.

    1 BTC long from 110,000 on 5,000 isolated margin (20x), 1,000 USDT in the wallet,
    sold at the LP's best bid 99,900: realized -10,100, margin -5,100. The fund pays
    5,100; the wallet pays only the taker fee, 99,900 x 0.05% = 49.95, and keeps 950.05.
    Before, -5,100 stayed in `iso_margin` of a flat account."""
    users = [
        {
            "name": "iso_under_water",
            "usdt": 1000.0,
            "position": 1.0,
            "entry": 110000.0,
            "mode": "isolated",
            "isolated_margin": 5000.0,
            "leverage": 20,
        }
    ]
    p = make(users)
    sell = {"account": 0, "market": PERP, "side": -1, "kind": KIND_MARKET, "qty": 1.0}
    states, evs, st0 = sim.run(p, 1, orders_at={0: [sell]})
    st = states[0]
    assert int(evs[0].order_reason[0]) == OK
    assert float(evs[0].order_avg_px[0]) == pytest.approx(99900.0, abs=0.01)
    assert pos(st, 0) == 0.0
    assert float(st.acct.iso_margin[0]) == 0.0
    assert usdt(st, 0) == pytest.approx(1000.0 - 49.95, abs=USD_TOL)
    fund = p.dims.insurance
    assert usdt(st, fund) - usdt(st0, fund) == pytest.approx(-5100.0, abs=USD_TOL)
    assert int(evs[0].liq_accounts) == 0
    assert_conserved(p, st0, st)


# Fee programme rates (docs/mechanics.md 6): Binance USD-M Futures Liquidity Provider
# Program, top tier maker rebate -0.005%; VIP9 taker fee 0.017%. The testbed's regular
# schedule (rules.fees) is maker 0.02%, taker 0.05%.
LPP_MAKER = -0.00005
VIP9_TAKER = 0.00017


def test_own_fee_rates_taker_and_rebate_maker(sim):
    """u0 (programme maker, -0.005%) and u1 (regular maker, 0.02%) bid 0.3 each at
    100,000, u0 first; u2 (own taker rate 0.017%) sells 0.4 into them. u0's 0.3 x 100,000
    earns a 1.5 USDT rebate, u1 pays 0.1 x 100,000 x 0.02% = 2 USDT, u2 pays 0.4 x 100,000
    x 0.017% = 6.8 USDT (not the regular 20). The fee account takes 6.8 + 2 - 1.5 = 7.3."""
    users = [
        {"name": "lpp_maker", "usdt": 100000.0, "fees": {"maker": LPP_MAKER}},
        {"name": "maker", "usdt": 100000.0},
        {"name": "vip_taker", "usdt": 100000.0, "fees": {"taker": VIP9_TAKER}},
    ]
    p = make(users)
    px = 100000.0  # inside the LP spread: the two bids are alone at their level
    rest = [
        {"account": 0, "market": PERP, "side": 1, "kind": KIND_LIMIT, "qty": 0.3, "price": px},
        {"account": 1, "market": PERP, "side": 1, "kind": KIND_LIMIT, "qty": 0.3, "price": px},
    ]
    sell = [{"account": 2, "market": PERP, "side": -1, "kind": KIND_MARKET, "qty": 0.4}]
    states, evs, st0 = sim.run(p, 2, orders_at={0: rest, 1: sell})
    assert [int(r) for r in evs[0].order_reason[:2]] == [OK, OK]
    st, ev = states[1], evs[1]
    assert int(ev.order_reason[0]) == OK
    assert float(ev.order_avg_px[0]) == pytest.approx(px, abs=0.05)
    assert [pos(st, a) for a in range(3)] == pytest.approx([0.3, 0.1, -0.4], abs=POS_TOL)
    paid = np.asarray(ev.fees_paid, np.float64)
    assert paid[0] == pytest.approx(-1.5, rel=1e-4)  # a rebate: negative fee
    assert paid[1] == pytest.approx(2.0, rel=1e-4)
    assert paid[2] == pytest.approx(6.8, rel=1e-4)
    assert float(ev.fees) == pytest.approx(7.3, rel=1e-4)
    assert paid.sum() == pytest.approx(7.3, rel=1e-4)
    # Opening positions realize nothing: the USDT balances move by the fees alone.
    for a, want in ((0, 1.5), (1, -2.0), (2, -6.8)):
        assert usdt(st, a) - usdt(st0, a) == pytest.approx(want, abs=0.02)
    fees = p.dims.fees
    assert usdt(st, fees) - usdt(st0, fees) == pytest.approx(7.3, abs=1e-3)
    assert_conserved(p, st0, st)


def test_own_fee_rates_pass_the_pre_trade_checks(sim):
    """The pre-trade checks charge the account's own taker rate. Spot: u0 (0.017%) and
    u1 (regular 0.05%) each hold 1,000.8 USDT and buy 0.01 BASE at the best ask 100,050:
    1,000.5 + the fee is 1,000.67 for u0 (accepted) and 1,001.00 for u1 (balance).
    Perp, isolated at 10x: u2 (0.017%) and u3 (regular) hold 1,003 USDT (1,002.90 of
    collateral after the 0.01% USDT haircut) and buy 0.1 at 100,050, moving 1,000.5 into
    the margin: the fee, 1.70, leaves u2 0.70; 5.00 would leave u3 -2.60 (margin)."""
    users = [
        {"name": "vip_spot", "usdt": 1000.8, "fees": {"taker": VIP9_TAKER}},
        {"name": "spot", "usdt": 1000.8},
        {"name": "vip_iso", "usdt": 1003.0, "mode": "isolated", "fees": {"taker": VIP9_TAKER}},
        {"name": "iso", "usdt": 1003.0, "mode": "isolated"},
    ]
    p = make(users)
    st0 = sim.start(p)
    st1, ev0 = sim.tick(st0, p)
    ask_spot, ask_perp = float(ev0.best_ask[SPOT]), float(ev0.best_ask[PERP])
    assert (ask_spot, ask_perp) == (100050.0, 100050.0)

    def buy(a, m, q):
        return {"account": a, "market": m, "side": 1, "kind": KIND_MARKET, "qty": q}

    rows = [buy(0, SPOT, 0.01), buy(1, SPOT, 0.01), buy(2, PERP, 0.1), buy(3, PERP, 0.1)]
    st2, ev = sim.tick(st1, p, rows)
    assert [int(r) for r in ev.order_reason] == [OK, REJ_BALANCE, OK, REJ_MARGIN]
    assert float(ev.order_avg_px[0]) == pytest.approx(ask_spot, abs=0.05)
    assert usdt(st2, 0) == pytest.approx(1000.8 - 1000.5 * (1 + VIP9_TAKER), abs=2e-3)
    assert usdt(st2, 2) == pytest.approx(1003.0 - 1000.5 - 10005.0 * VIP9_TAKER, abs=2e-3)
    assert float(st2.acct.iso_margin[2]) == pytest.approx(1000.5, abs=2e-3)
    assert_conserved(p, st0, st2)


def test_scheduled_fee_change_moves_the_regular_rate_only(sim):
    """A schedule moves rules.fees to maker 0.04%, taker 0.1% at tick 1. u0 (own rates:
    taker 0.017%, maker -0.005%) and u1 (regular) buy 0.1 perp from the LP at ticks 0 and
    2: u0 pays 0.017% both times; u1 pays 0.05%, then 0.1%; the LP (a system account)
    pays the regular maker rate, 0.02%, then 0.04%."""
    users = [
        {"name": "programme", "usdt": 100000.0, "fees": {"maker": LPP_MAKER, "taker": VIP9_TAKER}},
        {"name": "regular", "usdt": 100000.0},
    ]
    schedule = [
        {"effective_s": 10.0, "field": "maker_fee", "value": 0.0004},
        {"effective_s": 10.0, "field": "taker_fee", "value": 0.001},
    ]
    p = make(users, schedule=schedule)
    buy = lambda a: {"account": a, "market": PERP, "side": 1, "kind": KIND_MARKET, "qty": 0.1}
    plan = {0: [buy(0), buy(1)], 2: [buy(0), buy(1)]}
    states, evs, st0 = sim.run(p, 3, orders_at=plan)
    lp = p.dims.lp
    for t, (taker, maker) in ((0, (0.0005, 0.0002)), (2, (0.001, 0.0004))):
        ev = evs[t]
        assert [int(r) for r in ev.order_reason[:2]] == [OK, OK]
        notional = np.asarray(ev.order_filled[:2], np.float64) * np.asarray(
            ev.order_avg_px[:2], np.float64
        )
        assert notional == pytest.approx([10005.0, 10005.0], rel=1e-4)
        paid = np.asarray(ev.fees_paid, np.float64)
        assert paid[0] == pytest.approx(notional[0] * VIP9_TAKER, rel=1e-4)
        assert paid[1] == pytest.approx(notional[1] * taker, rel=1e-4)
        assert paid[lp] == pytest.approx(notional.sum() * maker, rel=1e-4)
        assert float(ev.fees) == pytest.approx(paid.sum(), rel=1e-5)
    assert float(states[2].rules.taker_fee) == pytest.approx(0.001)
    assert_conserved(p, st0, states[-1])
