"""Market maker role: quotes the perp (optionally the spot book) and may hedge."""

from __future__ import annotations

from typing import ClassVar

import jax
import jax.numpy as jnp

from envs.core import (
    EnvParams,
    EnvState,
    RoleEnv,
    book_view,
    level_prices,
    order_rows,
    settings_struct,
)
from jaxsim.mechanisms.accounts import own_orders
from jaxsim.types import (
    ASK,
    BASE,
    BID,
    KIND_CANCEL,
    KIND_MARKET,
    KIND_NONE,
    KIND_POST_ONLY,
    PERP,
    SPOT,
    USDT,
    Orders,
)

Array = jax.Array
BPS = 1e-4
SPOT_CASH_SHARE = 0.99  # share of free USDT / BASE a spot quote may reserve (fees, rounding)


@settings_struct
class MarketMakerSettings:
    """Market maker settings (scalars; vmappable like the rest of EnvParams).

    Attributes:
        min_offset_bps: quote distance from the reference mid at action -1, bp.
        max_offset_bps: quote distance at action +1, bp (keep below the price band).
        max_quote_frac: largest quote notional per side / initial equity.
        min_size_frac: a side whose size fraction (action + 1) / 2 is below this is not
            quoted.
        inventory_penalty: reward penalty per step = this x (net BASE exposure x mark /
            initial equity)^2.
        hedge_slippage: the hedge's market order fills no worse than mark x (1 +/- this).
    """

    min_offset_bps: float = 0.0
    max_offset_bps: float = 50.0
    max_quote_frac: float = 1.0
    min_size_frac: float = 0.01
    inventory_penalty: float = 1e-4
    hedge_slippage: float = 0.01
    requote_tolerance: float = 0.5

    _ranges: ClassVar[dict] = {
        "min_offset_bps": (-100.0, 1000.0),
        "max_offset_bps": (-100.0, 1000.0),
        "max_quote_frac": (0.0, 100.0),
        "min_size_frac": (0.0, 1.0),
        "inventory_penalty": (0.0, 100.0),
        "hedge_slippage": (0.0, 1.0),
        "requote_tolerance": (0.0, 1.0),
    }


