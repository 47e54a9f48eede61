"""Scenario signatures of docs/scenarios.md, read from the simulator's own event log.

Each scenario runs batched over 16 seeds; a signature must hold in at least 80% of them
(`MIN_FRACTION`), with the thresholds of docs/scenarios.md. Counterfactual variants run on the
same seeds (the same keys) and are compared seed by seed.

The seeds are `jax.random.split(PRNGKey(SCENARIO_SEED), 16)` with `SCENARIO_SEED` = 0 by
default. The scenarios were calibrated on those; the untuned check runs the same tests on
another set, e.g. ``SCENARIO_SEED=1000 pytest tests/scenarios -rP`` (the fractions print).

All scenarios share static dims, so one compiled program per horizon serves every scenario
and variant (params are arguments of the jitted batch, not constants).
"""

from __future__ import annotations

import functools
import os

import numpy as np
import pytest
import yaml

from jaxsim import load_scenario
from jaxsim import metrics as mt
from jaxsim.tools.simulate import run_batch
from jaxsim.types import BEH_RETAIL

SEEDS = 16
SCENARIO_SEED = int(os.environ.get("SCENARIO_SEED", "0"))
MIN_FRACTION = 0.8
RUN_TICKS = 720  # every run's compiled horizon
CALM_TICKS = 720  # 6 h at 30 s
DEPEG_TICKS = 360  # 3 h at 30 s: the shock starts at 30 min and lasts an hour


def _frac(ok: np.ndarray) -> float:
    return float(np.mean(np.asarray(ok, bool)))


def _report(name: str, ok: np.ndarray, **values) -> str:
    vals = ", ".join(f"{k}={np.round(np.asarray(v, float), 4).tolist()}" for k, v in values.items())
    msg = f"{name}: {_frac(ok):.0%} of {len(ok)} seeds hold ({vals})"
    print(msg)  # shown with `pytest -rP`: the fractions the closing notes report
    return msg


@functools.cache
def _run(name: str, variant: str | None, n_ticks: int, overrides: str | None = None):
    # One program for every run: `Params.name` is static and the horizon is a static
    # argument, so each run uses the same name and RUN_TICKS, and a shorter scenario keeps
    # the first `n_ticks` ticks of its events (a distinct program per scenario cost a
    # compile each, and the fresh-clone run once crashed in XLA's CPU compiler on the
    # seventh). The audits are of the RUN_TICKS-tick run.
    # `overrides` is a YAML mapping merged over the variant (a string: the cache's key).
    horizon = max(n_ticks, RUN_TICKS)
    ov = yaml.safe_load(overrides) if overrides else None
    params = load_scenario(name, variant, ov).replace(name="scenario")
    # In chunks of RUN_TICKS: the 48 h calm run reuses the 6 h runs' compiled program.
    ev, a0, a1 = run_batch(params, horizon, seeds=SEEDS, seed=SCENARIO_SEED, chunk=RUN_TICKS)
    ev = {k: v[:, :n_ticks] for k, v in ev.items()}
    m = mt.episode_metrics(ev, lst_rate=float(params.exo.lst_rate), facts_price="spot_mid")
    return params, ev, m, a0, a1


# ============================================================== calm


@pytest.fixture(scope="module")
def calm():
    return _run("calm", None, CALM_TICKS)


# The stylized facts need a longer series than the other calm checks: at 5 minutes the 6 h
# run has 72 returns, where a lag-1 autocorrelation of 0 reads as |acf| >= 0.1 in about 40%
# of seeds by sampling noise alone. 48 h gives 576 five-minute returns (standard error of
# an acf ~0.04). It runs as eight chunks of the 6 h runs' compiled program.
CALM_FACTS_TICKS = 5760
FIVE_MIN_S = 300.0


def _facts(r: np.ndarray) -> dict[str, np.ndarray]:
    """SCENARIOS.md's three facts of returns `r` (seeds, T), each a bool per seed: heavy
    tails (excess kurtosis > 0), volatility clustering (mean acf of |r| over lags 1-5 >
    0.05), no linear autocorrelation (|lag-1 acf| < 0.1); and the values."""
    kurt = mt.excess_kurtosis(r)
    clus = mt.autocorr(np.abs(r), range(1, 6)).mean(-1)
    acf1 = mt.autocorr(r, [1])[..., 0]
    return {
        "heavy_tails": (kurt > 0, kurt),
        "clustering": (clus > 0.05, clus),
        "no_autocorr": (np.abs(acf1) < 0.1, acf1),
    }


