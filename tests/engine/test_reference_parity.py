"""Tick-by-tick parity of `jaxsim.step` with the slow reference in `reference_exchange.py`.

Both run side by side over a few hundred ticks of random external orders (market / limit /
post-only / cancel on all four markets, both sides, several users, sizes and prices that are
sometimes rejected, some system-account and malformed orders); after every tick the whole state and the
tick's order results and liquidation counters are compared.

Precision: the comparison runs in float64 (`jax.enable_x64` only inside this module's
fixture, so other modules keep float32), so discrete decisions (level rounding, margin and
liquidation thresholds) are not decided by float32 noise. Tolerance: RTOL = 1e-9, ATOL = 1e-7
on every float (base units, USDT, prices); integers, reasons, origins exactly.

What the reference replays from the engine: nothing from the engine's state. It draws the
exogenous standard normals with `jax.random` from the same key (`reference_exchange.exogenous`)
and applies the price formulas itself; reset (initial LP depth) is recomputed too.

Regressions found by this parity test (fixed in the engine; the tests named
test_regression_* reproduce them minimally):
1. topping up a resting order must move the owners queued behind it forward (cancel, then
   add at the back); otherwise queue intervals overlap and a taker's fill is not debited
   from any maker (size from nothing);
2. a limit order that fills completely must not rest its float-rounding remainder at its
   limit price (a crossed book).
"""

from __future__ import annotations

import math
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference_exchange import (
    ASK,
    BID,
    KIND_CANCEL,
    KIND_LIMIT,
    KIND_MARKET,
    KIND_NONE,
    KIND_POST_ONLY,
    OK,
    PERP,
    REJ_WOULD_TAKE,
    RefExchange,
    _np_tree,
)
from support import TESTBED

import jaxsim
from jaxsim.types import LP_SLOT, Orders

RTOL = 1e-9
ATOL = 1e-7
N_TICKS = 300

USERS = [
    # 0: a multi-asset agent that trades everything
    {"name": "agent", "usdt": 300000.0, "base": 3.0, "stable": 100000.0, "lst": 2.0},
    {"name": "long_cross_20x", "usdt": 70000.0, "position": 5.0, "leverage": 20},
    {"name": "short_cross_10x", "usdt": 100000.0, "position": -5.0, "leverage": 10},
    {
        "name": "long_iso_20x",
        "usdt": 20000.0,
        "position": 2.0,
        "mode": "isolated",
        "isolated_margin": 8000.0,
        "leverage": 20,
    },
    {
        "name": "stable_coll_long",
        "usdt": 2000.0,
        "stable": 60000.0,
        "position": 3.0,
        "leverage": 20,
    },
    {
        "name": "lst_coll_long_debt",
        "usdt": 50000.0,
        "lst": 1.0,
        "position": 6.0,
        "leverage": 20,
        "debt": {"usdt": 45000.0},
    },
]

BASE_OVERRIDES = {
    "dims.n_accounts": 10,
    "dims.n_levels": 32,
    "dims.max_orders": 4,
    "dims.liq_per_round": 1,  # binds in the shock run: breaching accounts wait their turn
    "rules.funding.interval_h": 0.25,  # settles every 90 ticks: 3 settlements per run
    # Perp band narrower than the grid's half-width (0.8%) so price-band rejects can happen.
    "rules.price_band.perp": 0.006,
    "accounts.users": USERS,
}

SHOCK_OVERRIDES = {
    **BASE_OVERRIDES,
    # The two collateral-backed longs swapped: in this run a round's queue (lowest margin
    # ratio first) then differs from account order, and the run covers every path.
    "accounts.users": USERS[:4] + [USERS[5], USERS[4]],
    "accounts.insurance_fund": 30000.0,  # small fund: its position cap binds -> ADL
    "exogenous.shocks": [
        # a slide (liquidations before bankruptcy: IOC fills, clearance fees) ...
        {"start_s": 300.0, "duration_s": 600.0, "asset": "base", "return_pct": -8.0},
        {"start_s": 300.0, "duration_s": 600.0, "asset": "stable", "return_pct": -4.0},
        # ... then a one-tick gap: several accounts breach at once, past bankruptcy
        {"start_s": 1200.0, "duration_s": 10.0, "asset": "base", "return_pct": -16.0},
    ],
}

