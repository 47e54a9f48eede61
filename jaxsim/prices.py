"""Index, mark and funding formulas (docs/mechanics.md sections 1 and 2)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxsim.ops import sum_last

Array = jax.Array

SECONDS_PER_8H = 8.0 * 3600.0


def _sorted_cols(x: Array) -> list[Array]:
    """The last axis of x sorted ascending, as a list of columns: odd-even transposition
    (elementwise min / max) for a short axis, instead of a sort op."""
    cols = [x[..., i] for i in range(x.shape[-1])]
    n = len(cols)
    for p in range(n):
        for i in range(p % 2, n - 1, 2):
            cols[i], cols[i + 1] = (
                jnp.minimum(cols[i], cols[i + 1]),
                jnp.maximum(cols[i], cols[i + 1]),
            )
    return cols


def masked_median(x: Array, active: Array) -> Array:
    """Median over the last axis of the entries where `active` (at least one per row):
    the middle one, or the mean of the two middle ones (as `jnp.nanmedian` with the
    inactive entries NaN)."""
    cols = _sorted_cols(jnp.where(active, x, jnp.inf))
    k = sum_last(active.astype(jnp.int32))
    lo_i, hi_i = (k - 1) // 2, k // 2
    lo = sum(jnp.where(lo_i == i, c, 0.0) for i, c in enumerate(cols))
    hi = sum(jnp.where(hi_i == i, c, 0.0) for i, c in enumerate(cols))
    return 0.5 * (lo + hi)


def median3(a: Array, b: Array, c: Array) -> Array:
    """Median of three (elementwise)."""
    return jnp.maximum(jnp.minimum(a, b), jnp.minimum(jnp.maximum(a, b), c))


def index_price(constituents: Array, weights: Array, clip: Array, floor: Array) -> Array:
    """Weighted index with outlier clipping and an optional floor.

    Args:
      constituents: (..., C) prices in the order venues..., internal spot, redemption
        (the internal one, second to last, is the exchange's own book).
      weights: (..., C) non-negative weights; constituents with weight 0 are ignored,
        also for the clip reference. Weights are renormalised over the constituents present.
      clip: (...) each constituent is clipped to ref * (1 +/- clip) (Binance's newer
        rule: cap, not drop), ref = `clip_reference`.
      floor: (...) index = max(index, floor); 0 means no floor.
    """
    active = weights > 0
    # Rules are validated to keep weights summing to 1; should a row still have no active
    # constituent, fall back to equal weights rather than produce NaN.
    none = ~active.any(-1, keepdims=True)
    active = active | none
    weights = jnp.where(none, 1.0, weights)
    ref = clip_reference(constituents, active)
    lo = ref * (1.0 - clip)
    hi = ref * (1.0 + clip)
    clipped = jnp.clip(constituents, lo[..., None], hi[..., None])
    w = jnp.where(active, weights, 0.0)
    idx = sum_last(w * clipped) / jnp.maximum(sum_last(w), 1e-12)
    return jnp.maximum(idx, floor)


def clip_reference(constituents: Array, active: Array) -> Array:
    """The price the index clips around: the median of the active constituents other than
    the internal book (second to last), or the internal book alone when nothing else is
    active.

    The internal book is left out because it is the one constituent that the exchange's
    own forced sales print on (MECHANICS 2.4): with it in the median, a two-leg index
    (internal + redemption) clips around their midpoint, which drags the heavy, sound leg
    toward the bad print (0.2 x 0.65 + 0.8 x 1.0 with a 3% clip gave 0.840, below even the
    unclipped 0.93). Among the venues and the redemption leg the median is Binance's
    (unweighted) one, so a venue-only index is unchanged. A weighted median was not
    chosen: shipped weights tie exactly (venues 0.2 / 0.1 / 0.1: the two 0.1 legs hold
    half), where its pick jumps from one leg to another on a rounding of the sums.
    """
    internal = jnp.arange(constituents.shape[-1]) == constituents.shape[-1] - 2
    outside = active & ~internal
    ref_set = jnp.where(outside.any(-1, keepdims=True), outside, active)
    return masked_median(constituents, ref_set)


def mark_price(
    index: Array,
    last: Array,
    basis_ma: Array,
    funding_rate: Array,
    time_to_funding_s: Array,
    funding_interval_s: Array,
) -> Array:
    """Binance mark: median(P1, P2, last).

    P1 = index * (1 + F * time_to_funding / interval); P2 = index + MA(basis).
    """
    p1 = index * (1.0 + funding_rate * time_to_funding_s / funding_interval_s)
    p2 = index + basis_ma
    return median3(p1, p2, last)


def premium_index(impact_bid: Array, impact_ask: Array, index: Array) -> Array:
    """P = [max(0, ImpactBid - idx) - max(0, idx - ImpactAsk)] / idx."""
    return (jnp.maximum(0.0, impact_bid - index) - jnp.maximum(0.0, index - impact_ask)) / index


def funding_rate(
    avg_premium: Array, interest_8h: Array, clamp_8h: Array, cap: Array, interval_s: Array
) -> Array:
    """F = [P + clamp(I - P, -c, +c)] / (8h / interval), then capped to +/- cap.

    avg_premium is the time-weighted premium over the interval (a per-sample fraction, as
    on Binance); interest and clamp are per 8 h; cap is per interval.
    """
    f8 = avg_premium + jnp.clip(interest_8h - avg_premium, -clamp_8h, clamp_8h)
    f = f8 * (interval_s / SECONDS_PER_8H)
    return jnp.clip(f, -cap, cap)


# The automatic cap (`rules.funding.cap: auto`, MECHANICS 1.1 and 5): 0.75 x the tier-1
# maintenance rate, or 3% once tier 1 allows at most 25x.
AUTO_CAP_MMR_MULT = 0.75
AUTO_CAP_LOW_LEV = 25.0
AUTO_CAP_LOW_LEV_CAP = 0.03


def funding_cap(cap: Array, mmr1: Array, max_lev1: Array) -> Array:
    """|F| cap per interval in force: `cap` when set (> 0); 0 means auto, computed from the
    tier-1 maintenance rate and max leverage of the rules in force, so a scheduled change
    of the bracket table moves it (as Binance's cap follows a bracket change)."""
    auto = jnp.where(max_lev1 <= AUTO_CAP_LOW_LEV, AUTO_CAP_LOW_LEV_CAP, AUTO_CAP_MMR_MULT * mmr1)
    return jnp.where(cap > 0, cap, auto)


def funding_payment(pos: Array, mark: Array, rate: Array) -> Array:
    """Cash received by each position at settlement: -Q * mark * F (longs pay when F > 0)."""
    return -pos * mark * rate