@pytest.mark.parametrize("horizon", ["tick", "5min"])
def test_calm_stylized_facts(horizon):
    """Heavy tails, volatility clustering and near-zero return autocorrelation, all three at
    once per seed, on the spot mid's returns per tick and at 5 minutes (48 h runs). The
    message names which fact fails in which seed."""
    params, ev, _, _, _ = _run("calm", None, CALM_FACTS_TICKS)
    r = mt.log_returns(mt.facts_series(ev, "spot_mid"))
    if horizon == "5min":
        r = mt.aggregate(r, round(FIVE_MIN_S / float(params.dt)))
    facts = _facts(r)
    ok = np.all([f[0] for f in facts.values()], 0)
    failing = {
        int(i): [k for k, (hold, _) in facts.items() if not hold[i]] for i in np.flatnonzero(~ok)
    }
    msg = _report(
        f"calm facts ({horizon})",
        ok,
        **{k: v for k, (_, v) in facts.items()},
    )
    msg += f"; failing seeds: {failing}"
    assert _frac(ok) >= MIN_FRACTION, msg


def test_calm_funding_near_baseline_and_no_cascade(calm):
    params, ev, m, _, _ = calm
    baseline = float(params.rules.funding_interest)  # 0.01% per 8 h interval
    funding_ok = np.abs(m["funding_mean"] - baseline) < 0.5 * baseline
    oi_notional = ev["oi_long"][:, 0] * ev["mark_px"][:, 0]
    no_cascade = (m["liq_total"] < 0.02 * oi_notional) & (m["adl_count"] == 0)
    ok = funding_ok & no_cascade
    msg = _report("calm funding/liq", ok, funding=m["funding_mean"], liq=m["liq_total"])
    assert _frac(ok) >= MIN_FRACTION, msg


def test_calm_conserves_every_asset(calm):
    _, _, _, a0, a1 = calm
    for k in ("usdt", "base", "stable", "lst"):
        x0, x1 = np.asarray(a0[k], np.float64), np.asarray(a1[k], np.float64)
        # float32 ledger: relative drift bounded by accumulated rounding over the run.
        assert np.all(np.abs(x1 - x0) <= 1e-5 * np.abs(x0)), (k, x0, x1)
    np.testing.assert_allclose(a1["oi_long"], a1["oi_short"], rtol=1e-5, atol=1e-3)


# ============================================================== collateral depeg


@pytest.fixture(scope="module")
def depeg():
    return _run("collateral_depeg", None, DEPEG_TICKS)


@pytest.fixture(scope="module")
def depeg_fixed():
    return _run("collateral_depeg", "fixed_index", DEPEG_TICKS)


def test_depeg_signature(depeg, calm):
    """Internal stablecoin low in [0.55, 0.80] while the external venues stay within 1% of
    1.0; liquidations many times calm's; LST index well below its redemption value."""
    _, _, m, _, _ = depeg
    # Calm's liquidations over the same duration (its first DEPEG_TICKS ticks).
    _, ev_calm, _, _, _ = calm
    liq_calm = ev_calm["liq_notional_long"] + ev_calm["liq_notional_short"]
    calm_liq = max(float(np.mean(liq_calm[:, :DEPEG_TICKS].sum(-1))), 1e6)
    ok = (
        (m["stable_low"] >= 0.55)
        & (m["stable_low"] <= 0.80)
        & (m["stable_ext_low"] >= 0.99)
        & (m["liq_total"] >= 10 * calm_liq)
        & (m["lst_index_rel_low"] < 0.97)
    )
    msg = _report(
        "depeg",
        ok,
        stable_low=m["stable_low"],
        ext_low=m["stable_ext_low"],
        liq=m["liq_total"] / 1e6,
        lst_rel=m["lst_index_rel_low"],
    )
    assert _frac(ok) >= MIN_FRACTION, msg


