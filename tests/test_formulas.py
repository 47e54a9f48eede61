"""Hand-computed cases for the pure formulas (MECHANICS.md sections 1-4).

Every expected number is either printed in MECHANICS.md or derived by hand in the comment
next to it. The engine runs in float32, so tolerances are stated per quantity:

- prices around 1e5 USDT: absolute 0.05 USDT (float32 spacing at 1e5 is ~0.008);
- rates around 1e-4: absolute 1e-9 (float32 relative precision ~6e-8);
- USDT amounts up to 4.3e8 (tier `cum`): relative 2e-6 (float32 spacing at 4e8 is 32).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest
from support import TESTBED

import jaxsim
from jaxsim import book, margin, prices

PX_TOL = 0.05  # USDT, prices ~1e5
RATE_TOL = 1e-9  # funding / premium rates
H = 3600.0


def f32(x):
    return jnp.asarray(np.asarray(x, np.float64), jnp.float32)


@pytest.fixture(scope="module")
def rules():
    """BTCUSDT rules as loaded from configs (calm scenario)."""
    return jaxsim.load_scenario(TESTBED).rules


def rate(avg_premium, *, interest=1e-4, clamp=5e-4, cap=3e-3, interval_h=8.0):
    return float(
        prices.funding_rate(
            f32(avg_premium), f32(interest), f32(clamp), f32(cap), f32(interval_h * H)
        )
    )


# ------------------------------------------------------------------ funding (1.1)


@pytest.mark.parametrize("p_bar", [0.0, 3e-4, -3.9e-4, 5.9e-4, 1e-4, -2e-4])
def test_funding_inside_clamp_band_snaps_to_interest(p_bar):
    # |I - P| <= 0.05%  =>  F = P + (I - P) = I = 0.01% exactly (the modal "0.0100%").
    assert rate(p_bar) == pytest.approx(1e-4, abs=RATE_TOL)


@pytest.mark.parametrize(
    "p_bar, expected",
    [
        (2e-3, 2e-3 - 5e-4),  # I - P = -0.19% -> clamped to -0.05%: F = P - 0.05% = 0.15%
        (-1e-3, -1e-3 + 5e-4),  # I - P = +0.11% -> clamped to +0.05%: F = P + 0.05% = -0.05%
        (8e-4, 8e-4 - 5e-4),  # I - P = -0.07% -> F = 0.03%
        (-6e-4, -6e-4 + 5e-4),  # I - P = +0.07% -> F = -0.01%
    ],
)
def test_funding_outside_band_is_premium_plus_minus_clamp(p_bar, expected):
    assert rate(p_bar) == pytest.approx(expected, abs=RATE_TOL)


def test_funding_cap_binds_at_075_mmr1(rules):
    # Cap = 0.75 x MMR1 = 0.75 x 0.40% = 0.30% for the BTC table (MECHANICS 1.1).
    cap = float(rules.funding_cap)
    assert cap == pytest.approx(0.003, abs=RATE_TOL)
    # P = 1%: F8 = 1% - 0.05% = 0.95% -> capped to +0.30%; P = -1% -> -0.30%.
    assert rate(0.01, cap=cap) == pytest.approx(0.003, abs=RATE_TOL)
    assert rate(-0.01, cap=cap) == pytest.approx(-0.003, abs=RATE_TOL)
    # Just inside the cap it does not bind: P = 0.3% -> 0.25%.
    assert rate(0.003, cap=cap) == pytest.approx(0.0025, abs=RATE_TOL)


@pytest.mark.parametrize(
    "interval_h, p_bar, expected",
    [
        (4.0, 2e-3, (2e-3 - 5e-4) / 2),  # 4 h pays half the 8 h formula: 0.075%
        (1.0, 2e-3, (2e-3 - 5e-4) / 8),  # 1 h pays 1/8: 0.01875%
        (4.0, 0.0, 1e-4 / 2),  # baseline interest per 4 h: 0.005%
        (1.0, 0.0, 1e-4 / 8),  # baseline interest per 1 h: 0.00125% (HL's hourly I)
    ],
)
def test_funding_interval_scaling(interval_h, p_bar, expected):
    # F = [P + clamp(I - P, +/-0.05%)] / (8 / N) (MECHANICS 1.1, since 2025-09).
    assert rate(p_bar, interval_h=interval_h) == pytest.approx(expected, abs=RATE_TOL)


def test_funding_payment_sign_and_zero_sum():
    # funding_i = -Q_i * mark * F. Book: +2, -1.5, -0.5 BTC at mark 100,000, F = +0.01%.
    pos = f32([2.0, -1.5, -0.5])
    pay = np.asarray(prices.funding_payment(pos, f32(100000.0), f32(1e-4)), np.float64)
    # long pays 2 * 1e5 * 1e-4 = 20; shorts receive 15 and 5.
    np.testing.assert_allclose(pay, [-20.0, 15.0, 5.0], atol=1e-3)
    assert abs(pay.sum()) < 1e-3
    # F < 0: shorts pay longs.
    pay_neg = np.asarray(prices.funding_payment(pos, f32(100000.0), f32(-1e-4)))
    np.testing.assert_allclose(pay_neg, [20.0, -15.0, -5.0], atol=1e-3)


# ------------------------------------------------------------------ premium and impact


@pytest.mark.parametrize(
    "ib, ia, expected",
    [
        (100100.0, 100200.0, 100.0 / 1e5),  # perp rich: (ImpactBid - idx) / idx = +0.1%
        (99800.0, 99900.0, -100.0 / 1e5),  # perp cheap: -(idx - ImpactAsk) / idx = -0.1%
        (99950.0, 100050.0, 0.0),  # index inside the impact spread: P = 0
    ],
)
def test_premium_index(ib, ia, expected):
    p = float(prices.premium_index(f32(ib), f32(ia), f32(100000.0)))
    assert p == pytest.approx(expected, abs=1e-8)


def test_impact_notional_btc(rules):
    # IMN = 200 USDT / IMR at max leverage = 200 x 125 = 25,000 USDT (MECHANICS 1.1).
    imn = float(rules.imn_quote * rules.tier_max_lev[0])
    assert imn == pytest.approx(25000.0)


def test_impact_price_book_walk():
    # A 6-level grid, tick 50: prices 99,900 .. 100,150.
    px = f32([99900.0, 99950.0, 100000.0, 100050.0, 100100.0, 100150.0])
    asks = f32([0.0, 0.0, 0.0, 0.1, 0.1, 1.0])
    bids = f32([1.0, 0.2, 0.05, 0.0, 0.0, 0.0])
    # Buy 25,000 USDT: 0.1 @ 100,050 (10,005) + 0.1 @ 100,100 (10,010), then the remaining
    # 4,985 USDT at 100,150 = 0.049775... BTC. Average = 25,000 / total qty.
    q_ask = 0.1 + 0.1 + 4985.0 / 100150.0
    exp_ask = 25000.0 / q_ask  # = 100,085.04...
    ia = float(book.impact_price(asks, px, 1, f32(25000.0)))
    assert ia == pytest.approx(exp_ask, abs=PX_TOL)
    # Sell 25,000 USDT walks bids downwards: 0.05 @ 100,000 (5,000) + 0.2 @ 99,950 (19,990),
    # then 10 USDT at 99,900.
    q_bid = 0.05 + 0.2 + 10.0 / 99900.0
    exp_bid = 25000.0 / q_bid  # = 99,959.98...
    ib = float(book.impact_price(bids, px, -1, f32(25000.0)))
    assert ib == pytest.approx(exp_bid, abs=PX_TOL)
    # Premium with index 100,000: impact bid < idx < impact ask -> 0. With index 99,900:
    # (ImpactBid - 99,900) / 99,900.
    assert float(prices.premium_index(f32(ib), f32(ia), f32(100000.0))) == pytest.approx(
        0.0, abs=1e-9
    )
    p = float(prices.premium_index(f32(ib), f32(ia), f32(99900.0)))
    assert p == pytest.approx((exp_bid - 99900.0) / 99900.0, abs=1e-6)
    # A notional inside the first level fills at that level's price.
    assert float(book.impact_price(asks, px, 1, f32(5000.0))) == pytest.approx(100050.0, abs=PX_TOL)
    # An empty side has no impact price.
    assert math.isnan(float(book.impact_price(f32(np.zeros(6)), px, 1, f32(25000.0))))


# ------------------------------------------------------------------ mark price (2.1)


def _mark(index, last, basis_ma, f, ttf_h, interval_h=8.0):
    return float(
        prices.mark_price(
            f32(index), f32(last), f32(basis_ma), f32(f), f32(ttf_h * H), f32(interval_h * H)
        )
    )


def test_mark_median_p1():
    # P1 = 1e5 * (1 + 0.03% * 4/8) = 100,015; P2 = 1e5 + 10 = 100,010; last = 100,020.
    # Sorted: 100,010 < 100,015 < 100,020 -> P1.
    assert _mark(1e5, 100020.0, 10.0, 3e-4, 4.0) == pytest.approx(100015.0, abs=PX_TOL)


def test_mark_median_p2():
    # P1 = 100,015; P2 = 1e5 + 30 = 100,030; last = 100,050 -> P2.
    assert _mark(1e5, 100050.0, 30.0, 3e-4, 4.0) == pytest.approx(100030.0, abs=PX_TOL)


def test_mark_median_last():
    # P1 = 100,015; P2 = 100,030; last = 100,020 -> last.
    assert _mark(1e5, 100020.0, 30.0, 3e-4, 4.0) == pytest.approx(100020.0, abs=PX_TOL)


def test_mark_ignores_a_perp_wick():
    # A wick of the last price to 90,000 does not move the mark below min(P1, P2):
    # P1 = 1e5 * (1 + 0.01% * 2/8) = 100,002.5; P2 = 1e5 - 5 = 99,995 -> mark = P2.
    assert _mark(1e5, 90000.0, -5.0, 1e-4, 2.0) == pytest.approx(99995.0, abs=PX_TOL)


# ------------------------------------------------------------------ index (2.2)


def _index(c, w, clip=0.01, floor=0.0):
    return float(prices.index_price(f32(c), f32(w), f32(clip), f32(floor)))


def test_index_weighted_constituents():
    # 0.5 x 100,000 + 0.25 x 100,100 + 0.25 x 99,800 = 50,000 + 25,025 + 24,950 = 99,975.
    c = [100000.0, 100100.0, 99800.0, 0.0, 0.0]
    w = [0.5, 0.25, 0.25, 0.0, 0.0]
    assert _index(c, w) == pytest.approx(99975.0, abs=PX_TOL)


def test_index_clips_outlier_at_median():
    # Venues 100,000 / 103,000 / 99,900, median 100,000, clip 1% -> 103,000 capped at
    # 101,000: 0.4 x 100,000 + 0.3 x 101,000 + 0.3 x 99,900 = 40,000 + 30,300 + 29,970.
    c = [100000.0, 103000.0, 99900.0, 0.0, 0.0]
    w = [0.4, 0.3, 0.3, 0.0, 0.0]
    assert _index(c, w) == pytest.approx(100270.0, abs=PX_TOL)
    # Low outlier: 95,000 floored at 99,000: 40,000 + 0.3 x 100,100 + 0.3 x 99,000.
    c = [100000.0, 100100.0, 95000.0, 0.0, 0.0]
    assert _index(c, w) == pytest.approx(40000.0 + 30030.0 + 29700.0, abs=PX_TOL)


def test_index_zero_weight_constituents_ignored_also_for_median():
    # Active: 100,000 (0.5), 101,500 (0.25), 100,500 (0.25); median of the active ones is
    # 100,500, band [99,495, 101,505] clips nothing: 50,000 + 25,375 + 25,125 = 100,500.
    # If the zero-weight internal (50,000) and redemption (1.0) legs entered the median it
    # would be 100,000, 101,500 would be capped at 101,000 and the index would be 100,375.
    c = [100000.0, 101500.0, 100500.0, 50000.0, 1.0]
    w = [0.5, 0.25, 0.25, 0.0, 0.0]
    assert _index(c, w) == pytest.approx(100500.0, abs=PX_TOL)


def test_index_floor():
    # STABLE priced off its internal book at 0.90 with floor 0.95 -> 0.95; floor 0 = none.
    c = [1.0, 1.0, 1.0, 0.90, 1.0]
    w = [0.0, 0.0, 0.0, 1.0, 0.0]
    assert _index(c, w, clip=0.03, floor=0.95) == pytest.approx(0.95, abs=1e-6)
    assert _index(c, w, clip=0.03, floor=0.0) == pytest.approx(0.90, abs=1e-6)
    # A floor below the index does nothing.
    assert _index(c, w, clip=0.03, floor=0.5) == pytest.approx(0.90, abs=1e-6)


def test_index_wrapped_token_blend():
    # MECHANICS 2.4: C = 0.2 x internal + 0.8 x conversion leg. Internal LST print 60,000
    # (thin book), conversion 1.05 x 100,000 = 105,000, clip 100% (no clipping):
    # 0.2 x 60,000 + 0.8 x 105,000 = 12,000 + 84,000 = 96,000.
    c = [0.0, 0.0, 0.0, 60000.0, 105000.0]
    w = [0.0, 0.0, 0.0, 0.2, 0.8]
    assert _index(c, w, clip=1.0) == pytest.approx(96000.0, abs=PX_TOL)


# ------------------------------------------------------------------ tiers (3.1, 3.2)

BTC_CUM = [
    0,
    50,
    950,
    11_450,
    131_450,
    481_450,
    2_981_450,
    14_481_450,
    26_481_450,
    41_481_450,
    121_481_450,
    421_481_450,
]  # MECHANICS 3.2 cum column [READ]


def test_tier_cum_reproduces_btcusdt_table(rules):
    cum = np.asarray(margin.tier_cum(rules.tier_floor, rules.tier_mmr), np.float64)
    assert cum.shape == (12,)
    np.testing.assert_allclose(cum, BTC_CUM, rtol=2e-6, atol=1e-3)


def test_tier_cum_recursion_older_table():
    # 2021 BTC table (MECHANICS 3.2): cum = 0 / 50 / 1,300 / 16,300 / 266,300.
    # 1,300 = 50 + 250k x (1% - 0.5%); 16,300 = 1,300 + 1M x (2.5% - 1%);
    # 266,300 = 16,300 + 10M x (5% - 2.5%).
    floor = f32([0, 50_000, 250_000, 1_000_000, 10_000_000])
    mmr = f32([0.004, 0.005, 0.01, 0.025, 0.05])
    cum = np.asarray(margin.tier_cum(floor, mmr), np.float64)
    np.testing.assert_allclose(cum, [0, 50, 1300, 16300, 266300], rtol=2e-6, atol=1e-3)


@pytest.mark.parametrize(
    "notional, expected",
    [
        (10_000.0, 10_000 * 0.004),  # tier 1: 40
        (100_000.0, 100_000 * 0.005 - 50),  # tier 2: 450
        (1_000_000.0, 1_000_000 * 0.0065 - 950),  # tier 3: 5,550
        (20_000_000.0, 20e6 * 0.02 - 131_450),  # tier 5: 268,550
    ],
)
def test_maint_margin_values(rules, notional, expected):
    mm = float(margin.maint_margin(f32(notional), rules))
    assert mm == pytest.approx(expected, rel=2e-6, abs=1e-3)


def test_maint_margin_continuous_at_tier_boundaries(rules):
    floors = np.asarray(rules.tier_floor, np.float64)[1:]
    at = np.asarray(margin.maint_margin(f32(floors), rules), np.float64)
    below = np.asarray(margin.maint_margin(f32(floors * (1 - 1e-6)), rules), np.float64)
    # Left limit: floor x MMR_{k-1} - cum_{k-1}, equal to floor x MMR_k - cum_k by the
    # cum recursion. E.g. at 50,000: 50,000 x 0.4% = 200 = 50,000 x 0.5% - 50.
    mmr = np.asarray(rules.tier_mmr, np.float64)
    left = floors * mmr[:-1] - np.asarray(BTC_CUM[:-1], np.float64)
    np.testing.assert_allclose(at, left, rtol=1e-5)
    # Crossing the boundary changes MM only by the notional step times MMR (1e-6 x floor x MMR),
    # not by a jump of (MMR_k - MMR_{k-1}) x floor.
    jump = floors * (mmr[1:] - mmr[:-1])
    assert np.all(np.abs(at - below) < 0.05 * jump)
    assert float(margin.maint_margin(f32(50_000.0), rules)) == pytest.approx(200.0, abs=1e-3)


@pytest.mark.parametrize(
    "notional, lev",
    [
        (10_000.0, 125),
        (49_999.0, 125),
        (50_000.0, 100),
        (1_000_000.0, 75),
        (50_000_000.0, 25),
        (150_000_000.0, 10),
        (2_000_000_000.0, 1),
    ],
)
def test_max_leverage(rules, notional, lev):
    # Tiers are [floor_n, floor_{n+1}): 50k is already tier 2 (100x).
    assert float(margin.max_leverage(f32(notional), rules)) == lev


# ------------------------------------------------------------------ liquidation price (3.4)


def test_isolated_liquidation_price_long(rules):
    # LP = (WB + cum - s|Q|EP) / (|Q| MMR - s|Q|) = (10,000 + 50 - 100,000) / (0.005 - 1)
    #    = 89,950 / 0.995 = 90,402.01 (MECHANICS 3.4: 90,402.0).
    lp = float(margin.liquidation_price_isolated(f32(1.0), f32(1e5), f32(10_000.0), rules))
    assert lp == pytest.approx(89_950 / 0.995, abs=PX_TOL)
    assert lp == pytest.approx(90_402.0, abs=0.05)
    # At LP, equity = margin + Q (LP - EP) equals MM (tier 2 at 90,402 notional).
    equity = 10_000.0 + (lp - 1e5)
    mm = float(margin.maint_margin(f32(lp), rules))
    assert equity == pytest.approx(lp * 0.005 - 50, abs=0.05)
    assert equity == pytest.approx(mm, abs=0.05)


def test_isolated_liquidation_price_short(rules):
    # (10,000 + 50 + 100,000) / (0.005 + 1) = 110,050 / 1.005 = 109,502.49 (MECHANICS: 109,502.5).
    lp = float(margin.liquidation_price_isolated(f32(-1.0), f32(1e5), f32(10_000.0), rules))
    assert lp == pytest.approx(110_050 / 1.005, abs=PX_TOL)
    equity = 10_000.0 - (lp - 1e5)
    assert equity == pytest.approx(float(margin.maint_margin(f32(lp), rules)), abs=0.05)


def test_isolated_liquidation_price_solves_tier_consistently(rules):
    # 7 BTC long at 100,000 (700k, tier 3) with 350,000 margin. Tier 3 would give
    # (350,000 + 950 - 700,000) / (7 x 0.0065 - 7) = 50,190.5 -> 351k notional = tier 2.
    # Re-solving in tier 2: (350,000 + 50 - 700,000) / (7 x 0.005 - 7) = 349,950 / 6.965.
    lp = float(margin.liquidation_price_isolated(f32(7.0), f32(1e5), f32(350_000.0), rules))
    assert lp == pytest.approx(349_950 / 6.965, abs=PX_TOL)  # 50,244.08
    equity = 350_000.0 + 7 * (lp - 1e5)
    assert equity == pytest.approx(float(margin.maint_margin(f32(7 * lp), rules)), abs=0.1)


def test_bankruptcy_price():
    # Long 1 @ 100,000 with 10,000 margin: at mark 95,000 equity = 5,000, so
    # p_bk = 95,000 - 5,000 / 1 = 90,000 = EP - margin / Q (the LP formula with MMR = cum = 0).
    assert float(margin.bankruptcy_price(f32(1.0), f32(95_000.0), f32(5_000.0))) == pytest.approx(
        90_000.0, abs=PX_TOL
    )
    # The short: equity at 95,000 = 15,000, p_bk = 95,000 + 15,000 = 110,000 = EP + margin / |Q|.
    assert float(margin.bankruptcy_price(f32(-1.0), f32(95_000.0), f32(15_000.0))) == pytest.approx(
        110_000.0, abs=PX_TOL
    )
    # 0.4 BTC long, equity -2,000 at mark 90,000: p_bk = 90,000 + 5,000 = 95,000 (above mark).
    assert float(margin.bankruptcy_price(f32(0.4), f32(90_000.0), f32(-2_000.0))) == pytest.approx(
        95_000.0, abs=PX_TOL
    )
    # No position: the mark.
    assert float(margin.bankruptcy_price(f32(0.0), f32(95_000.0), f32(1.0))) == pytest.approx(
        95_000.0, abs=PX_TOL
    )


# ------------------------------------------------------------------ ADL ranking (4.4)


def test_adl_ranking():
    # Longs at mark 110,000 (position level: PnL% x EffLev if profitable, PnL% / EffLev if not;
    # EffLev = |mark value| / equity):
    #   A: 1 @ 100,000, equity 20,000: PnL% 10%,    EffLev 5.5  -> 0.55
    #   B: 2 @ 105,000, equity 11,000: PnL% 4.762%, EffLev 20   -> 0.952
    #   C: 1 @  90,000, equity 110,000: PnL% 22.2%, EffLev 1    -> 0.222
    #   D: 1 @ 120,000, equity 50,000: PnL% -8.33%, EffLev 2.2  -> -0.0379
    #   E: 1 @ 115,000, equity 5,000:  PnL% -4.35%, EffLev 22   -> -0.00198
    #   F: no position -> never picked.
    pos = f32([1.0, 2.0, 1.0, 1.0, 1.0, 0.0])
    entry = f32([100_000, 105_000, 90_000, 120_000, 115_000, 0.0])
    eq = f32([20_000, 11_000, 110_000, 50_000, 5_000, 1_000])
    s = np.asarray(margin.adl_score(pos, entry, f32(110_000.0), eq), np.float64)
    expected = [
        0.1 * 5.5,
        (10_000 / 210_000) * 20,
        (20_000 / 90_000) * 1.0,
        (-10_000 / 120_000) / 2.2,
        (-5_000 / 115_000) / 22,
    ]
    np.testing.assert_allclose(s[:5], expected, rtol=1e-5)
    assert s[5] == -np.inf
    order = list(np.argsort(-s))
    assert order == [1, 0, 2, 4, 3, 5]
    # Every loss-making position ranks below every profitable one.
    assert s[[0, 1, 2]].min() > s[[3, 4]].max()


def test_adl_ranking_shorts():
    # Shorts at mark 90,000: S1 -1 @ 100,000 equity 2,000 -> PnL% 10%, EffLev 45 -> 4.5;
    # S2 -1 @ 100,000 equity 90,000 -> 10% x 1 = 0.1; S3 -1 @ 85,000 (losing) -> < 0.
    pos = f32([-1.0, -1.0, -1.0])
    entry = f32([100_000, 100_000, 85_000])
    eq = f32([2_000, 90_000, 10_000])
    s = np.asarray(margin.adl_score(pos, entry, f32(90_000.0), eq), np.float64)
    np.testing.assert_allclose(s[:2], [4.5, 0.1], rtol=1e-5)
    assert s[2] < 0 < s[1] < s[0]


# ------------------------------------------------------------------ perp fills


def _fill(pos, entry, dq, px):
    p, e, r = margin.apply_perp_fill(f32(pos), f32(entry), f32(dq), f32(px))
    return float(p), float(e), float(r)


def test_apply_perp_fill_add_averages_entry():
    # 1 @ 100,000 + 1 @ 110,000 -> 2 @ 105,000, nothing realized.
    p, e, r = _fill(1.0, 100_000.0, 1.0, 110_000.0)
    assert (p, r) == (2.0, 0.0)
    assert e == pytest.approx(105_000.0, abs=PX_TOL)
    # Short adds: -1 @ 100,000 + -3 @ 96,000 -> -4 @ (100,000 + 288,000) / 4 = 97,000.
    p, e, r = _fill(-1.0, 100_000.0, -3.0, 96_000.0)
    assert p == -4.0 and r == 0.0
    assert e == pytest.approx(97_000.0, abs=PX_TOL)
    # From flat: the fill price.
    p, e, r = _fill(0.0, 0.0, 2.0, 100_000.0)
    assert (p, r) == (2.0, 0.0)
    assert e == pytest.approx(100_000.0, abs=PX_TOL)


def test_apply_perp_fill_reduce_realizes_pnl():
    # 2 @ 105,000, sell 0.5 @ 110,000: realized 0.5 x 5,000 = 2,500; entry unchanged.
    p, e, r = _fill(2.0, 105_000.0, -0.5, 110_000.0)
    assert p == pytest.approx(1.5)
    assert e == pytest.approx(105_000.0, abs=PX_TOL)
    assert r == pytest.approx(2_500.0, abs=0.01)
    # Short -2 @ 100,000, buy 1 @ 90,000: realized +10,000.
    p, e, r = _fill(-2.0, 100_000.0, 1.0, 90_000.0)
    assert p == pytest.approx(-1.0)
    assert e == pytest.approx(100_000.0, abs=PX_TOL)
    assert r == pytest.approx(10_000.0, abs=0.01)
    # Full close of a long at a loss: 1 @ 100,000 sold at 97,000 -> -3,000, flat.
    p, e, r = _fill(1.0, 100_000.0, -1.0, 97_000.0)
    assert p == 0.0
    assert r == pytest.approx(-3_000.0, abs=0.01)


def test_apply_perp_fill_flip_opens_remainder_at_fill_price():
    # 1 @ 100,000, sell 3 @ 95,000: closes 1 (realized -5,000), opens -2 @ 95,000.
    p, e, r = _fill(1.0, 100_000.0, -3.0, 95_000.0)
    assert p == pytest.approx(-2.0)
    assert e == pytest.approx(95_000.0, abs=PX_TOL)
    assert r == pytest.approx(-5_000.0, abs=0.01)
    # Short flip: -0.5 @ 100,000, buy 2 @ 98,000: realized +1,000, long 1.5 @ 98,000.
    p, e, r = _fill(-0.5, 100_000.0, 2.0, 98_000.0)
    assert p == pytest.approx(1.5)
    assert e == pytest.approx(98_000.0, abs=PX_TOL)
    assert r == pytest.approx(1_000.0, abs=0.01)


# ------------------------------------------------------------------ book re-quote


def _fifo_book(rng, n_levels=6, n_owners=5):
    """One side of a random book with disjoint FIFO queue intervals per level."""
    q = np.where(
        rng.random((n_levels, n_owners)) < 0.6, rng.uniform(0.1, 2.0, (n_levels, n_owners)), 0.0
    )
    ahead = np.zeros_like(q)
    for g in range(n_levels):
        pos = 0.0
        for a in rng.permutation(n_owners):
            if q[g, a] > 0:
                ahead[g, a] = pos
                pos += q[g, a]
    return q.astype(np.float64), ahead


@pytest.mark.parametrize("seed", range(5))
def test_requote_equals_cancel_then_add(seed):
    """The LP's one-pass re-quote = cancel_levels then add_levels, level by level: a cut
    moves those queued behind forward by the cut, a top-up sends the whole order to the back."""
    rng = np.random.default_rng(seed)
    sides = [_fifo_book(rng) for _ in range(2)]
    q = np.stack([s[0] for s in sides])
    ah = np.stack([s[1] for s in sides])
    owner = 2
    own = q[..., owner]
    tgt = np.where(
        rng.random(own.shape) < 0.5,
        own * rng.uniform(0, 1, own.shape),
        own + rng.uniform(0, 1, own.shape),
    )
    tgt = np.where(rng.random(own.shape) < 0.2, own, tgt)  # some levels unchanged
    cut = np.maximum(own - tgt, 0.0)
    add = np.where(cut > 0, 0.0, np.maximum(tgt - own, 0.0))
    assert (cut > 0).any() and (add > 0).any() and ((own > 0) & (add > 0)).any()
    q_new, ah_new = book.requote(
        jnp.asarray(q), jnp.asarray(ah), owner, jnp.asarray(cut), jnp.asarray(add)
    )
    for s in range(2):
        qs, as_, c = book.cancel_levels(
            jnp.asarray(q[s]), jnp.asarray(ah[s]), owner, jnp.asarray(cut[s])
        )
        qs, as_ = book.add_levels(qs, as_, owner, jnp.asarray(add[s]))
        np.testing.assert_allclose(np.asarray(q_new[s]), np.asarray(qs), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(np.asarray(ah_new[s]), np.asarray(as_), rtol=1e-6, atol=1e-6)
    # A topped-up level puts the owner behind everyone else there.
    g = np.argwhere((own[0] > 0) & (add[0] > 0))
    if len(g):
        lvl = g[0, 0]
        others = np.delete(q[0, lvl], owner).sum()
        assert float(ah_new[0, lvl, owner]) == pytest.approx(others, rel=1e-6)