# Own fee rates (`accounts.users[].fees`, docs/mechanics.md 6): the agent is a programme
# maker with a rebate (-0.005%, the top tier of Binance's USD-M Futures Liquidity Provider
# Program), account 1 a VIP9 taker (0.017%), account 5 (LST collateral and a USDT debt: it
# sells collateral when liquidated) pays its own rates on both sides. The others and the
# system accounts pay rules.fees.
FEE_USERS = [dict(u) for u in USERS]
FEE_USERS[0]["fees"] = {"maker": -0.00005}
FEE_USERS[1]["fees"] = {"taker": 0.00017}
FEE_USERS[5]["fees"] = {"maker": 0.0, "taker": 0.0003}

# Variant with no LP refill after reset (the LP only pulls excess): users' orders may rest
# across ticks while the book holds only what reset placed.
NO_REFILL = {"markets.lp_resilience_per_s": {"spot": 0.0, "perp": 0.0, "stable": 0.0, "lst": 0.0}}

SIZE_SCALE = {0: 0.5, 1: 1.0, 2: 20000.0, 3: 0.3}
# Kinds of the orders that may rest (the flow's limit orders, some made post-only).
RESTING = (KIND_LIMIT, KIND_POST_ONLY)


@pytest.fixture(scope="module")
def x64():
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="module")
def engine(x64):
    """(jitted step, jitted reset), compiled once for the module (all params share shapes)."""
    return jax.jit(jaxsim.step), jax.jit(jaxsim.reset)


def _params(overrides):
    return jaxsim.load_scenario(TESTBED, overrides=overrides, dtype=jnp.float64)


# ============================================================== random order flow


class OrderFlow:
    """Random external orders. mode: 'free' (anything), 'rest' (orders rest across ticks but a
    user never adds to its own resting order), 'flash' (at most one limit per tick, cancelled by
    the tick's last order, so no user order rests while the LP refills).

    A share `POST_ONLY_P` of the limit orders is sent post-only instead, at the same price
    (about half of them cross the book and are rejected). That choice draws from a second
    generator, so the main draws are those of a flow without post-only orders."""

    MARKET_P = (0.25, 0.4, 0.15, 0.2)
    POST_ONLY_P = 0.3

    def __init__(self, seed: int, k: int, n_user: int, n: int, mode: str):
        self.rng = np.random.default_rng(seed)
        self.rng_post = np.random.default_rng(seed + 10_000)
        self.k, self.n_user, self.n, self.mode = k, n_user, n, mode
        self.market_p = self.MARKET_P

    def _one(self, ref: RefExchange, allow_limit: bool, own_levels: set):
        rng = self.rng
        u = rng.random()
        a = int(rng.integers(0, self.n_user))
        if u < 0.03:
            a = int(rng.integers(self.n_user, self.n))  # system account -> rejected
        m = int(rng.choice(4, p=self.market_p))
        side = int(rng.choice([-1, 1]))
        kind = int(
            rng.choice([KIND_MARKET, KIND_LIMIT, KIND_CANCEL, KIND_NONE], p=[0.4, 0.4, 0.12, 0.08])
        )
        qty = SIZE_SCALE[m] * float(rng.lognormal(0.0, 1.0))
        if rng.random() < 0.08:
            qty *= 60.0  # large: margin / position / balance rejects, deep sweeps
        refp = ref.mark if m == PERP else float(ref.last[m])
        price = 0.0
        if kind == KIND_MARKET and rng.random() < 0.3:
            price = refp * (1 + float(rng.normal(0.0, 0.004)))
        if kind == KIND_LIMIT:
            spread = 0.03 if rng.random() < 0.1 else 0.004
            price = refp * (1 + float(rng.normal(0.0, spread)))
            tick = ref.tick[m]
            raw = price / tick
            j_tick = math.floor(raw + 1e-6) if side > 0 else math.ceil(raw - 1e-6)
            key = (a, m, BID if side > 0 else ASK, j_tick)
            if not allow_limit or (self.mode == "rest" and key in own_levels):
                kind, price = KIND_MARKET, 0.0
            else:
                own_levels.add(key)
                if self.rng_post.random() < self.POST_ONLY_P:
                    kind = KIND_POST_ONLY
        if kind == KIND_CANCEL:
            side = int(rng.choice([-1, 0, 1]))
        if rng.random() < 0.02:  # malformed
            qty = float(rng.choice([-1.0, 0.0, np.nan]))
            if kind == KIND_CANCEL:
                price = -1.0
        return [kind, a, m, side, qty, price]

    def orders(self, ref: RefExchange):
        own = set()
        if self.mode == "rest":
            for m in range(4):
                for sd in (BID, ASK):
                    for j in range(ref.g):
                        for owner, _ in ref.book[m][sd][j]:
                            own.add((owner, m, sd, ref.origin[m] + j))
        out = []
        n_limit = 0
        for i in range(self.k):
            if self.mode == "flash" and i == self.k - 1:
                lim = [o for o in out if o[0] in RESTING]
                if lim:
                    out.append([KIND_CANCEL, lim[0][1], lim[0][2], 0, 0.0, 0.0])
                    continue
            allow = not (self.mode == "flash" and (n_limit >= 1 or i == self.k - 1))
            o = self._one(ref, allow, own)
            n_limit += o[0] in RESTING
            out.append(o)
        return out