def test_depeg_causality_engine_sales_precede_the_fall(depeg):
    """The engine sells STABLE collateral before the stablecoin's internal price falls 1%,
    and the BASE shock (external) comes before both."""
    _, ev, _, _, _ = depeg
    sold = np.cumsum(ev["collateral_sold"][..., 2], -1)
    t_sold = mt.first_crossing(sold, 0.0, relative=False, below=False)
    t_fall = mt.first_crossing(ev["collateral_px"][..., 0], 0.99, relative=False)
    t_shock = mt.first_crossing(ev["ext_px"][..., 0], 0.97)
    ok = (t_sold >= 0) & (t_fall >= 0) & (t_sold <= t_fall) & (t_shock < t_sold)
    msg = _report("depeg causality", ok, sold=t_sold, fall=t_fall, shock=t_shock)
    assert _frac(ok) >= MIN_FRACTION, msg


def test_depeg_fix_redemption_index_and_floor(depeg, depeg_fixed):
    """Redemption price in the index plus a floor: the stablecoin as the exchange values it
    stays >= 0.90 and liquidated notional is at least halved (same seeds)."""
    _, _, m0, _, _ = depeg
    _, _, m1, _, _ = depeg_fixed
    ok = (m1["stable_index_low"] >= 0.90) & (m1["liq_total"] <= 0.5 * m0["liq_total"])
    msg = _report(
        "depeg fix",
        ok,
        index_low=m1["stable_index_low"],
        liq_fix=m1["liq_total"] / 1e6,
        liq_base=m0["liq_total"] / 1e6,
    )
    assert _frac(ok) >= MIN_FRACTION, msg


NO_STABLE_FLOOR = "rules: {index: {stable: {floor: 0.0}}}"


def test_depeg_fix_holds_without_the_floor(depeg, depeg_fixed):
    """The fix's redemption leg, not its 0.95 floor, holds the stablecoin's valuation: with
    the floor removed the STABLE index (the price every account's STABLE is valued at) still
    stays >= 0.90 and liquidations at least halve; and with the floor in place the index
    sits on the floor in at most 5% of the ticks (same seeds)."""
    _, _, m0, _, _ = depeg
    params, ev1, _, _, _ = depeg_fixed
    _, _, m2, _, _ = _run("collateral_depeg", "fixed_index", DEPEG_TICKS, NO_STABLE_FLOOR)
    floor = float(params.rules.price_floor[1])
    on_floor = np.mean(ev1["collateral_index"][..., 0] <= floor * (1 + 1e-6), -1)
    ok = (
        (m2["stable_index_low"] >= 0.90)
        & (m2["liq_total"] <= 0.5 * m0["liq_total"])
        & (on_floor <= 0.05)
    )
    msg = _report(
        "depeg fix without floor",
        ok,
        index_low_no_floor=m2["stable_index_low"],
        liq_no_floor=m2["liq_total"] / 1e6,
        liq_base=m0["liq_total"] / 1e6,
        ticks_on_floor=on_floor,
    )
    assert _frac(ok) >= MIN_FRACTION, msg


def _dampened_depeg(depeg, variant):
    """A clearly smaller depeg crash under `variant`: stablecoin low at least 0.02 higher
    and at most 80% of the liquidated notional (same seeds)."""
    _, _, m0, _, _ = depeg
    _, _, m1, _, _ = _run("collateral_depeg", variant, DEPEG_TICKS)
    ok = (m1["stable_low"] >= m0["stable_low"] + 0.02) & (m1["liq_total"] <= 0.8 * m0["liq_total"])
    msg = _report(
        variant,
        ok,
        low=m1["stable_low"],
        low_base=m0["stable_low"],
        liq_ratio=m1["liq_total"] / m0["liq_total"],
    )
    return ok, msg


def test_depeg_higher_haircuts_dampen(depeg):
    """STABLE and LST at a 25% haircut, the traders' collateral rebalanced to keep their
    positions and margin (20% of each STABLE / LST balance stays, the rest in USDT; the
    loopers unlooped): a smaller depeg and fewer liquidations, same seeds."""
    ok, msg = _dampened_depeg(depeg, "higher_haircuts")
    assert _frac(ok) >= MIN_FRACTION, msg


def test_depeg_no_withdrawal_delay_dampens(depeg):
    """Without the withdrawal delay the bidding arbitrageur's capital on the other venues
    reaches its bid the tick after STABLE trades under 0.995 (with the delay, an hour
    later, after the low): a smaller depeg and fewer liquidations, same seeds."""
    ok, msg = _dampened_depeg(depeg, "no_withdrawal_delay")
    assert _frac(ok) >= MIN_FRACTION, msg