class MarketMaker(RoleEnv):
    """Market maker on the BASE perp (and, with `quote_spot=True`, the BASE/USDT book).

    Every step quotes one bid and one ask around the reference mid (the book's mid without
    the learner's own orders; the mark when a side is empty), after an optional hedge. A
    side whose resting quote already sits at the new price with about the new size (within
    `requote_tolerance`) is left alone and keeps its place in the queue, as a real quoter
    does; the other sides are cancelled and quoted again at the back of the queue. The
    learner's account has the role's fee programme (`learner_fees`: a maker rebate, a
    VIP taker rate) unless the scenario gives it rates of its own.

    Observation: float32 (D,) with D = len(obs_names) = 49 common + 4 role entries
    ((N, D) for N learners; every entry clipped to [-10, 10]):

    {common}
    {role_obs}

    Action: float32 (A,) in [-1, 1], A = 5 (9 with quote_spot); values outside are
    clipped, NaN counts as 0 (adapters raise ValueError on NaN/inf, a wrong shape or a
    non-float dtype). u = (a + 1) / 2 maps [-1, 1] to [0, 1]:
        0 bid_offset   bid price = mid x (1 - off), off = min_offset_bps + u x (max - min) bp
        1 ask_offset   ask price = mid x (1 + off)
        2 bid_size     bid qty = u x max_quote_frac x initial equity / mid (no bid if u <
                       min_size_frac)
        3 ask_size     ask qty, same
        4 hedge        h = max(a, 0): market order reducing the perp position by h x |pos|
                       (a <= 0: no hedge), limit mark x (1 -/+ hedge_slippage)
      with quote_spot, the same four for the spot book (reference = spot mid, sizes
      capped by the free USDT / BASE the quote reserves):
        5 spot_bid_offset, 6 spot_ask_offset, 7 spot_bid_size, 8 spot_ask_size
    Orders per step (4 rows, 7 with quote_spot; `dims.max_orders` is raised to fit):
        [cancel the perp sides quoted again, hedge (market), bid (post-only), ask (post-only)]
        + [cancel spot quotes, spot bid (limit), spot ask (limit)]
    Perp quotes are post-only (the venue's GTX): a quote that would trade on arrival is
    rejected (`would_take`) and that side is not quoted this step, so the learner never
    pays a taker fee by accident. The engine rounds bids down and asks up to its tick grid;
    prices outside the grid or the price band are rejected by it (`info["order_reason"]`).

    Reward: () = (marked equity after - before) / initial equity - inventory_penalty x
    (net BASE exposure x mark / initial equity)^2, net exposure = perp position + spot
    BASE balance - BASE debt.

    Termination: liquidated by the engine or marked equity <= min_equity_frac x initial
    (see `RoleEnv`). Truncation: `max_steps_in_episode` steps.
    """

    role = "market_maker"
    settings_cls = MarketMakerSettings
    # A venue's market-maker programme: Binance USDⓈ-M futures Liquidity Provider Program
    # top tier maker rebate -0.005% (2023-04 table), VIP9 taker 0.017% (docs/mechanics.md 6).
    learner_fees: ClassVar[dict] = {"maker": -0.00005, "taker": 0.00017}
    role_obs = (
        ("quote_bid_dist", "own best perp bid below mid, units of 10 bp (0 if none)"),
        ("quote_ask_dist", "own best perp ask above mid, units of 10 bp (0 if none)"),
        ("quote_bid_size", "own resting perp bid notional / initial equity"),
        ("quote_ask_size", "own resting perp ask notional / initial equity"),
    )
    _perp_actions = ("bid_offset", "ask_offset", "bid_size", "ask_size", "hedge")
    _spot_actions = ("spot_bid_offset", "spot_ask_offset", "spot_bid_size", "spot_ask_size")

    def __init__(self, n_agents: int = 1, quote_spot: bool = False):
        super().__init__(n_agents)
        self.quote_spot = bool(quote_spot)

    def _static(self) -> tuple:
        return (*super()._static(), self.quote_spot)

    def __repr__(self) -> str:
        return f"MarketMaker(n_agents={self.n_agents}, quote_spot={self.quote_spot})"

    @property
    def action_names(self) -> tuple[str, ...]:  # type: ignore[override]
        return self._perp_actions + (self._spot_actions if self.quote_spot else ())

    @property
    def orders_per_agent(self) -> int:  # type: ignore[override]
        return 7 if self.quote_spot else 4

    def _quotes(self, a: Array, s: MarketMakerSettings, mid, eq0):
        u = (a + 1.0) * 0.5
        off = (s.min_offset_bps + u[:2] * (s.max_offset_bps - s.min_offset_bps)) * BPS
        bid_px = mid * (1.0 - off[0])
        ask_px = mid * (1.0 + off[1])
        size_u = u[2:4]
        qty = size_u * s.max_quote_frac * eq0 / jnp.maximum(mid, 1e-12)
        on = size_u >= jnp.maximum(s.min_size_frac, 1e-6)
        return bid_px, ask_px, qty, on

    def decode_one(
        self, action: Array, state: EnvState, params: EnvParams, account: Array
    ) -> Orders:
        s = params.role
        sim, sp = state.sim, params.sim
        dtype = sp.dt.dtype
        a = action.astype(dtype)
        eq0 = state.equity0[account]
        mark = sim.px.mark
        _, _, mid, _, _ = book_view(sim, sp, PERP, exclude=account)
        bid_px, ask_px, qty, on = self._quotes(a[:4], s, mid, eq0)
        pos = sim.acct.pos[account]
        h = jnp.maximum(a[4], 0.0)
        hedge_qty = h * jnp.abs(pos)
        hedge_side = -jnp.sign(pos).astype(jnp.int32)
        hedge_px = mark * (1.0 + hedge_side * s.hedge_slippage)
        hedge_kind = jnp.where(hedge_qty > 0, KIND_MARKET, KIND_NONE)
        z = jnp.zeros((), dtype)
        keep = self._kept(sim, sp, account, bid_px, ask_px, qty, on, s.requote_tolerance)
        # One cancel row for the sides that are quoted again (+1 bids, -1 asks, 0 both).
        cancel_side = jnp.where(keep[0], -1, jnp.where(keep[1], 1, 0))
        market = [PERP, PERP, PERP, PERP]
        side = [cancel_side, hedge_side, 1, -1]
        kind = [
            jnp.where(keep[0] & keep[1], KIND_NONE, KIND_CANCEL),
            hedge_kind,
            jnp.where(on[0] & ~keep[0], KIND_POST_ONLY, KIND_NONE),
            jnp.where(on[1] & ~keep[1], KIND_POST_ONLY, KIND_NONE),
        ]
        qtys = [z, hedge_qty, qty[0], qty[1]]
        prices = [z, hedge_px, bid_px, ask_px]
        if self.quote_spot:
            _, _, smid, _, _ = book_view(sim, sp, SPOT, exclude=account)
            sb, sa, sq, son = self._quotes(a[5:9], s, smid, eq0)
            lp = level_prices(sim, sp, SPOT)
            bal = sim.acct.bal[account]
            # The cancel row refunds the learner's current spot reserves before re-quoting.
            own_spot = own_orders(sim, account, SPOT)
            usdt = bal[USDT] + jnp.sum(own_spot[BID] * lp)
            base = bal[BASE] + jnp.sum(own_spot[ASK])
            sq_bid = jnp.minimum(sq[0], SPOT_CASH_SHARE * jnp.maximum(usdt, 0.0) / sb)
            sq_ask = jnp.minimum(sq[1], SPOT_CASH_SHARE * jnp.maximum(base, 0.0))
            market += [SPOT, SPOT, SPOT]
            side += [0, 1, -1]
            kind += [
                KIND_CANCEL,
                jnp.where(son[0] & (sq_bid > 0), KIND_POST_ONLY, KIND_NONE),
                jnp.where(son[1] & (sq_ask > 0), KIND_POST_ONLY, KIND_NONE),
            ]
            qtys += [z, sq_bid, sq_ask]
            prices += [z, sb, sa]
        return order_rows(account, market, side, kind, qtys, prices, dtype)

    def _kept(self, sim, sp, account, bid_px, ask_px, qty, on, tol):
        """(2,) bool: the side's resting quote stays (keeps its queue place): it is the
        side's only resting level, at the price the new quote rounds to on the grid (bids
        down, asks up, as the engine rounds), and its size left is within `tol` of the new
        size. Otherwise the side is cancelled and quoted again at the back of the queue."""
        own = own_orders(sim, account, PERP)
        px = level_prices(sim, sp, PERP)
        tick = sp.markets.tick_size[PERP]
        tgt = jnp.stack([jnp.floor(bid_px / tick + 1e-6), jnp.ceil(ask_px / tick - 1e-6)])
        has = own > 0
        n_lv = has.sum(-1)
        rest_px = jnp.sum(jnp.where(has, px, 0.0), -1) / jnp.maximum(n_lv, 1)
        rest_sz = own.sum(-1)
        same_px = jnp.round(rest_px / tick) == tgt
        close = jnp.abs(rest_sz - qty) <= tol * qty
        return on & (n_lv == 1) & same_px & close

    def role_features(
        self, state: EnvState, params: EnvParams, account: Array, equity0: Array
    ) -> dict[str, Array]:
        sim, sp = state.sim, params.sim
        px = level_prices(sim, sp, PERP)
        _, _, mid, _, _ = book_view(sim, sp, PERP, exclude=account)
        own = own_orders(sim, account, PERP)  # (2, G)
        has_bid = own[BID] > 0
        has_ask = own[ASK] > 0
        best_bid = jnp.max(jnp.where(has_bid, px, -jnp.inf))
        best_ask = jnp.min(jnp.where(has_ask, px, jnp.inf))
        rel = 1e3 / jnp.maximum(mid, 1e-12)
        return {
            "quote_bid_dist": jnp.where(has_bid.any(), (mid - best_bid) * rel, 0.0),
            "quote_ask_dist": jnp.where(has_ask.any(), (best_ask - mid) * rel, 0.0),
            "quote_bid_size": jnp.sum(own[BID] * px) / equity0,
            "quote_ask_size": jnp.sum(own[ASK] * px) / equity0,
        }

    def penalty(self, state: EnvState, params: EnvParams, account: Array, equity0: Array) -> Array:
        a = state.sim.acct
        net = a.pos[account] + a.bal[account, BASE] - a.debt[account, BASE]
        inv = net * state.sim.px.mark / equity0
        return params.role.inventory_penalty * inv**2