def _to_orders(rows) -> Orders:
    cols = list(zip(*rows, strict=True))
    return Orders(
        kind=jnp.array(cols[0], jnp.int32),
        account=jnp.array(cols[1], jnp.int32),
        market=jnp.array(cols[2], jnp.int32),
        side=jnp.array(cols[3], jnp.int32),
        qty=jnp.array(cols[4], jnp.float64),
        price=jnp.array(cols[5], jnp.float64),
    )


# ============================================================== comparison


def _close(name, got, want, t, rtol=RTOL, atol=ATOL):
    got, want = np.asarray(got, float), np.asarray(want, float)
    if not np.allclose(got, want, rtol=rtol, atol=atol, equal_nan=True):
        diff = np.abs(got - want)
        i = np.unravel_index(np.nanargmax(diff), diff.shape) if diff.ndim else ()
        raise AssertionError(
            f"tick {t}: {name} differs (engine vs reference) at {i}: "
            f"{got[i] if diff.ndim else got} vs {want[i] if diff.ndim else want}; "
            f"max |diff| {np.nanmax(diff):.3g}"
        )


def _exact(name, got, want, t):
    if not np.array_equal(np.asarray(got), np.asarray(want)):
        raise AssertionError(f"tick {t}: {name} differs: engine {got} vs reference {want}")


def compare_state(s, ref: RefExchange, t, check_ahead=True):
    """s: engine state as a nested NumPy dict."""
    a = s["acct"]
    _exact("t", s["t"], ref.t, t)
    _close("bad_debt (written off so far)", s["bad_debt"], ref.bad_debt, t)
    for name, want in (
        ("bal", ref.bal),
        ("debt", ref.debt),
        ("pos", ref.pos),
        ("entry", ref.entry),
        ("iso_margin", ref.iso),
        ("lev", ref.lev),
    ):
        _close(f"acct.{name}", a[name], want, t)
    _exact("acct.mode", a["mode"], ref.mode, t)
    qty, ahead, origin = ref.as_arrays()
    _exact("book.origin", s["book"]["origin"], origin, t)
    _close("book.qty", s["book"]["qty"], qty, t)
    if check_ahead:
        _close("book.ahead (FIFO queue position)", s["book"]["ahead"], ahead, t)
    p = s["px"]
    for name, want in (
        ("last", ref.last),
        ("index", ref.index),
        ("mark", ref.mark),
        ("ext", ref.ext),
        ("ext_common", ref.ext_common),
        ("vol", ref.vol),
        ("funding_rate", ref.funding_rate),
        ("prem_wsum", ref.prem_wsum),
        ("prem_w", ref.prem_w),
        ("next_funding_s", ref.next_funding_s),
        ("last_funding_rate", ref.last_funding_rate),
    ):
        _close(f"px.{name}", p[name], want, t)
    _exact("px.prem_n", p["prem_n"], ref.prem_n, t)
    _exact("px.last_trade_t", p["last_trade_t"], np.asarray(ref.last_trade_t), t)
    _exact("px.basis_count", p["basis_count"], len(ref.basis_samples), t)
    w = ref.basis_window
    buf = np.zeros(w)
    for i, x in enumerate(ref.basis_samples):
        buf[i % w] = x
    _close("px.basis_buf", p["basis_buf"], buf, t)