# ============================================================== leverage accident

ACCIDENT_TICKS = 720  # 12 h at 60 s (the source's three days, compressed)


@pytest.fixture(scope="module")
def accident():
    return _run("leverage_accident", None, ACCIDENT_TICKS)


@pytest.fixture(scope="module")
def accident_no_whale():
    return _run("leverage_accident", "no_whale", ACCIDENT_TICKS)


def test_accident_signature(accident):
    """A 5-11% spot drawdown over the scenario's horizon (the source's 117k -> 108k, ~7.7%),
    long liquidations (>80% of the liquidated notional is long), open interest falls."""
    _, _, m, _, _ = accident
    ok = (
        (m["dd_spot"] >= 0.05)
        & (m["dd_spot"] <= 0.11)
        & (m["liq_total"] > 0)
        & (np.nan_to_num(m["liq_long_frac"]) > 0.8)
        & (m["oi_end"] < m["oi_start"])
    )
    msg = _report(
        "accident",
        ok,
        dd=m["dd_spot"],
        liq=m["liq_total"] / 1e6,
        long_frac=m["liq_long_frac"],
        oi_change=m["oi_change"],
    )
    assert _frac(ok) >= MIN_FRACTION, msg


def test_accident_without_whale_is_clearly_smaller(accident, accident_no_whale):
    """Same seeds without the whale's block: drawdown at most 60% of the baseline's and
    strictly fewer liquidations (liquidated notional)."""
    _, _, m0, _, _ = accident
    _, _, m1, _, _ = accident_no_whale
    ok = (m1["dd_spot"] <= 0.6 * m0["dd_spot"]) & (m1["liq_total"] < m0["liq_total"])
    msg = _report(
        "accident no whale",
        ok,
        dd_base=m0["dd_spot"],
        dd_nowhale=m1["dd_spot"],
        liq_base=m0["liq_total"] / 1e6,
        liq_nowhale=m1["liq_total"] / 1e6,
    )
    assert _frac(ok) >= MIN_FRACTION, msg


# SCENARIOS.md's whale sells "~2% of OI-equivalent"; the baseline's block (175 BASE) is
# ~19% of the ~920 BASE long OI. With a source-sized block (`source_whale`: 19 BASE) the
# dip is the outflows' and the noise's (median 1.9%, 1.1-3.2% over the tests' seeds): the
# block's own venue impact is ~0.4% (2.2M USDT at 20 bps per M) and its spot-book dip
# refills, while the most levered cohorts' liquidation levels sit 2-4% below the price, so
# no seed liquidates anything. For a 2% block to start the cascade, the market must
# already sit within ~0.5% of the first liquidation cluster when the block arrives (or
# the block must be worked far more aggressively into a much thinner book); a thinner
# spot book alone (lp_depth 0.5-0.8) deepened the dip to ~3.5% and still liquidated
# nothing. Measured with the event log's `liq_notional_long` and `dd_spot`.
@pytest.mark.xfail(
    strict=True,
    reason="a source-sized (2% of OI) whale does not start the cascade: no liquidations, "
    "median drawdown 1.9% on the tests' seeds (see the comment above)",
)
def test_accident_with_a_source_sized_whale():
    """The accident's signature with the whale's block at SCENARIOS.md's ~2% of OI."""
    _, _, m, _, _ = _run("leverage_accident", "source_whale", ACCIDENT_TICKS)
    ok = (
        (m["dd_spot"] >= 0.05)
        & (m["dd_spot"] <= 0.11)
        & (m["liq_total"] > 0)
        & (np.nan_to_num(m["liq_long_frac"]) > 0.8)
    )
    msg = _report("accident source whale", ok, dd=m["dd_spot"], liq=m["liq_total"] / 1e6)
    assert _frac(ok) >= MIN_FRACTION, msg


@pytest.fixture(scope="module")
def accident_cap():
    return _run("leverage_accident", "leverage_cap_10x", ACCIDENT_TICKS)


def test_accident_leverage_cap_fewer_liquidations(accident, accident_cap):
    """Under a 10x cap (same equity, positions sized at 10x) fewer notional is liquidated
    (same seeds)."""
    _, _, m0, _, _ = accident
    _, _, m1, _, _ = accident_cap
    ok = m1["liq_total"] < m0["liq_total"]
    msg = _report("cap 10x liq", ok, liq_cap=m1["liq_total"] / 1e6, liq=m0["liq_total"] / 1e6)
    assert _frac(ok) >= MIN_FRACTION, msg


