"""Hand-computed cases for `jaxsim.prices` (docs/mechanics.md sections 1-2): funding rate and
payment, premium index, impact notional, mark price, index.

Every expected number is either printed in docs/mechanics.md or derived by hand in the comment
next to it. The engine runs in float32, so tolerances are stated per quantity:

- prices around 1e5 USDT: absolute 0.05 USDT (float32 spacing at 1e5 is ~0.008);
- rates around 1e-4: absolute 1e-9 (float32 relative precision ~6e-8).

The `rules` fixture (BTCUSDT rules of the testbed) is in tests/engine/conftest.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from support import f32

from jaxsim import prices

PX_TOL = 0.05  # USDT, prices ~1e5
RATE_TOL = 1e-9  # funding / premium rates
H = 3600.0


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
    assert float(rules.funding_cap) == 0.0  # `cap: auto` in the config: computed at use
    cap = float(prices.funding_cap(rules.funding_cap, rules.tier_mmr[0], rules.tier_max_lev[0]))
    assert cap == pytest.approx(0.003, abs=RATE_TOL)
    # P = 1%: F8 = 1% - 0.05% = 0.95% -> capped to +0.30%; P = -1% -> -0.30%.
    assert rate(0.01, cap=cap) == pytest.approx(0.003, abs=RATE_TOL)
    assert rate(-0.01, cap=cap) == pytest.approx(-0.003, abs=RATE_TOL)
    # Just inside the cap it does not bind: P = 0.3% -> 0.25%.
    assert rate(0.003, cap=cap) == pytest.approx(0.0025, abs=RATE_TOL)


@pytest.mark.parametrize(
    "cap, mmr1, max_lev1, expected",
    [
        (0.0, 0.004, 125.0, 0.003),  # auto, BTC table: 0.75 x 0.40% = 0.30%
        (0.0, 0.01, 50.0, 0.0075),  # auto, 50x at 1%: 0.75 x 1% = 0.75%
        (0.0, 0.02, 25.0, 0.03),  # auto at <= 25x: 3% (MECHANICS 1.1, 5), not 0.75 x 2%
        (0.0, 0.025, 20.0, 0.03),
        (0.02, 0.004, 125.0, 0.02),  # a cap set in the rules is kept
        (0.02, 0.02, 20.0, 0.02),
    ],
)
def test_funding_cap_auto_from_tier1(cap, mmr1, max_lev1, expected):
    got = float(prices.funding_cap(f32(cap), f32(mmr1), f32(max_lev1)))
    assert got == pytest.approx(expected, abs=RATE_TOL)


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


def test_index_two_legs_clip_around_the_redemption_leg():
    # STABLE as in collateral_depeg's fixed_index (floor left out): 0.2 internal, 0.8
    # redemption at 1, clip 3%, internal print 0.65. The clip reference is the legs other
    # than the internal book (here the redemption leg alone, 1.0), so the print is capped
    # at 0.97: 0.2 x 0.97 + 0.8 x 1.0 = 0.194 + 0.8 = 0.994. Clipping around the two legs'
    # midpoint 0.825 instead capped the print at 0.80025 and the redemption leg at 0.84975:
    # 0.2 x 0.80025 + 0.8 x 0.84975 = 0.83985, below even the unclipped 0.93.
    c = [1.0, 1.0, 1.0, 0.65, 1.0]
    w = [0.0, 0.0, 0.0, 0.2, 0.8]
    assert _index(c, w, clip=0.03) == pytest.approx(0.994, abs=1e-6)
    # The LST default (0.2 internal, 0.8 conversion, clip 3%), the print of the blend test
    # below: 60,000 capped at 0.97 x 105,000 = 101,850;
    # 0.2 x 101,850 + 0.8 x 105,000 = 20,370 + 84,000 = 104,370 (the midpoint gave 83,985).
    c = [0.0, 0.0, 0.0, 60000.0, 105000.0]
    assert _index(c, w, clip=0.03) == pytest.approx(104370.0, abs=PX_TOL)
    # A print inside the band is not clipped: 103,000 >= 101,850:
    # 0.2 x 103,000 + 0.8 x 105,000 = 20,600 + 84,000 = 104,600.
    c = [0.0, 0.0, 0.0, 103000.0, 105000.0]
    assert _index(c, w, clip=0.03) == pytest.approx(104600.0, abs=PX_TOL)


def test_index_venues_set_the_clip_reference_not_the_internal_book():
    # Venues 100,000 / 100,100 / 99,900 (0.2 / 0.15 / 0.15) and internal 90,000 (0.5),
    # clip 5%: the reference is the venues' median, 100,000, so the print is capped at
    # 95,000: 0.2 x 100,000 + 0.15 x 100,100 + 0.15 x 99,900 + 0.5 x 95,000
    # = 20,000 + 15,015 + 14,985 + 47,500 = 97,500.
    c = [100000.0, 100100.0, 99900.0, 90000.0, 0.0]
    w = [0.2, 0.15, 0.15, 0.5, 0.0]
    assert _index(c, w, clip=0.05) == pytest.approx(97500.0, abs=PX_TOL)
    # An index on the internal book alone clips around that book (nothing else to use).
    c = [100000.0, 100000.0, 100000.0, 90000.0, 0.0]
    w = [0.0, 0.0, 0.0, 1.0, 0.0]
    assert _index(c, w, clip=0.01) == pytest.approx(90000.0, abs=PX_TOL)


def test_index_wrapped_token_blend():
    # MECHANICS 2.4: C = 0.2 x internal + 0.8 x conversion leg. Internal LST print 60,000
    # (thin book), conversion 1.05 x 100,000 = 105,000, clip 100% (no clipping):
    # 0.2 x 60,000 + 0.8 x 105,000 = 12,000 + 84,000 = 96,000.
    c = [0.0, 0.0, 0.0, 60000.0, 105000.0]
    w = [0.0, 0.0, 0.0, 0.2, 0.8]
    assert _index(c, w, clip=1.0) == pytest.approx(96000.0, abs=PX_TOL)
