"""Engine-level scenarios with injected orders through `jaxsim.step`.

All scenarios share one shape (12 accounts = 8 users + 4 system, 32 levels, 4 orders per
tick, 3 cascade rounds), so the jitted `step` compiles once for the module (a second time
only for the `cascade_rounds=1` comparison). Prices are deterministic: zero volatility, no
venue dispersion, LP depth not withdrawn on volatility; moves come from scripted shocks.
System balances are kept small (LP 1e7 USDT) so float32 audits resolve a few USDT.

Tolerances (float32): USDT balances ~1e5 -> 0.05; audit totals -> relative 2e-6 (about
25 USDT on the ~1.2e7 USDT ledger, 4 STABLE on ~2e6); positions -> 1e-5 BTC.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TESTBED

import jaxsim
from jaxsim import margin as mg
from jaxsim.mechanisms import accounts
from jaxsim.mechanisms.accounts import asset_prices
from jaxsim.types import (
    BASE,
    BID,
    KIND_CANCEL,
    KIND_LIMIT,
    KIND_MARKET,
    KIND_TRANSFER_IN,
    KIND_TRANSFER_OUT,
    OK,
    PERP,
    REJ_BALANCE,
    REJ_INVALID,
    REJ_LEVERAGE,
    REJ_MARGIN,
    REJ_OUT_OF_RANGE,
    REJ_POSITION_LIMIT,
    REJ_PRICE_BAND,
    REJ_QUEUE_FULL,
    REJ_SYSTEM,
    SPOT,
    STABLE,
    USDT,
    Orders,
)

N_ACCOUNTS = 12
DT = 10.0  # dt_s of the defaults
ZERO4 = {"spot": 0.0, "perp": 0.0, "stable": 0.0, "lst": 0.0}
BASE_OVERRIDES = {
    "dims.n_accounts": N_ACCOUNTS,
    "dims.n_levels": 32,
    "exogenous.vol_annual": {"base": 0.0, "stable": 0.0, "lst": 0.0},
    "exogenous.venue_dispersion": 0.0,
    "markets.lp_vol_withdraw": ZERO4,
    "accounts.lp": {"usdt": 1.0e7, "base": 100.0, "stable": 1.0e6, "lst": 100.0},
    "accounts.outside": {"usdt": 1.0e6, "base": 10.0, "stable": 1.0e6, "lst": 10.0},
}
# -10% on BASE during tick 1 (the tick starting at 10 s).
SHOCK_T1 = [{"start_s": 10.0, "duration_s": 10.0, "asset": "base", "return_pct": -10.0}]

USD_TOL = 0.05
POS_TOL = 1e-5


def make(users, **over):
    o = dict(BASE_OVERRIDES)
    o["accounts.users"] = users
    o.update(over)
    return jaxsim.load_scenario(TESTBED, overrides=o)


# Compile-time savings for the test suite only (LLVM's expensive passes off: ~40% faster
# compiles, same semantics); falls back to a plain compile if the backend refuses them.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


@pytest.fixture(scope="module")
def sim():
    """`step` compiled once per Dims (with `FAST_COMPILE`; a plain compile if the backend
    refuses the options) and shared by the module. `reset` called eagerly is compiled once
    per Dims by the engine itself."""

    class Sim:
        compiled: dict = {}

        def start(self, p):
            return jaxsim.reset(jax.random.PRNGKey(0), p)

        def _step(self, key, st, o, p):
            fn = self.compiled.get(p.dims)
            if fn is None:
                lowered = jax.jit(jaxsim.step).lower(key, st, o, p)
                try:
                    fn = lowered.compile(compiler_options=FAST_COMPILE)
                except Exception:  # noqa: BLE001 - option names are backend-specific
                    fn = lowered.compile()
                self.compiled[p.dims] = fn
            return fn(key, st, o, p)

        def tick(self, st, p, rows=()):
            o = orders(p, rows) if rows else jaxsim.no_orders(p)
            return self._step(jax.random.PRNGKey(int(st.t) + 1), st, o, p)

        def run(self, p, n, orders_at=None, st=None):
            """n ticks; returns (states after each tick, events of each tick, initial state)."""
            st0 = self.start(p) if st is None else st
            st, states, evs = st0, [], []
            for i in range(n):
                st, ev = self.tick(st, p, (orders_at or {}).get(i, ()))
                states.append(st)
                evs.append(ev)
            return states, evs, st0

    return Sim()


def orders(p, rows):
    """Orders pytree from a list of dicts (missing fields 0)."""
    k = p.dims.max_orders
    assert len(rows) <= k
    ints = ("account", "market", "side", "kind")
    cols = {
        f: np.zeros(k, np.int32 if f in ints else np.float32)
        for f in ("account", "market", "side", "kind", "qty", "price")
    }
    for i, r in enumerate(rows):
        for f, v in r.items():
            cols[f][i] = v
    return Orders(**{f: jnp.asarray(v) for f, v in cols.items()})


def assert_conserved(p, st0, st1, debts_fixed=True):
    """Ledger totals of `jaxsim.audit` unchanged; open interest balanced; total debt
    unchanged unless someone borrowed or repaid (`debts_fixed=False`)."""
    a0 = {k: np.asarray(v, np.float64) for k, v in jaxsim.audit(st0, p).items()}
    a1 = {k: np.asarray(v, np.float64) for k, v in jaxsim.audit(st1, p).items()}
    for k in ("usdt", "base", "stable", "lst"):
        np.testing.assert_allclose(a1[k], a0[k], rtol=2e-6, atol=1e-4, err_msg=k)
    assert a1["oi_long"] == pytest.approx(a1["oi_short"], abs=1e-4)
    if debts_fixed:
        np.testing.assert_allclose(a1["debt"], a0["debt"], atol=1e-4)


def usdt(st, a):
    return float(st.acct.bal[a, USDT])


def pos(st, a):
    return float(st.acct.pos[a])


def asset_px(st):
    return asset_prices(st.px)


def mb_and_mm(st):
    """Margin balance and maintenance margin of every account at the state's mark."""
    a = st.acct
    mb = mg.margin_balance(
        a.bal,
        a.debt,
        a.pos,
        a.entry,
        a.iso_margin,
        a.mode,
        asset_px(st),
        st.px.mark,
        st.rules.haircut,
    )
    mm = mg.maint_margin(jnp.abs(a.pos) * st.px.mark, st.rules)
    return np.asarray(mb, np.float64), np.asarray(mm, np.float64)