# The cap's drawdown is smaller because the cascade, not only the whale, moves the price:
# the exchange is a share of the wider market (`exogenous.venue_impact_bps_per_musdt: 20`,
# 6 h half-life), so the liquidated longs' sales move the venues' price, and through the
# index the mark, as the whale's and the outflows' do. Under the cap no long is liquidated
# and the drawdown is the whale's and the outflows' part alone. Measured (`pytest -rP`):
# median 0.46x the baseline's on these seeds, <= 0.6x in 15/16; on four sets of 16 seeds
# (base seeds 0, 1000, 2000, 3000) in 15, 13, 15 and 16.
# Before the venues answered to the flow here, the drawdown was the spot grid's floor
# whatever the cap (0.99x): `engine._recentre` stops following a book ~8,000 USDT under
# the venues' price, and the whale's unlimited slices printed at the grid's lowest level.
def test_accident_leverage_cap_smaller_drawdown(accident, accident_cap):
    """Under a 10x cap (same equity, positions sized at 10x) the drawdown is at most 60% of
    the baseline's (same seeds)."""
    _, _, m0, _, _ = accident
    _, _, m1, _, _ = accident_cap
    ok = m1["dd_spot"] <= 0.6 * m0["dd_spot"]
    msg = _report("cap 10x dd", ok, dd_cap=m1["dd_spot"], dd=m0["dd_spot"])
    assert _frac(ok) >= MIN_FRACTION, msg


def test_accident_funding_positive_then_normalises(accident):
    """Funding well above baseline while the longs are crowded (the 3 h before the whale),
    closer to baseline in the last 3 h, after the flush."""
    params, ev, _, _, _ = accident
    base = float(params.rules.funding_interest)
    t_whale = int(3 * 3600 / float(params.dt))
    before = ev["funding_rate"][:, :t_whale].mean(-1)
    after = ev["funding_rate"][:, -t_whale:].mean(-1)
    ok = (before > 1.5 * base) & (np.abs(after - base) < np.abs(before - base))
    msg = _report("accident funding", ok, before_x_base=before / base, after_x_base=after / base)
    assert _frac(ok) >= MIN_FRACTION, msg


# ============================================================== rule change forces a market maker out

RULE_TICKS = 720  # 6 h at 30 s; announced at 1 h, enforced at 2 h


@pytest.fixture(scope="module")
def rule_change():
    return _run("rule_change_deleverage", None, RULE_TICKS)


@pytest.fixture(scope="module")
def rule_change_none():
    return _run("rule_change_deleverage", "no_rule_change", RULE_TICKS)


@pytest.fixture(scope="module")
def rule_change_grandfathered():
    return _run("rule_change_deleverage", "grandfathered", RULE_TICKS)


def _enforcement_tick(params) -> int:
    return int(round(7200.0 / float(params.dt)))


def test_rule_change_signature(rule_change):
    """Perp's drop leads spot's; basis hits a negative extreme within the hour after
    enforcement; arbitrage volume spikes."""
    params, ev, _, _, _ = rule_change
    t0 = _enforcement_tick(params)
    hour = int(3600 / float(params.dt))
    spot = mt.facts_series(ev, "spot_mid")
    # The forced sale and the arbitrageurs' reaction can land in the same tick, so "leads"
    # is: the perp crosses -1% (from just before enforcement) no later than spot, and two
    # ticks into enforcement it has fallen further than spot.
    ref = t0 - 1
    perp_rel = ev["perp_px"][:, ref:] / ev["perp_px"][:, ref : ref + 1]
    spot_rel = spot[:, ref:] / spot[:, ref : ref + 1]
    lead = mt.lead_lag(perp_rel, spot_rel, 0.99, relative=False)
    first_move = perp_rel[:, 3] < spot_rel[:, 3]
    basis = ev["basis"]
    after_min = basis[:, t0 : t0 + hour].min(-1)
    before_min = basis[:, :t0].min(-1)
    arb_after = ev["arb_volume"][:, t0 : t0 + hour].sum(-1)
    arb_before = ev["arb_volume"][:, t0 - hour : t0].sum(-1)
    ok = (
        (lead >= 0)
        & first_move
        & (after_min < -0.005)
        & (after_min < before_min)
        & (arb_after >= 5 * np.maximum(arb_before, 1e-3))
    )
    msg = _report(
        "rule change",
        ok,
        lead=lead,
        basis_after=after_min,
        basis_before=before_min,
        arb_after=arb_after,
        arb_before=arb_before,
    )
    assert _frac(ok) >= MIN_FRACTION, msg


