"""Arbitrageur role: spot and perp legs (basis / funding trades) and cross-venue transfers."""

from __future__ import annotations

from typing import ClassVar

import jax
import jax.numpy as jnp

from envs.core import EnvParams, EnvState, RoleEnv, book_view, order_rows, settings_struct
from jaxsim.mechanisms.accounts import asset_prices, taker_rate_of
from jaxsim.types import (
    BASE,
    KIND_MARKET,
    KIND_NONE,
    KIND_TRANSFER_IN,
    KIND_TRANSFER_OUT,
    PERP,
    SPOT,
    USDT,
    Orders,
)

Array = jax.Array


@settings_struct
class ArbitrageurSettings:
    """Arbitrageur settings.

    Attributes:
        max_spot_frac: largest spot BASE holding, x initial equity / BASE index (action +1).
        max_perp_frac: largest perp position, x initial equity / BASE index (action +/-1).
        rebalance_frac: trades and transfers smaller than this x initial equity are not
            sent (no dust, no wasted transfer slots).
        transfer_deadband: |a| below this moves nothing; above, the fraction moved is
            (|a| - deadband) / (1 - deadband).
        slippage_guard: each leg is an immediate-or-cancel limit order at most this far
            past the touch seen (buys: best ask x (1 + this), sells: best bid x (1 - this));
            what the book does not offer within it is not filled. 0.2% [EST]: what a
            desk's limit gives up past the touch it saw (calm's spreads are 7-10 bp; a
            leg priced off a book that has since moved further is not filled).
    """

    max_spot_frac: float = 1.0
    max_perp_frac: float = 1.0
    rebalance_frac: float = 0.01
    transfer_deadband: float = 0.2
    slippage_guard: float = 0.002

    _ranges: ClassVar[dict] = {
        "max_spot_frac": (0.0, 100.0),
        "max_perp_frac": (0.0, 100.0),
        "rebalance_frac": (0.0, 1.0),
        "transfer_deadband": (0.0, 0.99),
        "slippage_guard": (0.0, 1.0),
    }