def compare_events(ev, rev, t):
    _exact("order_reason", ev.order_reason, rev["order_reason"], t)
    _close("order_filled", ev.order_filled, rev["order_filled"], t)
    _close("order_avg_px", ev.order_avg_px, rev["order_avg_px"], t)
    _close("order_unfilled", ev.order_unfilled, rev["order_unfilled"], t)
    _close("volume", ev.volume, rev["volume"], t)
    _close("fees", ev.fees, rev["fees"], t)
    _close("fees_paid (per account)", ev.fees_paid, rev["fees_paid"], t)
    _close("liq_notional_long", ev.liq_notional_long, rev["liq_long"], t)
    _close("liq_notional_short", ev.liq_notional_short, rev["liq_short"], t)
    _exact("liq_accounts", ev.liq_accounts, rev["liq_accounts"], t)
    _close("collateral_sold", ev.collateral_sold, rev["coll_sold"], t)
    _close("collateral_sold_usdt", ev.collateral_sold_usdt, rev["coll_sold_usdt"], t)
    _close("if_takeover_notional", ev.if_takeover_notional, rev["takeover"], t)
    _exact("adl_count", ev.adl_count, rev["adl_count"], t)
    _exact("liq_backlog", ev.liq_backlog, rev["liq_backlog"], t)
    _close("adl_notional", ev.adl_notional, rev["adl_notional"], t)
    _close("bad_debt", ev.bad_debt, rev["bad_debt"], t)
    _close("insurance_fund", ev.insurance_fund, rev["insurance_fund"], t)
    _close("insurance_equity", ev.insurance_equity, rev["insurance_equity"], t)
    _exact("funding_settled", bool(ev.funding_settled), bool(rev["funding_settled"]), t)
    _close("funding_paid", ev.funding_paid, rev["funding_paid"], t)


def run_parity(
    engine,
    params,
    n_ticks,
    mode,
    seed,
    ref_hook=None,
    check_ahead=True,
    market_p_at=None,
    script=None,
):
    """Run engine and reference side by side; assert agreement after every tick.

    market_p_at(t): the order flow's probabilities of the four markets at tick t (default
    `OrderFlow.MARKET_P`). `script` (tick -> order rows) replaces the random flow at those
    ticks (padded with empty rows). Returns totals of the tick events (for checking what
    the run exercised).
    """
    step, reset = engine
    key = jax.random.PRNGKey(seed)
    k_reset, key = jax.random.split(key)
    state = reset(k_reset, params)
    ref = RefExchange(params).reset()
    if ref_hook is not None:
        ref_hook(ref)
    compare_state(_np_tree(state), ref, -1, check_ahead)
    flow = OrderFlow(seed, params.dims.max_orders, ref.n_user, ref.n, mode)
    totals = {
        "ref": ref,
        "liq_accounts": 0,
        "takeover": 0.0,
        "adl_count": 0,
        "liq_backlog": 0,
        "coll_sold_usdt": 0.0,
        "bad_debt": 0.0,
        "fills": 0,
        "liq_book_notional": 0.0,
        "rejects": set(),
        "settlements": 0,
        "post_only": Counter(),  # reason -> count of the post-only rows
    }
    for t in range(n_ticks):
        key, k = jax.random.split(key)
        if market_p_at is not None:
            flow.market_p = market_p_at(t)
        rows = flow.orders(ref)
        if script and t in script:
            rows = script[t] + [[KIND_NONE, 0, 0, 0, 0.0, 0.0]] * (len(rows) - len(script[t]))
        state, ev = step(k, state, _to_orders(rows), params)
        s_np = _np_tree(state)
        ev = jax.device_get(ev)
        rev = ref.step(k, [tuple(r) for r in rows])
        compare_events(ev, rev, t)
        compare_state(s_np, ref, t, check_ahead)
        totals["liq_accounts"] += int(ev.liq_accounts)
        totals["liq_book_notional"] += float(
            ev.liq_notional_long + ev.liq_notional_short - ev.if_takeover_notional - ev.adl_notional
        )
        totals["takeover"] += float(ev.if_takeover_notional)
        totals["adl_count"] += int(ev.adl_count)
        totals["liq_backlog"] += int(ev.liq_backlog)
        totals["coll_sold_usdt"] += float(ev.collateral_sold_usdt)
        totals["bad_debt"] += float(ev.bad_debt)
        totals["fills"] += int(np.sum(np.asarray(ev.order_filled) > 0))
        totals["rejects"] |= set(int(x) for x in np.asarray(ev.order_reason))
        totals["settlements"] += int(ev.funding_settled)
        for r, row in enumerate(rows):
            if row[0] == KIND_POST_ONLY:
                totals["post_only"][int(ev.order_reason[r])] += 1
                assert float(ev.order_filled[r]) == 0.0, f"tick {t}: a post-only order took"
    return totals