def test_rule_change_spot_drawdown_vs_counterfactuals(
    rule_change, rule_change_none, rule_change_grandfathered
):
    """Spot drawdown several (>= 3) times the no-rule-change run's; grandfathering the
    existing positions at least halves it (same seeds)."""
    _, _, m, _, _ = rule_change
    _, _, m0, _, _ = rule_change_none
    _, _, mg, _, _ = rule_change_grandfathered
    ok = (m["dd_spot"] >= 3 * np.maximum(m0["dd_spot"], 0.003)) & (
        mg["dd_spot"] <= 0.5 * m["dd_spot"]
    )
    msg = _report(
        "rule change counterfactuals",
        ok,
        dd=m["dd_spot"],
        dd_none=m0["dd_spot"],
        dd_grandfathered=mg["dd_spot"],
    )
    assert _frac(ok) >= MIN_FRACTION, msg


def test_rule_change_phased_enforcement_dampens(rule_change):
    """The same target reached in ten 15-minute steps: the spot drawdown is at most 0.6x the
    one-step enforcement's (same seeds)."""
    _, _, m, _, _ = rule_change
    _, _, mp, _, _ = _run("rule_change_deleverage", "phased_enforcement", RULE_TICKS)
    ok = mp["dd_spot"] <= 0.6 * m["dd_spot"]
    msg = _report("phased", ok, dd_phased=mp["dd_spot"], dd=m["dd_spot"])
    assert _frac(ok) >= MIN_FRACTION, msg


# ============================================================== the market maker's harvest

PUMP_TICKS = 720  # 6 h at 30 s: build 0-40 min, pump 40 min-3.5 h, flip 3.5-4 h, dump 4-5.5 h


@pytest.fixture(scope="module")
def pump():
    return _run("mm_pump_dump", None, PUMP_TICKS)


def _phases(params):
    k = 1.0 / float(params.dt)
    return int(2400 * k), int(12600 * k), int(14400 * k)


def test_pump_dump_price_funding_and_liquidation_waves(pump):
    """A multi-fold (>= 2x) pump then a crash; funding at its most negative within the
    first pump leg (40 min - 3 h); short liquidations during the pump, long liquidations
    during the dump."""
    params, ev, _, _, _ = pump
    t_pump, t_flip, t_dump = _phases(params)
    t3 = int(3 * 3600 / float(params.dt))  # end of the first pump leg
    px = ev["spot_px"]
    peak = px.max(-1) / px[:, 0]
    crash = px[:, -1] / px.max(-1)
    f = ev["funding_rate"]
    t_min_f = f.argmin(-1)
    liq_s_pump = ev["liq_notional_short"][:, t_pump:t_flip].sum(-1)
    liq_l_dump = ev["liq_notional_long"][:, t_flip:].sum(-1)
    # Waves: at least two bursts of short liquidations, 5 min or more apart.
    waves = np.array(
        [
            _bursts(x, int(300 / float(params.dt)))
            for x in ev["liq_notional_short"][:, t_pump:t_flip]
        ]
    )
    ok = (
        (peak >= 2.0)
        & (crash <= 0.5)
        & (t_min_f >= t_pump)
        & (t_min_f < t3)
        & (f.min(-1) < 0)
        & (liq_s_pump > 0)
        & (waves >= 2)
        & (liq_l_dump > 0)
    )
    msg = _report(
        "pump/dump",
        ok,
        peak=peak,
        crash=crash,
        t_min_funding=t_min_f,
        liq_short_pump=liq_s_pump / 1e6,
        short_waves=waves,
        liq_long_dump=liq_l_dump / 1e6,
    )
    assert _frac(ok) >= MIN_FRACTION, msg


def _bursts(x: np.ndarray, gap: int) -> int:
    """Number of runs of nonzero ticks separated by at least `gap` ticks."""
    t = np.flatnonzero(x > 0)
    return 0 if len(t) == 0 else 1 + int((np.diff(t) >= gap).sum())


