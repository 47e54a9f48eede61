"""Hand-computed cases for `jaxsim.book` (docs/mechanics.md section 1.1): the impact price's book
walk, and the LP's one-pass re-quote against cancel-then-add.

Every expected number is either printed in docs/mechanics.md or derived by hand in the comment
next to it. The engine runs in float32, so tolerances are stated per quantity:

- prices around 1e5 USDT: absolute 0.05 USDT (float32 spacing at 1e5 is ~0.008).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest
from support import f32

from jaxsim import book, prices

PX_TOL = 0.05  # USDT, prices ~1e5


# ------------------------------------------------------------------ impact price (1.1)


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