def _assert_post_only_both_ways(tot):
    """The run's post-only orders both rested (OK) and were rejected for crossing."""
    po = tot["post_only"]
    assert po[OK] > 0 and po[REJ_WOULD_TAKE] > 0, dict(po)


# ============================================================== tests


def test_parity_resting_orders_no_lp_refill(engine):
    """Orders rest across ticks (queues with several users, partial fills, cancels)."""
    params = _params({**BASE_OVERRIDES, **NO_REFILL})
    tot = run_parity(engine, params, N_TICKS, "rest", seed=1)
    assert tot["fills"] > 100
    # 10: queue_full (more users resting at once than the books have maker slots for)
    # 11: would_take (a post-only order that crossed the book)
    assert {0, 1, 3, 6, 7, 9, 10, 11} <= tot["rejects"], tot["rejects"]
    assert tot["settlements"] == 3
    _assert_post_only_both_ways(tot)


def test_parity_lp_refill_flash_orders(engine):
    """Default LP replenishment; each tick's limit order is cancelled within the tick."""
    params = _params(BASE_OVERRIDES)
    tot = run_parity(engine, params, N_TICKS, "flash", seed=2)
    assert tot["fills"] > 100
    assert tot["settlements"] == 3
    _assert_post_only_both_ways(tot)


def test_parity_shock_liquidations(engine):
    """A -12% BASE / -4% STABLE shock: liquidation IOCs, takeover, ADL, collateral sales,
    the queue by margin ratio, solvent accounts keeping what the book left, a backlog."""
    params = _params(SHOCK_OVERRIDES)
    tot = run_parity(engine, params, 200, "flash", seed=3)
    assert tot["liq_accounts"] > 0, tot
    assert tot["takeover"] > 0, tot
    assert tot["adl_count"] > 0, tot
    assert tot["coll_sold_usdt"] > 0, tot
    assert tot["liq_book_notional"] > 0, tot
    assert tot["ref"].n_deferred > 0  # liq_per_round bound: some accounts waited a round
    assert tot["ref"].n_reordered > 0  # a round's queue was not the lowest indices
    assert tot["ref"].n_kept > 0  # a solvent account kept the part of its cut the book left
    assert tot["liq_backlog"] > 0  # some were still queued when a tick's rounds ended
    assert tot["ref"].n_bust > 0  # the fund covered a bankrupt cross account's hole
    assert tot["ref"].n_interest > 0  # debts and negative USDT paid interest


