"""Leveraged trader role: target perp position, leverage and collateral mix."""

from __future__ import annotations

from typing import ClassVar

import jax
import jax.numpy as jnp

from envs.core import LEV_SCALE, EnvParams, EnvState, RoleEnv, order_rows, settings_struct
from jaxsim import margin as mg
from jaxsim.mechanisms.accounts import asset_prices, margin_balances, taker_rate_of
from jaxsim.types import (
    KIND_MARKET,
    KIND_NONE,
    KIND_SET_LEVERAGE,
    LST,
    LST_SPOT,
    PERP,
    STABLE,
    STABLE_SPOT,
    USDT,
    Orders,
)

Array = jax.Array


@settings_struct
class LeveragedTraderSettings:
    """Leveraged trader settings.

    Attributes:
        max_leverage: the leverage chosen at action +1 (capped by the tier-1 max leverage
            in force).
        margin_buffer: the position target uses (1 - this) of the margin balance, so that
            fees and haircuts do not get full-size orders rejected.
        leverage_step: a leverage change smaller than this is not sent.
        max_collateral_frac: largest share of the wallet held in STABLE or in LST.
        rebalance_frac: trades smaller than this x initial equity are not sent.
        slippage_guard: market orders fill no worse than the reference x (1 +/- this).
    """

    max_leverage: float = 20.0
    margin_buffer: float = 0.05
    leverage_step: float = 0.5
    max_collateral_frac: float = 1.0
    rebalance_frac: float = 0.01
    slippage_guard: float = 0.01

    _ranges: ClassVar[dict] = {
        "max_leverage": (1.0, 125.0),
        "margin_buffer": (0.0, 0.99),
        "leverage_step": (0.0, 125.0),
        "max_collateral_frac": (0.0, 1.0),
        "rebalance_frac": (0.0, 1.0),
        "slippage_guard": (0.0, 1.0),
    }