# ================================================================== cascade


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


# ================================================================== insurance fund / ADL


def _bankrupt_users():
    # 0.4 BTC long at 100,000 with 2,000 USDT (20x). After the -10% shock (mark ~90,009)
    # equity = 2,000 - 0.4 x 9,991 < 0: bankrupt. Bankruptcy price (equity + Q (p - mark)
    # = 0): p_bk = 100,000 - 2,000 / 0.4 = 95,000, above every bid, so the IOC at p_bk fills
    # nothing and the rest goes to the fund (or ADL) at 95,000.
    return [{"name": "bust_cross", "usdt": 2000.0, "position": 0.4, "leverage": 20}]


def test_eager_reset_compiles_once_per_dims():
    """`jaxsim.reset` outside a trace is one program per Params structure: a second call
    with other values (users' balances and positions, key) compiles nothing. (Run eagerly
    op by op, its loop over the markets compiled afresh at every call: 2-4 s each.)"""
    p1 = make(_bankrupt_users())
    p2 = make([{"name": "other", "usdt": 5000.0, "position": -0.1, "leverage": 10}])
    k1, k2 = jax.random.PRNGKey(1), jax.random.PRNGKey(2)
    jax.block_until_ready(jaxsim.reset(k1, p1))
    seen = []

    def listen(event, secs, **kw):
        seen.append(event)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        st = jax.block_until_ready(jaxsim.reset(k2, p2))
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    assert "/jax/core/compile/backend_compile_duration" not in seen, seen
    assert float(st.acct.pos[0]) == pytest.approx(-0.1)  # p2's values, not p1's