def test_parity_isolated_close_under_water(engine):
    """An isolated account closes its position below bankruptcy in the first tick (the
    fund pays the margin's deficit) with no USDT for the fee: the flat account's wallet
    (30 STABLE) is then liquidated (STABLE sold, the fund resets the rest). Random flow
    after that."""
    users = [dict(u) for u in USERS]
    users[3] = {
        "name": "iso_under_water",
        "stable": 30.0,
        "position": 2.0,
        "entry": 110000.0,
        "mode": "isolated",
        "isolated_margin": 8000.0,
        "leverage": 20,
    }
    params = _params({**BASE_OVERRIDES, "accounts.users": users})
    close = [[KIND_MARKET, 3, PERP, -1, 2.0, 0.0]]
    tot = run_parity(engine, params, 40, "flash", seed=6, script={0: close})
    assert tot["ref"].n_iso_deficit > 0
    assert tot["ref"].n_bust > 0 and tot["liq_accounts"] > 0


def test_parity_index_clip_and_stale_internal_leg(engine):
    """The LST index (0.2 internal + 0.8 redemption) with a 0.1% clip, so the internal
    print is often capped around the redemption leg; no LST orders for the first 45
    ticks, so its last trade (the start price) goes stale after 300 s (tick 31) and the
    leg drops out, then LST trades again."""
    params = _params({**BASE_OVERRIDES, "rules.index.lst.clip": 0.001})

    def market_p(t):
        return (0.3, 0.45, 0.25, 0.0) if t < 45 else (0.2, 0.3, 0.1, 0.4)

    tot = run_parity(engine, params, 90, "flash", seed=6, market_p_at=market_p)
    ref = tot["ref"]
    assert ref.n_stale >= 14, ref.n_stale  # ticks 31..44 at least (reprices per tick: 2+)
    assert ref.n_clipped > 0, ref.n_clipped
    assert ref.last_trade_t[3] > 45  # LST traded again


def test_parity_fund_deficit_adl_off(engine):
    """The shock with ADL off, a 2,000 USDT fund and a 0.4% sale band: the fund takes every
    bankrupt position over and its unwind realizes losses it cannot pay (bad debt, written
    off); the band cuts collateral sales short (the rest is sold in later ticks)."""
    over = {
        **SHOCK_OVERRIDES,
        "accounts.insurance_fund": 2000.0,
        "rules.adl": False,
        "rules.sale_band": 0.004,
        "rules.if_unwind_per_h": 60.0,
    }
    tot = run_parity(engine, _params(over), 130, "flash", seed=6)
    assert tot["takeover"] > 0 and tot["adl_count"] == 0, tot
    assert tot["bad_debt"] > 0, tot
    assert tot["ref"].n_banded > 0


def test_parity_own_fee_rates(engine):
    """Accounts with their own fee rates trade with each other and with regular accounts
    and the LP: the rebate maker's resting orders are hit, the VIP taker takes (the
    per-account fees paid are compared each tick, as everywhere)."""
    params = _params({**BASE_OVERRIDES, "accounts.users": FEE_USERS})
    tot = run_parity(engine, params, N_TICKS, "free", seed=7)
    ref = tot["ref"]
    assert ref.n_own_maker > 0 and ref.n_own_taker > 0, (ref.n_own_maker, ref.n_own_taker)
    assert tot["fills"] > 100, tot


def test_parity_own_fee_rates_shock(engine):
    """The shock run with own fee rates: a liquidated account with its own taker rate
    sells its collateral at that rate (the quote raised covers its own fee)."""
    users = FEE_USERS[:4] + [FEE_USERS[5], FEE_USERS[4]]
    params = _params({**SHOCK_OVERRIDES, "accounts.users": users})
    tot = run_parity(engine, params, 200, "flash", seed=3)
    ref = tot["ref"]
    assert tot["liq_accounts"] > 0 and tot["coll_sold_usdt"] > 0, tot
    assert ref.n_own_rate_sales > 0 and ref.n_own_maker > 0, ref.n_own_rate_sales