class LeveragedTrader(RoleEnv):
    """Directional trader with chosen leverage and a multi-asset collateral wallet.

    Must survive cascades: liquidation ends the episode. Collateral (USDT, STABLE, LST)
    is bought and sold on the exchange's own spot books, so a depeg moves both its price
    and the margin it provides (after the haircut in force).

    Fees: the venue's regular schedule (`rules.fees`, Binance USDⓈ-M VIP0 by default:
    maker 0.02%, taker 0.05%); `learner_fees` is empty, unlike the market maker's: a
    retail account has no liquidity-provider programme, and VIP levels follow 30-day
    volume that an account starting an episode has no record of (docs/mechanics.md 6).
    A scenario row may still give the account its own rates (`accounts.users[].fees`);
    the decoding sizes its orders with the rate the account pays (`taker_rate_of`).
    Every trade is a market order, so each one pays the taker fee and crosses half the
    spread: in calm about 5 bp + 5 bp of the mark per side (measured; see
    `agents.heuristics` for what that leaves a directional rule).

    Observation: float32 (D,) with D = len(obs_names) = 49 common + 4 role entries
    ((N, D) for N learners; every entry clipped to [-10, 10]):

    {common}
    {role_obs}

    Action: float32 (4,) in [-1, 1]; values outside are clipped, NaN counts as 0 (adapters
    raise ValueError on NaN/inf, a wrong shape or a non-float dtype):
        0 position     target perp position = a x lev x margin balance x (1 -
                       margin_buffer) / mark (a = +/-1: all the buying power at lev)
        1 leverage     lev = 1 + (a + 1) / 2 x (cap - 1), cap = min(max_leverage, tier-1
                       max leverage in force); sent when it moves by >= leverage_step
        2 stable_mix   STABLE share of the wallet value = max(a, 0) x max_collateral_frac
        3 lst_mix      LST share, the same; shares summing above 1 are scaled to 1; the rest
                       stays in USDT. Buys are capped by the free USDT.
    Orders per step (4 rows): [set leverage, perp market] when the position grows
    (leverage first), [perp market, set leverage] when it shrinks; then the STABLE and LST
    market orders, sells first. Legs smaller than rebalance_frac x initial equity are not
    sent.

    Reward: () = (marked equity after - before) / initial equity.

    Termination: liquidated by the engine or marked equity <= min_equity_frac x initial
    (see `RoleEnv`). Truncation: `max_steps_in_episode` steps.
    """

    role = "leveraged_trader"
    settings_cls = LeveragedTraderSettings
    # A retail trader pays the venue's regular (VIP0) rates: no fee programme of its own.
    learner_fees: ClassVar[dict] = {}
    action_names = ("position", "leverage", "stable_mix", "lst_mix")
    orders_per_agent = 4
    role_obs = (
        ("eff_leverage", "position notional / margin balance / 125"),
        ("tier_max_lev", "max leverage of the tier of the current notional / 125"),
        ("stable_share", "STABLE value / wallet value"),
        ("lst_share", "LST value / wallet value"),
    )

    def decode_one(
        self, action: Array, state: EnvState, params: EnvParams, account: Array
    ) -> Orders:
        s = params.role
        sim = state.sim
        dtype = params.sim.dt.dtype
        a = action.astype(dtype)
        eq0 = state.equity0[account]
        acct = sim.acct
        rules = sim.rules
        mark = sim.px.mark
        min_val = s.rebalance_frac * eq0
        pos = acct.pos[account]

        cap = jnp.maximum(jnp.minimum(s.max_leverage, rules.tier_max_lev[0]), 1.0)
        lev = 1.0 + (a[1] + 1.0) * 0.5 * (cap - 1.0)
        lev_kind = jnp.where(
            jnp.abs(lev - acct.lev[account]) >= jnp.maximum(s.leverage_step, 1e-6),
            KIND_SET_LEVERAGE,
            KIND_NONE,
        )
        mb = margin_balances(sim)[account]
        tgt = a[0] * lev * jnp.maximum(mb, 0.0) * (1.0 - s.margin_buffer) / mark
        d = tgt - pos
        perp_side = jnp.where(d > 0, 1, -1)
        perp_px = mark * (1.0 + perp_side * s.slippage_guard)
        perp_kind = jnp.where(jnp.abs(d) * mark >= min_val, KIND_MARKET, KIND_NONE)
        grows = jnp.abs(tgt) > jnp.abs(pos)

        px = asset_prices(sim.px)
        bal = acct.bal[account]
        wallet = jnp.maximum(jnp.sum((bal - acct.debt[account]) * px), 0.0)
        w = jnp.maximum(a[2:4], 0.0) * s.max_collateral_frac
        w = w / jnp.maximum(w.sum(), 1.0)
        # The fee this account pays (its own rate where it has one, else the schedule in
        # force), so that a collateral buy is sized to what the engine will charge it.
        fee = taker_rate_of(sim, params.sim, account)
        usdt = jnp.maximum(bal[USDT], 0.0)

        def leg(asset, share):
            target = share * wallet / px[asset]
            diff = target - bal[asset]
            buy = diff > 0
            ref = sim.px.last[STABLE_SPOT if asset == STABLE else LST_SPOT]
            afford = usdt / (ref * (1.0 + s.slippage_guard) * (1.0 + fee))
            qty = jnp.where(
                buy, jnp.minimum(diff, afford), jnp.minimum(-diff, jnp.maximum(bal[asset], 0.0))
            )
            side = jnp.where(buy, 1, -1)
            kind = jnp.where(qty * px[asset] >= min_val, KIND_MARKET, KIND_NONE)
            return side, kind, qty, ref * (1.0 + side * s.slippage_guard)

        ss, sk, sq, spx = leg(STABLE, w[0])
        ls, lk, lq, lpx = leg(LST, w[1])
        z = jnp.zeros((), dtype)

        def pick(c, x, y):
            return jnp.where(c, x, y)

        # Rows 0-1: leverage before a growing position, after a shrinking one.
        row0 = (PERP, 0, lev_kind, lev, z)
        row1 = (PERP, perp_side, perp_kind, jnp.abs(d), perp_px)
        first = [pick(grows, x, y) for x, y in zip(row0, row1, strict=True)]
        second = [pick(grows, y, x) for x, y in zip(row0, row1, strict=True)]
        # Rows 2-3: sells before buys so that sale proceeds can pay for the other leg.
        swap = (ss > 0) & (ls < 0)
        st_row = (STABLE_SPOT, ss, sk, sq, spx)
        ls_row = (LST_SPOT, ls, lk, lq, lpx)
        third = [pick(swap, y, x) for x, y in zip(st_row, ls_row, strict=True)]
        fourth = [pick(swap, x, y) for x, y in zip(st_row, ls_row, strict=True)]
        rows = [first, second, third, fourth]
        return order_rows(
            account,
            market=[r[0] for r in rows],
            side=[r[1] for r in rows],
            kind=[r[2] for r in rows],
            qty=[r[3] for r in rows],
            price=[r[4] for r in rows],
            dtype=dtype,
        )

    def role_features(
        self, state: EnvState, params: EnvParams, account: Array, equity0: Array
    ) -> dict[str, Array]:
        sim = state.sim
        acct = sim.acct
        mark = sim.px.mark
        notional = jnp.abs(acct.pos[account]) * mark
        mb = margin_balances(sim)[account]
        px = asset_prices(sim.px)
        val = (acct.bal[account] - acct.debt[account]) * px
        wallet = jnp.maximum(jnp.sum(val), 1e-12)
        return {
            "eff_leverage": jnp.where(
                notional > 0, notional / jnp.maximum(mb, 1e-12) / LEV_SCALE, 0.0
            ),
            "tier_max_lev": mg.max_leverage(notional, sim.rules) / LEV_SCALE,
            "stable_share": val[STABLE] / wallet,
            "lst_share": val[LST] / wallet,
        }