def test_insurance_fund_pays_bankruptcy(sim):
    users = _bankrupt_users() + [
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
    # The fund took 0.8 BTC at 95,000 (38,000 each) and sold it at <= 90,000: it lost at
    # least 0.8 x (95,000 - 90,000) = 4,000, at most 0.8 x (95,000 - 88,000) + fees.
    assert float(ev.if_takeover_notional) == pytest.approx(0.8 * 95000.0, rel=1e-5)
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
    users = _bankrupt_users() + [
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
    # The 0.4 BTC goes to the top-ranked short only, at the bankruptcy price 95,000 (no fee):
    # its realized PnL is 0.4 x (100,000 - 95,000) = 2,000.
    assert pos(st, 2) == pytest.approx(-0.1, abs=POS_TOL)
    assert usdt(st, 2) == pytest.approx(2000.0 + 2000.0, abs=USD_TOL)
    assert float(st.acct.entry[2]) == pytest.approx(100000.0, abs=0.05)
    assert pos(st, 1) == -0.5
    assert usdt(st, 1) == pytest.approx(100000.0, abs=USD_TOL)
    assert float(ev.adl_notional) == pytest.approx(0.4 * 95000.0, rel=1e-5)
    # The bankrupt account is closed at zero and the fund is not touched.
    assert pos(st, 0) == 0.0
    assert usdt(st, 0) == pytest.approx(0.0, abs=USD_TOL)
    assert usdt(st, p.dims.insurance) == pytest.approx(fund, abs=USD_TOL)
    assert pos(st, p.dims.insurance) == 0.0
    assert_conserved(p, st0, st)


# ================================================================== rule schedule


def _schedule_params(policy):
    users = [{"name": "whale", "usdt": 100000.0, "position": 5.0, "leverage": 10}]
    rows = [
        {
            "announce_s": 20.0,
            "effective_s": 50.0,
            "field": "position_limit",
            "value": 200000.0,
            "policy": policy,
        }
    ]
    return make(users, schedule=rows)


def test_schedule_next_change_countdown(sim):
    p = _schedule_params("grandfather")
    _, evs, _ = sim.run(p, 7)
    got = [float(e.next_change_s) for e in evs]
    # Events after ticks 0..6 (time 10..70 s): unannounced until 20 s, then seconds left to
    # 50 s, then -1 once the change took effect (in the tick starting at 50 s).
    assert got == [-1.0, 30.0, 20.0, 10.0, 0.0, -1.0, -1.0]
    assert [int(e.rules_changed) for e in evs] == [0, 0, 0, 0, 0, 1, 0]


def test_schedule_force_reduce(sim):
    p = _schedule_params("force_reduce")
    states, evs, st0 = sim.run(p, 7)
    for i in range(5):
        assert pos(states[i], 0) == 5.0
        assert float(evs[i].forced_reduce_notional) == 0.0
    ev, st = evs[5], states[5]
    assert float(st.rules.position_limit) == pytest.approx(200000.0)
    # 5 BTC (500k) cut to the 200k limit: ~3 BTC sold at ~99,950 = ~300k by market order.
    assert float(ev.forced_reduce_notional) == pytest.approx(3 * 99950.0, rel=0.01)
    assert pos(st, 0) == pytest.approx(2.0, rel=0.01)
    assert abs(pos(st, 0)) * float(st.px.mark) <= 200000.0 * (1 + 1e-4)
    assert float(ev.volume[PERP]) == pytest.approx(5.0 - pos(st, 0), abs=POS_TOL)
    assert_conserved(p, st0, states[-1])


def test_schedule_grandfather(sim):
    p = _schedule_params("grandfather")
    # After the change (tick 6), an order that increases the position is refused.
    buy = [{"account": 0, "market": PERP, "side": 1, "kind": KIND_MARKET, "qty": 0.1}]
    states, evs, st0 = sim.run(p, 7, orders_at={6: buy})
    assert float(states[5].rules.position_limit) == pytest.approx(200000.0)
    assert all(pos(s, 0) == 5.0 for s in states)
    assert all(float(e.forced_reduce_notional) == 0.0 for e in evs)
    assert int(evs[6].order_reason[0]) == REJ_POSITION_LIMIT
    assert_conserved(p, st0, states[-1])


def test_schedule_steps_on_one_field_each_take_effect(sim):
    """A phased change (several rows on one rule field) applies every step at its own
    tick, not only the last row; the rows not yet due leave the field alone."""
    users = [{"name": "whale", "usdt": 100000.0, "position": 5.0, "leverage": 10}]
    steps = [(30.0, 400000.0), (50.0, 300000.0), (70.0, 200000.0)]
    rows = [
        {"announce_s": 10.0, "effective_s": t, "field": "position_limit", "value": v}
        for t, v in steps
    ]
    p = make(users, schedule=rows)
    states, evs, _ = sim.run(p, 9)
    lim = [float(s.rules.position_limit) for s in states]
    initial = float(p.rules.position_limit)
    # The tick starting at t s is tick t / 10 (dt = 10 s); its state carries the change.
    want = [initial] * 3 + [4e5] * 2 + [3e5] * 2 + [2e5] * 2
    np.testing.assert_allclose(lim, want, rtol=1e-6)
    assert [int(e.rules_changed) for e in evs] == [0, 0, 0, 1, 0, 1, 0, 1, 0]


def _perp_depth_2pct(st, p) -> float:
    """USDT resting on the perp book within 2% of its mid, from the state's arrays."""
    q = np.asarray(st.book.qty[PERP], np.float64).sum(-1)  # (2, G)
    px = np.asarray(accounts.level_prices(st, p, PERP), np.float64)
    bid = px[q[0] > 0].max()
    ask = px[q[1] > 0].min()
    mid = 0.5 * (bid + ask)
    near = np.abs(px - mid) <= 0.02 * mid
    return float((q.sum(0) * px)[near].sum())


def test_depth_scaled_position_limit(sim):
    """`rules.depth_limit`: a position-increasing perp order may not take the position
    past mult x the perp book's depth within 2% of mid (both sides, USDT), never below
    the floor, never above `position_limit`; reducing orders are not held to it."""
    users = [
        {"name": "a", "usdt": 1.0e7, "leverage": 10},
        {"name": "b", "usdt": 1.0e7, "leverage": 10},
        {"name": "c", "usdt": 1.0e7, "position": 20.0, "leverage": 10},
    ]
    p_off = make(users)
    depth = _perp_depth_2pct(sim.start(p_off), p_off)
    assert depth > 0
    mark = 100000.0

    def reasons(mult, floor, *trades):
        """Reasons of (account, side, qty) market orders, each in its own first tick (an
        order's fills thin the book the next one is measured on)."""
        p = make(users, **{"rules.depth_limit": {"mult": mult, "band": 0.02, "floor": floor}})
        out = []
        for a, side, qty in trades:
            row = {"account": a, "market": PERP, "side": side, "kind": KIND_MARKET, "qty": qty}
            _, evs, _ = sim.run(p, 1, orders_at={0: [row]})
            out.append(int(evs[0].order_reason[0]))
        return out

    # Limit = 0.5 x depth: 1.2x that is refused (either side), 0.8x of it goes through;
    # c holds 20 long (2M, over every limit here), and selling 1 reduces it.
    lim = 0.5 * depth
    over, under = 1.2 * lim / mark, 0.8 * lim / mark
    trades = lambda q: [(0, 1, q), (1, -1, q), (2, -1, 1.0)]  # noqa: E731
    assert reasons(0.5, 0.0, *trades(over)) == [REJ_POSITION_LIMIT, REJ_POSITION_LIMIT, OK]
    assert reasons(0.5, 0.0, *trades(under)) == [OK, OK, OK]
    # The floor lifts the limit: with floor = 2 x (0.5 x depth) the same over-size passes.
    assert reasons(0.5, 2 * lim, *trades(over)) == [OK, OK, OK]
    # position_limit still caps it: 1.2 x lim is refused under a limit of lim.
    p_lim = {"rules.position_limit": lim}
    p = make(users, **p_lim, **{"rules.depth_limit": {"mult": 0.5, "band": 0.02, "floor": 4 * lim}})
    row = {"account": 0, "market": PERP, "side": 1, "kind": KIND_MARKET, "qty": over}
    _, evs, _ = sim.run(p, 1, orders_at={0: [row]})
    assert int(evs[0].order_reason[0]) == REJ_POSITION_LIMIT
    # Off (mult 0): only position_limit counts.
    assert reasons(0.0, 0.0, *trades(over)) == [OK, OK, OK]


# ================================================================== funding


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


# ================================================================== orders


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


def test_grid_edge_flags_a_sale_stopped_by_the_grid(sim):
    """A market sale larger than every bid on the spot grid fills what the grid holds and
    prints its last trade on the grid's lowest level: `grid_edge` flags that book and tick
    only. A small sale, and a tick without a spot trade, are not flagged."""
    users = [{"name": "seller", "usdt": 1000.0, "base": 5000.0}]
    p = make(users)
    sell = lambda q: [{"account": 0, "market": SPOT, "side": -1, "kind": KIND_MARKET, "qty": q}]
    st0 = sim.start(p)
    bids = float(st0.book.qty[SPOT, BID].sum())  # every resting bid on the spot grid
    states, evs, _ = sim.run(p, 3, orders_at={0: sell(0.01), 2: sell(2.0 * bids + 1.0)})
    edge = np.array([np.asarray(ev.grid_edge) for ev in evs])
    assert not edge[0].any() and float(evs[0].volume[SPOT]) > 0  # small sale, mid-grid
    assert not edge[1].any()  # no order: no trade to flag
    assert edge[2].tolist() == [True, False, False, False]
    st = states[2]
    lowest = float(st.book.origin[SPOT]) * float(p.markets.tick_size[SPOT])
    assert float(st.px.last[SPOT]) == pytest.approx(lowest)
    filled = float(evs[2].order_filled[0])
    assert 0 < filled < 2.0 * bids + 1.0  # the rest found no bid on the grid
    assert float(evs[2].order_unfilled[0]) == pytest.approx(2.0 * bids + 1.0 - filled, rel=1e-5)


def test_program_carry_sends_the_unfilled_schedule_again(sim):
    """Two sellers with the same schedule (0.4 BASE over ticks 0-3) and no BASE until each
    buys 1 BASE at tick 2: every slice before is rejected (balance). At tick 3 the carrying
    program sends what is due by then, 0.4, and the other only its slice, 0.1; nothing
    after the window."""
    users = [{"name": "carry", "usdt": 1.0e6}, {"name": "drop", "usdt": 1.0e6}]
    row = dict(market="spot", side="sell", start_s=0.0, duration_s=4 * DT, qty=0.4)
    progs = [dict(row, account="carry", carry=True), dict(row, account="drop")]
    p = make(users, **{"population.programs": progs})
    assert bool(p.pop.prog_carry[0]) and not bool(p.pop.prog_carry[1])
    buy = [
        {"account": a, "market": SPOT, "side": 1, "kind": KIND_MARKET, "qty": 1.0} for a in (0, 1)
    ]
    states, evs, st0 = sim.run(p, 6, orders_at={2: buy})
    done = np.array([np.asarray(ev.prog_filled)[:2] for ev in evs])
    np.testing.assert_array_equal(done[:3], 0.0)
    np.testing.assert_allclose(done[3], [0.4, 0.1], rtol=1e-5)
    np.testing.assert_array_equal(done[4:], 0.0)
    np.testing.assert_allclose(np.asarray(states[-1].pop.prog_done[:2]), [0.4, 0.1], rtol=1e-5)
    assert float(states[-1].acct.bal[0, BASE]) == pytest.approx(0.6, rel=1e-5)
    assert float(states[-1].acct.bal[1, BASE]) == pytest.approx(0.9, rel=1e-5)
    assert_conserved(p, st0, states[-1])


def test_program_limit_stops_a_sale_at_its_price(sim):
    """A one-tick sale of twice every bid on the spot grid with `limit_pct: 0.5` trades
    down to 0.5% under the venues' price (inside the 32-level grid) and no further: its last trade is the lowest level at or
    above that price, the bids under it stay; the same sale without a limit sweeps the
    grid (test_grid_edge_flags_a_sale_stopped_by_the_grid)."""
    users = [{"name": "seller", "usdt": 1000.0, "base": 5000.0}]
    p0 = make(users)
    qty = 2.0 * float(sim.start(p0).book.qty[SPOT, BID].sum()) + 1.0
    prog = dict(account="seller", market="spot", side="sell", start_s=DT, duration_s=DT)
    p = make(users, **{"population.programs": [dict(prog, qty=qty, limit_pct=0.5)]})
    states, evs, st0 = sim.run(p, 3)
    ev, st = evs[1], states[1]
    limit = 0.995 * float(ev.ext_px[0])
    assert limit > float(st0.book.origin[SPOT]) * float(p.markets.tick_size[SPOT])
    tick = float(p.markets.tick_size[SPOT])
    filled = float(ev.prog_filled[0])
    assert 0 < filled < qty
    last = float(st.px.last[SPOT])
    assert limit <= last < limit + tick
    assert not bool(ev.grid_edge[SPOT])
    px = (float(st.book.origin[SPOT]) + np.arange(p.dims.n_levels)) * tick
    bids = np.asarray(st.book.qty[SPOT, BID]).sum(-1)
    assert bids[px < limit].sum() > 0 and bids[px >= limit].sum() == 0
    assert float(evs[0].prog_filled[0]) == 0 and float(evs[2].prog_filled[0]) == 0
    assert_conserved(p, st0, states[-1])


@pytest.mark.parametrize("halflife_h", [0.0, 0.5])
def test_venue_impact_moves_the_venues_by_the_flow_traded_here(sim, halflife_h):
    """`venue_impact_bps_per_musdt: 10`: a market sale of N USDT at tick 1 moves the venues'
    BASE price (no diffusion in the testbed) by exp(-10e-10 N) from tick 2 on; with a
    half-life the offset decays by exp(-ln 2 dt / half-life) each tick after. No trade, no
    move (tick 1 itself, before the sale is seen)."""
    users = [{"name": "seller", "usdt": 1000.0, "base": 50.0}]
    over = {
        "exogenous.venue_impact_bps_per_musdt": 10.0,
        "exogenous.venue_impact_halflife_h": halflife_h,
    }
    p = make(users, **over)
    sell = [{"account": 0, "market": SPOT, "side": -1, "kind": KIND_MARKET, "qty": 5.0}]
    states, evs, st0 = sim.run(p, 5, orders_at={1: sell})
    p0 = float(st0.px.ext_common[0])
    n = float(evs[1].order_filled[0]) * float(evs[1].order_avg_px[0])
    assert n > 4e5
    ext = np.array([float(ev.ext_px[0]) for ev in evs])
    imp = np.array([float(ev.venue_impact) for ev in evs])
    assert ext[0] == pytest.approx(p0, rel=1e-6) and ext[1] == pytest.approx(p0, rel=1e-6)
    assert imp[0] == 0.0 and imp[1] == 0.0
    decay = math.exp(-math.log(2.0) * DT / (3600.0 * halflife_h)) if halflife_h else 1.0
    want = -10e-4 / 1e6 * n * decay ** np.arange(3)
    # The LP's requotes after the sale trade nothing (no taker): no further flow.
    np.testing.assert_allclose(imp[2:], want, rtol=1e-3)
    np.testing.assert_allclose(ext[2:], p0 * np.exp(want), rtol=1e-6)


def test_venue_impact_leaves_the_arbitrageurs_out(sim):
    """The cross-venue arbitrageur's purchases after a sale (ticks 2-4) are not the market's
    flow (its other leg is on the venues): the venues' offset stays the sale's while it
    buys (counted, they would lift it by ~0.06%)."""
    users = [
        {"name": "seller", "usdt": 1000.0, "base": 50.0},
        {"name": "arb", "usdt": 5.0e6},
    ]
    arb = {
        "account": "arb",
        "behaviour": "xvenue_arb",
        "market": "spot",
        "threshold": 0.001,
        "act_prob": 1.0,
        "speed": 0.5,
    }
    # The spot maker quotes around its own book, so the sale leaves the book under the venues.
    over = {
        "exogenous.venue_impact_bps_per_musdt": 10.0,
        "population.cohorts": [arb],
        "markets.lp_ref_weight.spot": 0.0,
    }
    p = make(users, **over)
    sell = [{"account": 0, "market": SPOT, "side": -1, "kind": KIND_MARKET, "qty": 30.0}]
    states, evs, _ = sim.run(p, 5, orders_at={1: sell})
    arb_vol = np.array([float(ev.arb_volume) for ev in evs])
    bg_vol = np.array([float(ev.bg_volume[SPOT]) for ev in evs])
    assert arb_vol[2:].sum() > 0.1  # it bought the dip
    np.testing.assert_allclose(arb_vol, bg_vol, atol=1e-6)  # the only background trader
    n = float(evs[1].order_filled[0]) * float(evs[1].order_avg_px[0])
    imp = np.array([float(ev.venue_impact) for ev in evs])
    np.testing.assert_allclose(imp[2:], -10e-4 / 1e6 * n, rtol=1e-3)


def test_reject_reasons(sim):
    users = [
        {"name": "poor", "usdt": 1000.0, "leverage": 10},
        {"name": "rich_125x", "usdt": 1000000.0, "leverage": 125},
    ]
    p = make(users, **{"rules.position_limit": 150000.0, "rules.price_band.perp": 0.001})
    nan = float("nan")
    t0 = [
        # 10 BASE ~ 1e6 USDT with 1,000 USDT.
        {"account": 0, "market": SPOT, "side": 1, "kind": KIND_MARKET, "qty": 10.0},
        # 1 BTC perp needs 10,000 initial margin at 10x.
        {"account": 0, "market": PERP, "side": 1, "kind": KIND_MARKET, "qty": 1.0},
        # 2 BTC = 200k notional > 150k position limit.
        {"account": 0, "market": PERP, "side": 1, "kind": KIND_MARKET, "qty": 2.0},
        # 0.6 BTC = 60k -> tier 2 allows 100x < the account's 125x.
        {"account": 1, "market": PERP, "side": 1, "kind": KIND_MARKET, "qty": 0.6},
    ]
    t1 = [
        # Band 0.1% of mark = 100 USDT: 99,500 is on the grid but outside the band.
        {
            "account": 0,
            "market": PERP,
            "side": 1,
            "kind": KIND_LIMIT,
            "qty": 0.001,
            "price": 99500.0,
        },
        # 50,000 is off the 32-level grid (99,200 .. 100,750).
        {
            "account": 0,
            "market": PERP,
            "side": 1,
            "kind": KIND_LIMIT,
            "qty": 0.001,
            "price": 50000.0,
        },
        {"account": 0, "market": PERP, "side": 1, "kind": KIND_MARKET, "qty": nan},
        # The LP is a system account.
        {"account": p.dims.lp, "market": PERP, "side": 1, "kind": KIND_MARKET, "qty": 0.1},
    ]
    t2 = [
        {
            "account": 0,
            "market": PERP,
            "side": 1,
            "kind": KIND_LIMIT,
            "qty": 0.0,
            "price": 100000.0,
        },
        {"account": 0, "market": PERP, "side": 0, "kind": KIND_MARKET, "qty": 0.1},
        {"account": 0, "market": 7, "side": 1, "kind": KIND_MARKET, "qty": 0.1},
        # A valid order still goes through after the rejects: 0.001 BTC needs 10 USDT.
        {"account": 0, "market": PERP, "side": 1, "kind": KIND_MARKET, "qty": 0.001},
    ]
    states, evs, st0 = sim.run(p, 3, orders_at={0: t0, 1: t1, 2: t2})
    reasons = [[int(r) for r in e.order_reason] for e in evs]
    assert reasons[0] == [REJ_BALANCE, REJ_MARGIN, REJ_POSITION_LIMIT, REJ_LEVERAGE]
    assert reasons[1] == [REJ_PRICE_BAND, REJ_OUT_OF_RANGE, REJ_INVALID, REJ_SYSTEM]
    assert reasons[2] == [REJ_INVALID, REJ_INVALID, REJ_INVALID, OK]
    # The per-reason histogram agrees; OK is not counted.
    hist = np.asarray(evs[0].rejects)
    for r in (REJ_BALANCE, REJ_MARGIN, REJ_POSITION_LIMIT, REJ_LEVERAGE):
        assert hist[r] == 1
    assert hist[OK] == 0 and hist.sum() == 4
    # Rejected orders move nothing; NaN does not leak into the events.
    for i in range(2):
        assert usdt(states[1], i) == usdt(st0, i)
        assert pos(states[1], i) == 0.0
    assert float(evs[1].order_unfilled[2]) == 0.0
    assert np.isfinite(np.asarray(evs[1].order_filled)).all()
    assert pos(states[2], 0) == pytest.approx(0.001, abs=1e-7)
    assert_conserved(p, st0, states[-1])


# ================================================================== collateral liquidation


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


# ================================================================== collateral looper


def test_looper_levers_up_then_unwinds_on_a_depeg(sim):
    # A looper with 100k STABLE and 20k USDT debt (equity 80k) targets 2x = 160k STABLE:
    # each tick it borrows half the gap in USDT and buys STABLE with it. Then another user
    # dumps STABLE for several ticks (the LP quoting around its own book, thin depth);
    # once STABLE trades more than 3% under the external 1.0 the looper sells STABLE and
    # repays its debt from the proceeds, down to no debt.
    users = [
        {"name": "looper", "stable": 100000.0, "debt": {"usdt": 20000.0}},
        {"name": "dumper", "stable": 3000000.0},
    ]
    cohort = {
        "account": "looper", "behaviour": "looper", "market": "stable", "lev_target": 2.0,
        "threshold": 0.03, "exit": 0.005, "act_prob": 1.0, "speed": 0.5, "min_trade": 0.01,
    }  # fmt: skip
    p = make(
        users,
        **{
            "population.cohorts": [cohort],
            "markets.lp_ref_weight": {"spot": 1.0, "perp": 1.0, "stable": 0.0, "lst": 1.0},
            "markets.lp_depth": {"spot": 2.0, "perp": 3.0, "stable": 20000.0, "lst": 1.0},
        },
    )
    dump = {"account": 1, "market": 2, "side": -1, "kind": KIND_MARKET, "qty": 400000.0}
    states, evs, st0 = sim.run(p, 14, orders_at={i: [dump] for i in range(3, 12)})
    held = np.array([float(s.acct.bal[0, STABLE]) for s in states])
    debt = np.array([float(s.acct.debt[0, USDT]) for s in states])
    px = np.array([float(e.collateral_px[0]) for e in evs])
    # Levering up while STABLE is at par: debt and holding grow, towards 160k.
    assert debt[0] > 45000.0 and held[0] > 125000.0
    assert np.all(np.diff(held[:3]) > 0) and np.all(np.diff(debt[:3]) > 0)
    assert 150000.0 < held[2] < 161000.0
    # No unwinding while the discount is under 3%; selling and repaying once it is over.
    scared = px < 0.97
    first = int(np.argmax(scared))
    assert scared.any() and first >= 4
    assert held[first] == pytest.approx(held[first - 1], rel=1e-6)  # decided on the old price
    assert held[-1] < 0.5 * held[first]
    assert debt[-1] == pytest.approx(0.0, abs=1.0) and debt[first - 1] > 70000.0
    assert np.all(np.diff(debt[first:]) <= 1e-3)  # it never borrows while scared
    assert_conserved(p, st0, states[-1], debts_fixed=False)


def test_bidding_arb_rests_a_bid_and_brings_its_capital_on_a_discount(sim):
    # A bidding cross-venue arb (`bid: 1`, threshold 0.5%, speed 0.5) with 20k USDT on the
    # exchange and 1M on the other venues rests a bid at 0.995 (the external 1.0 less its
    # threshold, rounded down to the grid), topped up with half its free USDT each tick, and
    # leaves the 1M where it is while STABLE trades at par. A dumper then sells through the
    # bid: the arb sends for its 1M, which lands after the withdrawal delay (30 s = 3 ticks)
    # and goes into the bid. A -5% shock to STABLE's external price leaves the bid above the
    # new reservation price: it is cancelled.
    users = [
        {"name": "arb", "usdt": 20000.0, "external": {"usdt": 1.0e6}},
        {"name": "dumper", "stable": 3.0e6},
    ]
    cohort = {"account": "arb", "behaviour": "xvenue_arb", "market": "stable",
              "threshold": 0.005, "speed": 0.5, "bid": 1.0}  # fmt: skip
    p = make(
        users,
        **{
            "population.cohorts": [cohort],
            "rules.withdrawal_delay_s": 30.0,
            "markets.lp_ref_weight": {"spot": 1.0, "perp": 1.0, "stable": 0.0, "lst": 1.0},
            "markets.lp_depth": {"spot": 2.0, "perp": 3.0, "stable": 20000.0, "lst": 1.0},
            "exogenous.shocks": [
                {"start_s": 120.0, "duration_s": 10.0, "asset": "stable", "return_pct": -5.0}
            ],
        },
    )
    dump = {"account": 1, "market": STABLE, "side": -1, "kind": KIND_MARKET, "qty": 300000.0}
    states, evs, st0 = sim.run(p, 14, orders_at={3: [dump]})
    bids = lambda st: np.asarray(accounts.own_orders(st, 0, STABLE)[BID])
    lvl = lambda st: np.asarray(accounts.level_prices(st, p, STABLE))
    reserved = lambda st: float(np.sum(bids(st) * lvl(st)))
    ext = lambda st: float(st.acct.ext_bal[0, USDT])
    in_transit = lambda st: float(np.sum(st.acct.transit_amt[0]))

    def bid_px(st):
        nz = np.flatnonzero(bids(st))
        assert len(nz) == 1, nz
        return float(lvl(st)[nz[0]])

    # At par: one bid level at 0.995 (0.9945 after float32 rounding down), half the free
    # USDT added each tick; the capital abroad stays abroad.
    for i, st in enumerate(states[:3]):
        assert 0.9945 - 1e-6 <= bid_px(st) <= 0.995 + 1e-6
        assert usdt(st, 0) == pytest.approx(20000.0 * 0.5 ** (i + 1), rel=2e-3)
        assert usdt(st, 0) + reserved(st) == pytest.approx(20000.0, abs=USD_TOL)
        assert ext(st) == 1.0e6 and in_transit(st) == 0.0
    # The dump fills the whole bid (and the arb's top-up of that tick).
    assert float(evs[3].order_filled[0]) > 0 and bids(states[3]).sum() == 0.0
    assert float(states[3].acct.bal[0, STABLE]) >= bids(states[2]).sum()
    # STABLE now trades under 0.995: the 1M is sent for and lands 3 ticks later.
    assert ext(states[3]) == 1.0e6
    assert ext(states[4]) == 0.0 and in_transit(states[4]) >= 1.0e6
    landed = [i for i, st in enumerate(states) if usdt(st, 0) > 0.9e6]
    assert landed and landed[0] == 4 + 3
    # The next tick half of it bids at 0.995 again.
    assert 0.9945 - 1e-6 <= bid_px(states[8]) <= 0.995 + 1e-6
    assert reserved(states[8]) > 0.4e6
    # The shock (tick 12): the bid is cancelled, its USDT released, no new bid.
    assert bids(states[11]).sum() > 0 and bids(states[12]).sum() == 0.0
    assert usdt(states[12], 0) == pytest.approx(
        usdt(states[11], 0) + reserved(states[11]), rel=1e-5
    )
    assert bids(states[13]).sum() == 0.0
    assert_conserved(p, st0, states[-1])


# ================================================================== spot retail


def test_spot_retail_buys_bids_and_sells_what_it_holds(sim):
    # Three spot retail cohorts (`market: spot`) with a fixed signal (bias only):
    # - chaser: f = 1, lev 0.5 of 50k -> target 0.25 BASE, bought by market order at
    #   speed 0.5 of the gap per tick;
    # - dip: f = 1, lev 1 -> target 0.5 BASE, bid by a limit order 0.5% under the mid
    #   (cancelled and re-posted each tick) until a seller comes down to it;
    # - holder: f = 0 -> it sells its 0.4 BASE by market order at speed 0.5.
    users = [
        {"name": "chaser", "usdt": 50000.0},
        {"name": "dip", "usdt": 50000.0},
        {"name": "holder", "base": 0.4},
        {"name": "seller", "base": 30.0},
    ]
    common = {"behaviour": "retail", "market": "spot", "side": 1, "act_prob": 1.0, "speed": 0.5}
    cohorts = [
        {"account": "chaser", "bias": 1.0, "lev_target": 0.5, **common},
        {"account": "dip", "bias": 1.0, "lev_target": 1.0, "threshold": 0.005, **common},
        {"account": "holder", "bias": 0.0, "lev_target": 1.0, **common},
    ]
    p = make(users, **{"population.cohorts": cohorts})
    lvl = lambda st: np.asarray(accounts.level_prices(st, p, SPOT))
    bids = lambda st, a: np.asarray(accounts.own_orders(st, a, SPOT)[BID])
    states, evs, st0 = sim.run(p, 4)
    base = lambda st, a: float(st.acct.bal[a, BASE])
    # Chaser: half the gap each tick, by market order, paid from its USDT. (Targets are
    # valued at the spot mid, within a tick (5 bp) of 100k: rel 1e-3.)
    assert base(states[0], 0) == pytest.approx(0.125, rel=1e-3)
    assert base(states[1], 0) == pytest.approx(0.1875, rel=1e-3)
    assert 0.0 < usdt(states[1], 0) < 50000.0 - 0.1875 * 100000.0 * 0.999
    # Dip: one resting bid of half its gap, 0.5% under the mid (rounded down to the grid),
    # re-posted each tick: never two levels at once, no BASE bought yet.
    for st in states:
        b = bids(st, 1)
        assert np.count_nonzero(b) == 1 and b.sum() == pytest.approx(0.25, rel=1e-3)
        px = lvl(st)[np.flatnonzero(b)[0]]
        assert 0.994 * 100000.0 <= px <= 0.995 * 100000.0 + 1e-3
        assert base(st, 1) == 0.0
        # Its USDT and what the bid reserves add up to its 50k; the events' equity counts both.
        assert usdt(st, 1) + b.sum() * px == pytest.approx(50000.0, abs=USD_TOL)
    assert float(evs[-1].equity[1]) == pytest.approx(50000.0, abs=USD_TOL)
    # Holder: sells half of what it holds each tick.
    assert [round(base(st, 2), 6) for st in states] == [0.2, 0.1, 0.05, 0.025]
    assert usdt(states[-1], 2) > 0.37 * 99000.0
    # A seller walks the bids down to 99.4k (the grid's edge is 99.2k): the dip buyer's bid
    # is filled at its price.
    sell = {"account": 3, "market": SPOT, "side": -1, "kind": KIND_LIMIT, "qty": 30.0,
            "price": 99400.0}  # fmt: skip
    states2, evs2, _ = sim.run(p, 2, orders_at={0: [sell]}, st=states[-1])
    assert int(evs2[0].order_reason[0]) == OK and float(evs2[0].order_filled[0]) > 0.25
    assert base(states2[0], 1) == pytest.approx(0.25, rel=1e-3)
    paid = usdt(states[-1], 1) + bids(states[-1], 1).sum() * px - usdt(states2[0], 1)
    assert paid == pytest.approx(base(states2[0], 1) * px * (1 + float(p.rules.maker_fee)), abs=1.0)
    assert_conserved(p, st0, states2[-1])


# ================================================================== transfers


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