class Arbitrageur(RoleEnv):
    """Basis / funding / cross-venue arbitrageur.

    Holds BASE on the internal spot book and a perp position (long spot + short perp earns
    a positive basis and positive funding), and moves BASE and USDT between the exchange
    and the external venues; a transfer arrives after the rule `withdrawal_delay_s`
    (the engine keeps it in flight, valued in the equity meanwhile). Spot is long-only
    (no borrowing).

    The account trades at the fee schedule of a high-volume arbitrage desk (`learner_fees`:
    Binance USDⓈ-M VIP9, maker 0.000%, taker 0.017%, on both books; docs/mechanics.md 6)
    unless the scenario gives it rates of its own. Its orders reach the book one tick after
    the observation they answer (after the venues, the LP and the background traders have
    moved), so each leg is an immediate-or-cancel limit order bounded by `slippage_guard`
    past the touch seen, not an unbounded market order: a leg whose price has gone is not
    filled, rather than filled wherever the book now is. Both legs' targets are BASE
    quantities converted at the BASE index, so a spot target and a perp target of equal
    and opposite size are an exactly hedged pair (as far as both fill).

    Observation: float32 (D,) with D = len(obs_names) = 49 common + 4 role entries
    ((N, D) for N learners; every entry clipped to [-10, 10]):

    {common}
    {role_obs}

    Action: float32 (4,) in [-1, 1]; values outside are clipped, NaN counts as 0 (adapters
    raise ValueError on NaN/inf, a wrong shape or a non-float dtype):
        0 spot_target    spot BASE target = max(a, 0) x max_spot_frac x initial equity /
                         BASE index; the difference is bought (capped by the USDT that pays
                         for it at the limit price and taker fee) or sold (capped by the
                         BASE held), limit best ask x (1 + slippage_guard) for a buy, best
                         bid x (1 - slippage_guard) for a sale
        1 perp_target    perp position target = a x max_perp_frac x initial equity / BASE
                         index; the difference is traded, limited the same way
        2 base_transfer  v = sign(a) x max(|a| - deadband, 0) / (1 - deadband): v > 0 sends
                         v x free BASE to the external venues, v < 0 brings |v| x external
                         BASE back
        3 usdt_transfer  the same for USDT (the engine refuses withdrawals that would break
                         the initial margin)
    Orders per step (4 rows): [spot, perp, BASE transfer, USDT transfer], the legs as
    market orders with the limit above (the engine's immediate-or-cancel walk, reason
    `no_liquidity` when nothing is offered within it); legs smaller than rebalance_frac x
    initial equity are not sent.

    Reward: () = (marked equity after - before) / initial equity (external and in-flight
    balances count at index prices).

    Termination: liquidated by the engine or marked equity <= min_equity_frac x initial
    (see `RoleEnv`). Truncation: `max_steps_in_episode` steps.
    """

    role = "arbitrageur"
    settings_cls = ArbitrageurSettings
    # A high-volume desk's rates: Binance USDⓈ-M futures VIP9, maker 0.000% / taker
    # 0.017% (docs/mechanics.md 6). The engine charges an account one schedule on both
    # books; Binance's spot VIP9 rates are of the same order [EST: its published tables
    # give 0.009-0.02% maker and 0.018-0.03% taker, BNB discount included or not].
    learner_fees: ClassVar[dict] = {"maker": 0.0, "taker": 0.00017}
    action_names = ("spot_target", "perp_target", "base_transfer", "usdt_transfer")
    orders_per_agent = 4
    role_obs = (
        ("ext_base", "BASE on external venues x index / initial equity"),
        ("ext_usdt", "USDT on external venues / initial equity"),
        ("transit_out", "value in flight towards the external venues / initial equity"),
        ("transit_in", "value in flight towards the exchange / initial equity"),
    )

    def decode_one(
        self, action: Array, state: EnvState, params: EnvParams, account: Array
    ) -> Orders:
        s = params.role
        sim, sp = state.sim, params.sim
        dtype = sp.dt.dtype
        a = action.astype(dtype)
        eq0 = state.equity0[account]
        acct = sim.acct
        bal, ext = acct.bal[account], acct.ext_bal[account]
        index = sim.px.index[0]
        min_val = s.rebalance_frac * eq0
        fee = taker_rate_of(sim, sp, account)
        # Both targets are BASE quantities converted at the BASE index, so equal and opposite
        # actions (with equal max fractions) are exactly hedged legs.
        unit = eq0 / jnp.maximum(index, 1e-12)

        spot_bid, spot_ask, _, _, _ = book_view(sim, sp, SPOT, exclude=account)
        tgt_spot = jnp.maximum(a[0], 0.0) * s.max_spot_frac * unit
        d_spot = tgt_spot - bal[BASE]
        spot_buy = d_spot > 0
        spot_side = jnp.where(spot_buy, 1, -1)
        # Immediate-or-cancel limit: at most slippage_guard beyond the touch seen.
        spot_px = jnp.where(
            spot_buy, spot_ask * (1.0 + s.slippage_guard), spot_bid * (1.0 - s.slippage_guard)
        )
        afford = jnp.maximum(bal[USDT], 0.0) / (spot_px * (1.0 + fee))
        q_spot = jnp.where(
            spot_buy, jnp.minimum(d_spot, afford), jnp.minimum(-d_spot, jnp.maximum(bal[BASE], 0.0))
        )
        spot_kind = jnp.where(q_spot * index >= min_val, KIND_MARKET, KIND_NONE)

        perp_bid, perp_ask, _, _, _ = book_view(sim, sp, PERP, exclude=account)
        tgt_perp = a[1] * s.max_perp_frac * unit
        d_perp = tgt_perp - acct.pos[account]
        perp_side = jnp.where(d_perp > 0, 1, -1)
        perp_px = jnp.where(
            d_perp > 0, perp_ask * (1.0 + s.slippage_guard), perp_bid * (1.0 - s.slippage_guard)
        )
        perp_kind = jnp.where(jnp.abs(d_perp) * index >= min_val, KIND_MARKET, KIND_NONE)

        px = asset_prices(sim.px)
        db = s.transfer_deadband

        def transfer(u, asset):
            v = jnp.sign(u) * jnp.maximum(jnp.abs(u) - db, 0.0) / (1.0 - db)
            out = v > 0
            qty = jnp.where(
                out, v * jnp.maximum(bal[asset], 0.0), -v * jnp.maximum(ext[asset], 0.0)
            )
            kind = jnp.where(out, KIND_TRANSFER_OUT, KIND_TRANSFER_IN)
            kind = jnp.where(qty * px[asset] >= jnp.maximum(min_val, 1e-12), kind, KIND_NONE)
            return kind, qty

        kb, qb = transfer(a[2], BASE)
        ku, qu = transfer(a[3], USDT)
        z = jnp.zeros((), dtype)
        return order_rows(
            account,
            market=[SPOT, PERP, BASE, USDT],
            side=[spot_side, perp_side, 0, 0],
            kind=[spot_kind, perp_kind, kb, ku],
            qty=[q_spot, jnp.abs(d_perp), qb, qu],
            price=[spot_px, perp_px, z, z],
            dtype=dtype,
        )

    def role_features(
        self, state: EnvState, params: EnvParams, account: Array, equity0: Array
    ) -> dict[str, Array]:
        acct = state.sim.acct
        px = asset_prices(state.sim.px)
        amt = jnp.where(acct.transit_amt[account] > 0, acct.transit_amt[account], 0.0)
        val = amt * px[acct.transit_asset[account]]
        inbound = acct.transit_in[account]
        return {
            "ext_base": acct.ext_bal[account, BASE] * px[BASE] / equity0,
            "ext_usdt": acct.ext_bal[account, USDT] / equity0,
            "transit_out": jnp.sum(jnp.where(inbound, 0.0, val)) / equity0,
            "transit_in": jnp.sum(jnp.where(inbound, val, 0.0)) / equity0,
        }