def test_parity_detects_a_perturbed_reference(engine):
    """The comparison can fail: a reference with a 1% different maker fee is caught."""
    params = _params(BASE_OVERRIDES)

    def hook(ref):
        ref.r["maker_fee"] = ref.r["maker_fee"] * 1.01

    with pytest.raises(AssertionError, match="differs"):
        run_parity(engine, params, 60, "flash", seed=4, ref_hook=hook)


def test_parity_free_flow_lp_refill(engine):
    """Unrestricted flow: users' orders rest at levels the LP keeps topping up (queue
    positions compared too: this is where the FIFO regression showed)."""
    params = _params(BASE_OVERRIDES)
    tot = run_parity(engine, params, N_TICKS, "free", seed=5)
    assert tot["fills"] > 100, tot  # the flow really traded against resting orders
    _assert_post_only_both_ways(tot)


def test_regression_topping_up_keeps_fifo(x64):
    """Owner 0 rests 3, owner 1 rests 1 behind it, owner 0 adds 0.5 (-> back of the queue).

    A taker of 1.0 must fill owner 1 (now first in line). Before the fix owner 1's `ahead`
    stayed at 3, so nobody was debited while the taker got 1.0: size from nothing.
    """
    from jaxsim import book as bk

    q = jnp.zeros((4, 3))
    ah = jnp.zeros((4, 3))
    q, ah = bk.add(q, ah, 0, 0, 3.0)
    q, ah = bk.add(q, ah, 0, 1, 1.0)
    q, ah = bk.add(q, ah, 0, 0, 0.5)
    _, _, f = bk.consume(q, ah, jnp.zeros(4).at[0].set(1.0))
    np.testing.assert_allclose(np.asarray(f[0]), [0.0, 1.0, 0.0])


def test_regression_filled_limit_rests_no_dust():
    """float32, the engine's default: bids 1.624 @ level 17 and 2.192 @ level 16; a limit sell
    of 2.206 down to level 10 fills completely (1.624 + 0.582), but `qty - sum(fills)` is
    2.4e-7, which the order path used to rest as an ask at level 10, below the best bid (a crossed
    book; later mids, the basis sample, the mark and the LP's no-cross rule all saw it)."""
    p = jaxsim.load_scenario(
        TESTBED,
        overrides={"dims.n_accounts": 5, "dims.n_levels": 32, "accounts.users": [{"usdt": 1e6}]},
        dtype=jnp.float32,
    )
    state = jax.jit(jaxsim.reset)(jax.random.PRNGKey(0), p)
    # The LP's bids (account 1 of 5; its maker slot is LP_SLOT).
    bids = jnp.zeros((32, p.dims.n_makers), jnp.float32)
    bids = bids.at[16, LP_SLOT].set(2.192).at[17, LP_SLOT].set(1.624)
    book = state.book.replace(
        qty=state.book.qty.at[PERP, BID].set(bids).at[PERP, ASK, :20].set(0.0),
        ahead=jnp.zeros_like(state.book.ahead),
    )
    state = state.replace(book=book)
    px = (int(state.book.origin[PERP]) + 10) * 50.0
    f32 = jnp.float32
    order_rows = Orders(
        account=jnp.zeros(4, jnp.int32),
        market=jnp.array([PERP, 0, 0, 0], jnp.int32),
        side=jnp.array([-1, 0, 0, 0], jnp.int32),
        kind=jnp.array([KIND_LIMIT, 0, 0, 0], jnp.int32),
        qty=jnp.array([2.206, 0, 0, 0], f32),
        price=jnp.array([px, 0, 0, 0], f32),
    )
    # Only the order matters here: run the trade phase alone (no LP refill, no price move).
    from jaxsim.mechanisms import accounts, orders, tick_acc

    trade = jax.jit(
        lambda st, o, pp: orders.book_order(st, pp, tick_acc.zero(f32, pp.dims.n_accounts), o)
    )
    new, _, res = trade(state, jax.tree.map(lambda x: x[0], order_rows), p)
    assert int(res.reason) == 0 and float(res.filled) == pytest.approx(2.206, rel=1e-6)
    assert float(accounts.own_orders(new, 0, PERP)[ASK].sum()) == 0.0  # nothing may rest
