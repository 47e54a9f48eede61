"""Hand-computed cases for `jaxsim.margin` (docs/mechanics.md sections 3-4): tiers, maintenance
margin, max leverage, liquidation and bankruptcy prices, ADL ranking, perp fills.

Every expected number is either printed in docs/mechanics.md or derived by hand in the comment
next to it. The engine runs in float32, so tolerances are stated per quantity:

- prices around 1e5 USDT: absolute 0.05 USDT (float32 spacing at 1e5 is ~0.008);
- USDT amounts up to 4.3e8 (tier `cum`): relative 2e-6 (float32 spacing at 4e8 is 32).

The `rules` fixture (BTCUSDT rules of the testbed) is in tests/engine/conftest.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from support import f32

from jaxsim import margin

PX_TOL = 0.05  # USDT, prices ~1e5


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
