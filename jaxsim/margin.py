"""Margin formulas (docs/mechanics.md section 3): tiers, maintenance amount, equity, prices.

All functions are elementwise over leading axes and jittable.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxsim import book as bk
from jaxsim.ops import sum_last
from jaxsim.types import CROSS, ExchangeRules

Array = jax.Array


def tier_cum(tier_floor: Array, tier_mmr: Array) -> Array:
    """Maintenance amounts: cum_0 = 0, cum_n = cum_{n-1} + floor_n * (MMR_n - MMR_{n-1})."""
    d_mmr = jnp.diff(tier_mmr, prepend=tier_mmr[:1])
    return jnp.cumsum(tier_floor * d_mmr)


def tier_index(notional: Array, tier_floor: Array) -> Array:
    """Index of the tier a notional falls into (tiers are [floor_n, floor_{n+1}))."""
    n = jnp.sum(notional[..., None] >= tier_floor, axis=-1) - 1
    return jnp.clip(n, 0, tier_floor.shape[0] - 1)


def maint_margin(notional: Array, rules: ExchangeRules) -> Array:
    """MM = N * MMR_tier(N) - cum_tier(N) (continuous in N)."""
    k = tier_index(notional, rules.tier_floor)
    cum = tier_cum(rules.tier_floor, rules.tier_mmr)
    return notional * rules.tier_mmr[k] - cum[k]


def max_leverage(notional: Array, rules: ExchangeRules) -> Array:
    return rules.tier_max_lev[tier_index(notional, rules.tier_floor)]


def position_limit_in_force(rules: ExchangeRules, perp_q: Array, perp_px: Array) -> Array:
    """Notional limit on position-increasing perp orders, given the perp book (qty, level
    prices): the rule's `position_limit`, and with `depth_limit_mult > 0` at most
    max(`depth_limit_floor`, mult x the book's USDT depth within +/- `depth_limit_band` of
    its mid, both sides)."""
    depth = bk.depth_notional(perp_q, perp_px, rules.depth_limit_band)
    dyn = jnp.maximum(rules.depth_limit_floor, rules.depth_limit_mult * depth)
    return jnp.where(
        rules.depth_limit_mult > 0,
        jnp.minimum(rules.position_limit, dyn),
        rules.position_limit,
    )


def collateral_value(bal: Array, debt: Array, asset_px: Array, haircut: Array) -> Array:
    """Haircut value of wallet balances (A, 4) minus debts valued in full, in USDT.

    Positive balances count at price * (1 - haircut); negative balances and debts at price.
    """
    pos_part = jnp.maximum(bal, 0.0) * asset_px * (1.0 - haircut)
    neg_part = jnp.minimum(bal, 0.0) * asset_px
    return sum_last(pos_part + neg_part - debt * asset_px)


def wallet_value(bal: Array, debt: Array, asset_px: Array) -> Array:
    """Unhaircut value of balances minus debts (what the account is really worth)."""
    return sum_last((bal - debt) * asset_px)


def margin_balance(
    bal: Array,
    debt: Array,
    pos: Array,
    entry: Array,
    iso_margin: Array,
    mode: Array,
    asset_px: Array,
    mark: Array,
    haircut: Array,
) -> Array:
    """MB = collateral value + uPnL at mark (cross) or isolated margin + uPnL (isolated)."""
    upnl = pos * (mark - entry)
    cross = collateral_value(bal, debt, asset_px, haircut) + upnl
    iso = iso_margin + upnl
    return jnp.where(mode == CROSS, cross, iso)


def liquidation_price_isolated(
    qty: Array, entry: Array, margin: Array, rules: ExchangeRules, max_iter: int = 4
) -> Array:
    """Binance one-way isolated liquidation price, tier solved consistently.

    LP = (WB + cum - s|Q|EP) / (|Q| MMR - s|Q|), s = sign(Q); the tier depends on the
    notional at LP, so iterate: start from the tier at entry and re-solve at LP's tier.
    """
    s = jnp.sign(qty)
    q = jnp.abs(qty)
    cum_all = tier_cum(rules.tier_floor, rules.tier_mmr)

    def solve(k):
        mmr, cum = rules.tier_mmr[k], cum_all[k]
        return (margin + cum - s * q * entry) / (q * mmr - s * q)

    lp = solve(tier_index(q * entry, rules.tier_floor))
    for _ in range(max_iter):
        lp = solve(tier_index(q * jnp.abs(lp), rules.tier_floor))
    return lp


def bankruptcy_price(pos: Array, mark: Array, equity: Array) -> Array:
    """Price at which the position's account equity is zero: equity + Q (p - mark) = 0."""
    safe_q = jnp.where(pos == 0, 1.0, pos)
    return jnp.where(pos == 0, mark, mark - equity / safe_q)