def test_pump_funding_negative_again_before_the_dump(pump):
    """ "Funding most negative during the first pump leg and again just before the dump":
    in the last half hour of the pump and the flip (3-4 h) funding is negative again and
    reaches at least a quarter of the first leg's (40 min - 3 h) trough."""
    params, ev, _, _, _ = pump
    t_pump, _, t_dump = _phases(params)
    t3 = int(3 * 3600 / float(params.dt))
    f = ev["funding_rate"]
    first = f[:, t_pump:t3].min(-1)
    again = f[:, t3:t_dump].min(-1)
    ok = (first < 0) & (again < 0) & (again <= 0.25 * first)
    msg = _report("pump funding again", ok, first=first * 1e4, again=again * 1e4)
    assert _frac(ok) >= MIN_FRACTION, msg


def test_pump_dump_manipulator_profits_retail_loses(pump):
    """Manipulator PnL > 0 and aggregate retail PnL < 0: marked equity (wallet, external
    wallets, resting spot orders, uPnL) at the end against the start, every retail cohort
    (perp and spot) summed."""
    params, ev, _, _, _ = pump
    eq = ev["equity"]
    manip = eq[:, -1, 1] - eq[:, 0, 1]
    retail_ids = np.flatnonzero(np.asarray(params.pop.kind) == BEH_RETAIL)
    assert len(retail_ids) == 6  # four perp cohorts, two spot cohorts
    retail = (eq[:, -1, retail_ids] - eq[:, 0, retail_ids]).sum(-1)
    ok = (manip > 0) & (retail < 0)
    msg = _report("pump pnl", ok, manip=manip / 1e6, retail=retail / 1e6)
    assert _frac(ok) >= MIN_FRACTION, msg


def _squeeze(params, ev):
    """(short liquidations during the pump, perp peak / start) per seed."""
    t_pump, t_flip, _ = _phases(params)
    liq = ev["liq_notional_short"][:, t_pump:t_flip].sum(-1)
    perp = ev["perp_px"]
    return liq, perp.max(-1) / perp[:, 0]


def _smaller_squeeze(pump, variant, peak_lower: bool):
    """Shorts' liquidations during the pump at most half the baseline's and a smaller
    manipulator profit (docs/scenarios.md: "smaller squeeze and smaller manipulator profit");
    with `peak_lower`, also a lower perp peak."""
    params, ev0, _, _, _ = pump
    _, ev1, _, _, _ = _run("mm_pump_dump", variant, PUMP_TICKS)
    liq0, peak0 = _squeeze(params, ev0)
    liq1, peak1 = _squeeze(params, ev1)
    manip0 = ev0["equity"][:, -1, 1] - ev0["equity"][:, 0, 1]
    manip1 = ev1["equity"][:, -1, 1] - ev1["equity"][:, 0, 1]
    ok = (liq1 <= 0.5 * liq0) & (manip1 < manip0)
    if peak_lower:
        ok = ok & (peak1 < peak0)
    msg = _report(
        f"pump {variant}",
        ok,
        liq_short=liq1 / 1e6,
        liq_short_base=liq0 / 1e6,
        manip=manip1 / 1e6,
        manip_base=manip0 / 1e6,
        perp_peak=peak1,
        perp_peak_base=peak0,
    )
    return ok, msg


def test_pump_mark_ignoring_internal_spot_shrinks_the_squeeze(pump):
    """A mark (index) from the external venues only: the perp does not follow the pumped
    thin spot book, so the shorts' liquidations during the pump at least halve, the
    manipulator profits less and the perp peaks lower (same seeds)."""
    ok, msg = _smaller_squeeze(pump, "mark_ignores_internal", peak_lower=True)
    assert _frac(ok) >= MIN_FRACTION, msg


def test_pump_depth_scaled_limits_shrink_the_squeeze(pump):
    """Position limits scaled to the perp book's depth: the contrarians' shorts and the
    manipulator's long stay small, so the squeeze's liquidations at least halve and the
    manipulator profits less (same seeds). The perp peak is not asserted: the perp follows
    the index, the pumped spot book, which a perp position limit does not touch."""
    ok, msg = _smaller_squeeze(pump, "depth_scaled_limits", peak_lower=False)
    assert _frac(ok) >= MIN_FRACTION, msg