def adl_score(pos: Array, entry: Array, mark: Array, equity: Array) -> Array:
    """Position-level ADL rank score (BitMEX/Poloniex style, MECHANICS 4.4).

    PnL% = uPnL / |entry value|; effective leverage = |mark value| / equity;
    score = PnL% * EffLev if PnL% > 0 else PnL% / EffLev. Higher is deleveraged first.
    Accounts without a position or with non-positive equity score -inf / +inf sensibly:
    no position -> -inf (never picked); equity <= 0 with profit -> very large.
    """
    entry_val = jnp.abs(pos) * entry
    pnl_pct = pos * (mark - entry) / jnp.maximum(entry_val, 1e-12)
    eff_lev = jnp.abs(pos) * mark / jnp.maximum(equity, 1e-12)
    score = jnp.where(pnl_pct > 0, pnl_pct * eff_lev, pnl_pct / jnp.maximum(eff_lev, 1e-12))
    return jnp.where(pos == 0, -jnp.inf, score)


def isolated_fill(
    pos: Array, entry: Array, margin: Array, lev: Array, dq: Array, px: Array
) -> tuple[Array, Array, Array]:
    """Isolated margin moves of a perp fill dq at px: (wallet USDT change, new isolated
    margin, the insurance fund's USDT change).

    Realized PnL lands in the position's margin. Closing a fraction of the position
    returns that fraction of a positive margin to the wallet (a negative one stays with
    what is left of the position, for the liquidation engine). Closing all of it (to zero
    or through zero) settles the whole margin: a surplus goes to the wallet, a deficit
    (the position lost more than its margin) is paid by the insurance fund, as when the
    liquidation engine closes it: an isolated position's loss is capped at its margin
    (MECHANICS 3.3) and no negative margin outlives the position. Any increase (the new
    side of a flip in full) moves `increase x px / lev` from the wallet into the margin.
    """
    same = pos * dq >= 0
    closed = jnp.where(same, 0.0, jnp.minimum(jnp.abs(dq), jnp.abs(pos)))
    realized = closed * (px - entry) * jnp.sign(pos)
    new_pos = pos + dq
    all_closed = (~same) & (jnp.abs(dq) >= jnp.abs(pos))
    increase = jnp.where(
        all_closed, jnp.abs(new_pos), jnp.maximum(jnp.abs(new_pos) - jnp.abs(pos), 0.0)
    )
    m1 = margin + realized
    frac = closed / jnp.maximum(jnp.abs(pos), 1e-30)
    release = jnp.where(all_closed, jnp.maximum(m1, 0.0), jnp.maximum(m1, 0.0) * frac)
    fund = jnp.where(all_closed, jnp.minimum(m1, 0.0), 0.0)
    add_im = increase * px / jnp.maximum(lev, 1.0)
    return release - add_im, m1 - release - fund + add_im, fund


def apply_perp_fill(pos: Array, entry: Array, dq: Array, px: Array) -> tuple[Array, Array, Array]:
    """New (position, entry, realized PnL) after trading dq at average price px.

    Adding to a position averages the entry; reducing realizes PnL on the closed part at
    px; crossing zero opens the remainder at px.
    """
    same = (pos * dq) >= 0
    closed = jnp.where(same, 0.0, jnp.minimum(jnp.abs(dq), jnp.abs(pos)))
    realized = closed * (px - entry) * jnp.sign(pos)
    new_pos = pos + dq
    grow_entry = (jnp.abs(pos) * entry + jnp.abs(dq) * px) / jnp.maximum(jnp.abs(new_pos), 1e-30)
    flipped = (~same) & (jnp.abs(dq) > jnp.abs(pos))
    new_entry = jnp.where(same, grow_entry, jnp.where(flipped, px, entry))
    new_entry = jnp.where(new_pos == 0, 0.0, new_entry)
    return new_pos, new_entry, realized
