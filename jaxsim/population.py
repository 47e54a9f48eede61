"""Background traders: each user account may carry a behaviour (PopParams.kind) that turns
the market state into orders every tick, vectorized over the account axis.

Behaviours (one per account, parameters in `PopParams`, YAML under `population.cohorts`):

- retail: a leveraged perp cohort. Target exposure fraction
  `f = clip(bias + trend * momentum - funding * (F_8h - I_8h) / 1bp + noise * z)`, restricted
  to its side (long-only, short-only or both), target position `f * lev_target * equity /
  mark`; when it acts (probability `act_prob` per tick) it trades `speed` of the gap by
  market order. With `hold = 1` it never shrinks a same-side position (it adds, closes when
  the signal crosses zero, or flips): a losing position is ridden to its liquidation rather
  than cut as equity falls. Its margin is the engine's: a cohort that cannot afford the order is
  rejected like anyone else. Re-entry: while it holds no perp position (it was liquidated
  or closed) and its equity is below `reentry_below` of the starting equity, new traders'
  money arrives from its external wallet at `reentry_per_h` of the starting equity per hour.
  With `market: spot` a retail cohort holds BASE instead: long only, its position is the
  BASE it holds, its target `f * lev_target * equity / spot mid` with `lev_target <= 1`; it
  buys with the USDT it holds and sells the BASE it holds, by market order on the spot book
  (momentum buyers who chase a pump, or dip buyers, and with `hold = 1` hold the bag).
  With `threshold > 0` its buys are limit bids that far under the spot mid instead: each
  time it acts it cancels its resting bids and bids again (the dip buyers a dump sells
  into); the USDT they reserve counts in its equity.
- basis_arb: when the perp/spot basis is beyond `threshold` it takes the side that earns
  the convergence (long perp + sell spot when the perp is cheap, short perp + buy spot when
  rich), sized `lev_target` x equity; it unwinds once |basis| < `exit`. Two orders per tick:
  the perp leg and the spot hedge of its current perp position.
- xvenue_arb: trades one internal spot book against the external venues' price. Internal
  below external by more than `threshold`: buy internally, withdraw the asset (the rule's
  withdrawal delay applies), sell it externally, bring the USDT back; the mirror trade when
  internal is above. External trades are against the outside world at the external price.
  With `bid = 1` it rests a standing limit bid at its reservation price (external x (1 -
  `threshold`), at the grid's top when the book has fallen further than the grid spans),
  topped up with `speed` of its free USDT each tick, and cancels it when the external
  price falls under it; it keeps its USDT on the other venues and sends for it only once
  the internal mid is under the reservation price, so the withdrawal delay decides when
  that capital can meet a fall.
- panic_seller: sells `speed` of its BASE per tick while the spot drawdown from its peak is
  above `threshold` or the liquidation EWMA is above `exit` USDT per second.
- looper: a collateral loop on its `market`'s asset (STABLE or LST): USDT borrowed against
  the asset and spent on more of it, to hold `lev_target` x its equity in the asset. When
  it acts and is below target while the asset trades within `exit` of its external price,
  it borrows USDT (slot 1) and buys the asset with it (slot 2). While the asset's
  internal price is more than `threshold` below the external venues' (a depeg scare) it
  unwinds: sells `speed` of its holding into the internal book (slot 1) and repays debt
  from the USDT it holds (slot 2), the pro-cyclical sales of a looped collateral. Over
  target because its equity fell, it holds on (if it fails, the liquidation engine sells
  its collateral).

Programs (`population.programs`): scripted market-order flows (a whale's block sale, ETF
outflows, a manipulator's legs), `qty` base units spread evenly over their window. With
`limit_pct` a program trades no worse than its market's reference price (`market_refs`) by
that percentage; with `carry` the unfilled part of a slice is sent again the next tick (what
is due by the end of the tick less what it traded), else it is dropped.

The LP (system account) is the market-making cohort: see `engine._liquidity`, which skews its
quote centre against its inventory (its deviation from its starting inventory, or for the
perp with `mm.perp_skew_vs: flat` its whole position: a maker short the crowd's longs quotes
the perp up, the premium that drives funding) and withdraws depth as realized volatility
and its own drawdown rise.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxsim import book as bk
from jaxsim import margin as mg
from jaxsim.types import (
    ASK,
    BASE,
    BEH_BASIS_ARB,
    BEH_LOOPER,
    BEH_PANIC,
    BEH_RETAIL,
    BEH_XVENUE_ARB,
    BID,
    KIND_BORROW,
    KIND_CANCEL,
    KIND_LIMIT,
    KIND_MARKET,
    KIND_NONE,
    KIND_REPAY,
    KIND_TRANSFER_IN,
    KIND_TRANSFER_OUT,
    LP_SLOT,
    MARKET_ASSET,
    N_MARKETS,
    N_SYSTEM,
    PERP,
    SPOT,
    USDT,
    Orders,
    Params,
    PopState,
    SimState,
)

Array = jax.Array

MARKET_ASSET_ARR = jnp.array(MARKET_ASSET, dtype=jnp.int32)
# Index row (BASE, STABLE, LST) of each market's traded asset.
MARKET_INDEX_ROW = jnp.array([0, 0, 1, 2], dtype=jnp.int32)
FUNDING_UNIT_8H = 1e-4  # retail funding sensitivity is per 0.01% per 8 h
MOMENTUM_CLIP = 3.0
VOL_EWMA_S = 300.0
SECONDS_PER_8H = 8 * 3600.0


def n_background_orders(params: Params) -> int:
    """Background order slots per tick: two per user account plus the program rows."""
    return 2 * (params.dims.n_accounts - N_SYSTEM) + params.dims.n_programs


def market_refs(state: SimState) -> Array:
    """(M,) each market's outside reference price: the external venues' mean for spot,
    STABLE and LST, the index for the perp (the LP's quote reference, a program's limit)."""
    ext = state.px.ext
    return jnp.stack([ext[0].mean(), state.px.index[0], ext[1].mean(), ext[2].mean()])


def init_pop_state(state: SimState, params: Params, equity: Array, lp_equity: Array) -> PopState:
    """Population memory at reset."""
    mark = state.px.mark
    dtype = state.acct.bal.dtype
    z = jnp.zeros((), dtype)
    return PopState(
        ema_fast=jnp.log(mark),
        ema_slow=jnp.log(mark),
        peak_spot=state.px.last[SPOT],
        liq_ewma=z,
        eq0=equity,
        sv=jnp.zeros((3,), dtype),
        int_last=state.px.last,
        int_vol=params.pop.int_vol_ref.astype(dtype),
        lp_peak=lp_equity,
        lp_eq=lp_equity,
        prog_done=jnp.zeros_like(params.pop.prog_qty, dtype),
    )


def update_memory(state: SimState, params: Params, liq_usdt: Array, lp_equity: Array) -> SimState:
    """End-of-tick update of the population's signals."""
    p, pp, dt = state.pop, params.pop, params.dt
    lm = jnp.log(state.px.mark)
    a_f = jnp.minimum(dt / pp.trend_fast_s, 1.0)
    a_s = jnp.minimum(dt / pp.trend_slow_s, 1.0)
    a_l = jnp.minimum(dt / pp.liq_ewma_s, 1.0)
    a_v = jnp.minimum(dt / VOL_EWMA_S, 1.0)
    last = state.px.last
    r = jnp.log(jnp.maximum(last, 1e-12) / jnp.maximum(p.int_last, 1e-12))
    var = (1 - a_v) * p.int_vol**2 + a_v * r**2 / dt
    pop = p.replace(
        ema_fast=p.ema_fast + a_f * (lm - p.ema_fast),
        ema_slow=p.ema_slow + a_s * (lm - p.ema_slow),
        peak_spot=jnp.maximum(p.peak_spot, last[SPOT]),
        liq_ewma=p.liq_ewma + a_l * (liq_usdt / dt - p.liq_ewma),
        int_last=last,
        int_vol=jnp.sqrt(var),
        lp_peak=jnp.maximum(p.lp_peak, lp_equity),
        lp_eq=lp_equity,
    )
    return state.replace(pop=pop)


def momentum(state: SimState, params: Params) -> Array:
    """Normalised trend signal in [-3, 3]: (fast EWMA - slow EWMA) of log mark / scale."""
    m = (state.pop.ema_fast - state.pop.ema_slow) / params.pop.trend_scale
    return jnp.clip(m, -MOMENTUM_CLIP, MOMENTUM_CLIP)


def level_prices(state: SimState, params: Params, m) -> Array:
    """(G,) market m's level prices: its book's grid from the origin, G = dims.n_levels."""
    return bk.level_prices(state.book.origin[m], params.markets.tick_size[m], params.dims.n_levels)


def _mids(state: SimState, params: Params) -> tuple[Array, Array, Array]:
    """Best bid, best ask and mid of every market (mid falls back to last)."""
    bids, asks, mids = [], [], []
    for m in range(N_MARKETS):
        px = level_prices(state, params, m)
        b, a = bk.best_prices(state.book.qty[m], px)
        ok = (b > 0) & jnp.isfinite(a)
        bids.append(b)
        asks.append(jnp.where(jnp.isfinite(a), a, 0.0))
        mids.append(jnp.where(ok, 0.5 * (b + a), state.px.last[m]))
    return jnp.stack(bids), jnp.stack(asks), jnp.stack(mids)


def background_orders(
    key: Array, state: SimState, params: Params, equity: Array
) -> tuple[Orders, Array]:
    """Orders of the background population for this tick.

    Returns (Orders of shape (2 * n_user + n_programs,), arb mask of the same shape).
    `equity` is each account's unhaircut equity in USDT.
    """
    dims, pp = params.dims, params.pop
    n_user = dims.n_accounts - N_SYSTEM
    dtype = state.acct.bal.dtype
    acct = state.acct
    k_act, k_noise = jax.random.split(key)
    ids = jnp.arange(n_user)
    kind = pp.kind[:n_user]
    pos = acct.pos[:n_user]
    bal = acct.bal[:n_user]
    ext = acct.ext_bal[:n_user]
    eq = jnp.maximum(equity[:n_user], 0.0)
    mark = state.px.mark
    grids = [level_prices(state, params, m) for m in range(N_MARKETS)]
    bids, asks, mids = _mids(state, params)
    act = jax.random.uniform(k_act, (n_user,), dtype) < pp.act_prob[:n_user]
    z = jax.random.normal(k_noise, (n_user,), dtype)

    # ---------------------------------------------------------------- retail
    rate_8h = state.px.funding_rate * SECONDS_PER_8H / state.rules.funding_interval_s
    excess_funding = (rate_8h - state.rules.funding_interest) / FUNDING_UNIT_8H
    # Funding above baseline (longs pay) pushes every target down, below it (shorts pay) up.
    f = (
        pp.bias[:n_user]
        + pp.trend[:n_user] * momentum(state, params)
        - pp.funding[:n_user] * excess_funding
        + pp.noise[:n_user] * z
    )
    side = pp.side[:n_user]
    f = jnp.clip(f, jnp.where(side > 0, 0.0, -1.0), jnp.where(side < 0, 0.0, 1.0))
    # Nobody plans a position the rules in force would reject outright.
    limit_now = mg.position_limit_in_force(
        state.rules, state.book.qty[PERP], level_prices(state, params, PERP)
    )
    cap_q = 0.95 * limit_now / mark
    # A spot cohort's position is the BASE it holds, valued at the spot mid (no leverage);
    # the USDT its resting bids reserve is part of its equity (they are cancelled and
    # re-posted whenever it acts).
    r_spot = (kind == BEH_RETAIL) & (pp.market[:n_user] == SPOT)
    # Each account's resting bids on its own market (a spot cohort's: on spot).
    top_own, resv = _own_bids(state, grids, pp.market[:n_user], ids)
    r_pos = jnp.where(r_spot, bal[:, BASE], pos)
    r_eq = jnp.where(r_spot, eq + resv, eq)
    scale_q = jnp.where(
        r_spot,
        pp.lev_target[:n_user] * r_eq / jnp.maximum(mids[SPOT], 1e-12),
        jnp.minimum(pp.lev_target[:n_user] * eq / mark, cap_q),
    )
    target = f * scale_q
    # A holding trader (hold = 1) does not shrink a same-side position because its equity
    # or its signal fell: it adds, closes or flips, and otherwise rides the position to
    # its liquidation (the retail shorts of a squeeze) or, on spot, holds the bag.
    keep = (pp.hold[:n_user] > 0.5) & (target * r_pos > 0) & (jnp.abs(target) < jnp.abs(r_pos))
    gap = jnp.where(keep, 0.0, target - r_pos)
    trade = act & (jnp.abs(gap) > pp.min_trade[:n_user] * scale_q) & (r_eq > 0)
    r_qty = jnp.where(trade, jnp.abs(gap) * pp.speed[:n_user], 0.0)
    r_side = jnp.sign(gap)
    # Spot buys: market orders, or with `threshold` > 0 limit bids resting that far below
    # the mid (dip buyers who bid under a falling price). They are paid from the USDT held
    # plus what the cancelled bids release (with room for the walk and the fee); sales
    # are market orders of the BASE held.
    bid_px = mids[SPOT] * (1.0 - pp.threshold[:n_user])
    r_limit = r_spot & (pp.threshold[:n_user] > 0) & (gap > 0)
    buy_px = jnp.where(r_limit, bid_px, asks[SPOT])
    afford = 0.95 * (jnp.maximum(bal[:, USDT], 0.0) + resv) / jnp.maximum(buy_px, 1e-12)
    afford = jnp.where(buy_px > 0, afford, 0.0)
    spot_cap = jnp.where(gap > 0, afford, jnp.maximum(bal[:, BASE], 0.0))
    r_qty = jnp.where(r_spot, jnp.minimum(r_qty, spot_cap), r_qty)
    # A spot cohort cancels its resting bids (slot 1) before it trades again (slot 2).
    r_cancel = r_spot & act & (resv > 0)

    # ---------------------------------------------------------------- basis arbitrage
    basis = (mids[PERP] - mids[SPOT]) / mids[SPOT]
    thr, ex = pp.threshold[:n_user], pp.exit[:n_user]
    h = jnp.minimum(pp.lev_target[:n_user] * eq / mark, cap_q)
    tgt = jnp.where(
        basis < -thr, h, jnp.where(basis > thr, -h, jnp.where(jnp.abs(basis) < ex, 0.0, pos))
    )
    b_gap = tgt - pos
    b_qty = jnp.where(
        act & (jnp.abs(b_gap) > pp.min_trade[:n_user] * h), jnp.abs(b_gap) * pp.speed[:n_user], 0.0
    )
    # Spot hedge of the current perp position around the starting BASE inventory.
    spot0 = params.accounts.bal[:n_user, BASE]
    s_gap = (spot0 - pos) - bal[:, BASE]
    s_gap = jnp.maximum(s_gap, -bal[:, BASE])  # cannot sell BASE it does not hold
    s_qty = jnp.where(jnp.abs(s_gap) > pp.min_trade[:n_user] * h, jnp.abs(s_gap), 0.0)

    # ---------------------------------------------------------------- cross-venue arbitrage
    xm = pp.market[:n_user]
    is_xv = kind == BEH_XVENUE_ARB
    asset = MARKET_ASSET_ARR[xm]
    pe = state.px.ext.mean(-1)[MARKET_INDEX_ROW[xm]]
    ask_x, bid_x = asks[xm], bids[xm]
    cheap = (ask_x > 0) & (ask_x < pe * (1 - thr))
    rich = (bid_x > 0) & (bid_x > pe * (1 + thr))
    held = jnp.take_along_axis(bal, asset[:, None], 1)[:, 0]
    held_ext = jnp.take_along_axis(ext, asset[:, None], 1)[:, 0]
    x_buy = jnp.where(
        cheap, pp.speed[:n_user] * jnp.maximum(bal[:, USDT], 0.0) / jnp.maximum(ask_x, 1e-12), 0.0
    )
    x_sell = jnp.where(rich, pp.speed[:n_user] * jnp.maximum(held, 0.0), 0.0)
    x_qty = jnp.where(cheap, x_buy, x_sell)
    x_side = jnp.where(cheap, 1.0, -1.0)
    x_limit = jnp.where(cheap, pe * (1 - thr), pe * (1 + thr))
    # Bidding arb (`bid: 1`): a standing limit bid at its reservation price pe * (1 - thr),
    # topped up with `speed` of its free USDT. It takes the asks under that price and rests
    # the rest; a reservation price above the book's grid (the book fell further than the
    # grid spans) bids at the grid's top instead. A bid left above the reservation price
    # (pe fell) is cancelled first.
    res_px = pe * (1 - thr)
    bidder = (pp.bid[:n_user] > 0.5) & is_xv
    stale = bidder & (top_own > res_px + params.markets.tick_size[xm])
    free_usdt = jnp.maximum(bal[:, USDT], 0.0)
    grid_lo = jnp.stack([g[0] for g in grids])[xm]
    grid_hi = jnp.stack([g[-1] for g in grids])[xm]
    bid_x_px = jnp.minimum(res_px, grid_hi)
    post = (
        bidder
        & ~rich
        & ~stale
        & (bid_x_px >= grid_lo)
        & (pp.speed[:n_user] * free_usdt > pp.min_trade[:n_user] * (free_usdt + resv))
    )
    x_qty = jnp.where(post, pp.speed[:n_user] * free_usdt / jnp.maximum(bid_x_px, 1e-12), x_qty)
    x_side = jnp.where(post | stale, 1.0, x_side)
    x_limit = jnp.where(post, bid_x_px, x_limit)
    x_kind = jnp.where(stale, KIND_CANCEL, jnp.where(post, KIND_LIMIT, KIND_MARKET))
    # One transfer per tick: bring the asset in to sell it when rich, send it out when cheap,
    # otherwise bring the external USDT home. A bidding arb keeps its capital on the other
    # venues until the book trades under its reservation price, then brings it in first.
    t_in_asset = rich & (held_ext > 0)
    bring_cash = bidder & (mids[xm] < res_px) & (ext[:, USDT] > 0) & ~t_in_asset
    t_out_asset = ~t_in_asset & ~bring_cash & (held > 0) & ~rich & (state.px.last[xm] < pe)
    t_in_usdt = ~t_in_asset & ~t_out_asset & (ext[:, USDT] > 0) & (~bidder | bring_cash)
    t_kind = jnp.where(
        t_in_asset | t_in_usdt,
        KIND_TRANSFER_IN,
        jnp.where(t_out_asset, KIND_TRANSFER_OUT, KIND_NONE),
    )
    t_asset = jnp.where(t_in_usdt, USDT, asset)
    t_qty = jnp.where(
        t_in_asset, held_ext, jnp.where(t_out_asset, held, jnp.where(t_in_usdt, ext[:, USDT], 0.0))
    )

    # ---------------------------------------------------------------- panic sellers
    dd = 1.0 - state.px.last[SPOT] / state.pop.peak_spot
    panic = (dd > thr) | ((ex > 0) & (state.pop.liq_ewma > ex))
    p_qty = jnp.where(panic, pp.speed[:n_user] * jnp.maximum(bal[:, BASE], 0.0), 0.0)

    # ---------------------------------------------------------------- collateral loopers
    # Same market column as the cross-venue arbitrageur (`xm`, its asset, `pe`).
    mid_x = mids[xm]
    discount = 1.0 - mid_x / jnp.maximum(pe, 1e-12)
    unit_px = jnp.maximum(mid_x, 1e-12)
    loop_target = pp.lev_target[:n_user] * eq / unit_px
    loop_gap = loop_target - held
    debt_usdt = acct.debt[:n_user, USDT]
    scare = discount > thr
    under = (loop_gap > pp.min_trade[:n_user] * loop_target) & (discount < ex) & (ask_x > 0)
    unwind = act & (debt_usdt > 0) & scare & (held > 0)
    lever = act & ~unwind & under & (eq > 0)
    l_sell = pp.speed[:n_user] * held
    l_borrow = pp.speed[:n_user] * loop_gap * ask_x
    l_qty1 = jnp.where(unwind, l_sell, jnp.where(lever, l_borrow, 0.0))
    l_kind1 = jnp.where(unwind, KIND_MARKET, jnp.where(lever, KIND_BORROW, KIND_NONE))
    # Slot 2: the buy with the borrowed USDT (a little under it, for the book's slope), or
    # the repayment from USDT already held (this tick's sale proceeds repay next tick).
    l_qty2 = jnp.where(
        lever,
        0.98 * l_borrow / jnp.maximum(ask_x, 1e-12),
        jnp.where(unwind, jnp.minimum(debt_usdt, jnp.maximum(bal[:, USDT], 0.0)), 0.0),
    )
    l_kind2 = jnp.where(lever, KIND_MARKET, jnp.where(unwind, KIND_REPAY, KIND_NONE))

    # ---------------------------------------------------------------- slot 1 and slot 2
    is_r, is_b = kind == BEH_RETAIL, kind == BEH_BASIS_ARB
    is_x, is_p = kind == BEH_XVENUE_ARB, kind == BEH_PANIC
    is_l = kind == BEH_LOOPER
    q1 = jnp.where(
        is_r, r_qty, jnp.where(is_b, b_qty, jnp.where(is_x, x_qty, jnp.where(is_p, p_qty, 0.0)))
    )
    q1 = jnp.where(is_l, l_qty1, q1)
    q1 = jnp.where(r_spot, 0.0, q1)
    s1 = jnp.where(is_r, r_side, jnp.where(is_b, jnp.sign(b_gap), jnp.where(is_x, x_side, -1.0)))
    m1 = jnp.where(is_r | is_b, jnp.where(r_spot, SPOT, PERP), jnp.where(is_x, xm, SPOT))
    # A looper's slot 1 is a sale on its market or a USDT borrow (the market field names
    # the asset for borrow / repay).
    m1 = jnp.where(is_l, jnp.where(unwind, xm, USDT), m1)
    # Arbitrage legs are price-limited: the perp leg trades only while the perp stays beyond
    # spot +/- exit (it stops once its own flow has closed the gap).
    b_limit = jnp.where(jnp.abs(basis) < ex, 0.0, mids[SPOT] * (1.0 + jnp.sign(b_gap) * ex))
    p1 = jnp.where(is_x, x_limit, jnp.where(is_b, b_limit, 0.0))
    q2 = jnp.where(is_b, s_qty, jnp.where(is_x, t_qty, jnp.where(is_l, l_qty2, 0.0)))
    q2 = jnp.where(r_spot, r_qty, q2)
    k2 = jnp.where(is_b, KIND_MARKET, jnp.where(is_x, t_kind, jnp.where(is_l, l_kind2, KIND_NONE)))
    k2 = jnp.where(r_spot, jnp.where(r_limit, KIND_LIMIT, KIND_MARKET), k2)
    k2 = jnp.where(q2 > 0, k2, KIND_NONE)
    s2 = jnp.where(is_b, jnp.sign(s_gap), jnp.where(is_l & lever, 1.0, 0.0))
    s2 = jnp.where(r_spot, r_side, s2)
    m2 = jnp.where(
        is_b | r_spot,
        SPOT,
        jnp.where(is_x, t_asset, jnp.where(is_l, jnp.where(lever, xm, USDT), 0)),
    )
    p2 = jnp.where(r_limit, bid_px, 0.0)
    k1 = jnp.where(is_l, l_kind1, jnp.where(is_x, x_kind, KIND_MARKET))
    k1 = jnp.where((q1 > 0) | (is_x & stale), k1, KIND_NONE)
    # Slot 1 of a spot cohort: cancel its resting bids (side +1: the bid side only).
    k1 = jnp.where(r_cancel, KIND_CANCEL, k1)
    s1 = jnp.where(r_spot, 1.0, s1)

    # ---------------------------------------------------------------- scripted programs
    t = state.t
    on = pp.prog_active & (t >= pp.prog_start) & (t < pp.prog_end)
    # A carrying program sends what is due by the end of this tick less what it traded;
    # the others send their slice and drop what does not fill.
    due = pp.prog_qty * jnp.clip(t + 1 - pp.prog_start, 0, pp.prog_end - pp.prog_start)
    q_prog = jnp.where(pp.prog_carry, jnp.maximum(due - state.pop.prog_done, 0.0), pp.prog_qty)
    q_prog = jnp.where(on, q_prog, 0.0)
    # A limited program trades no worse than its market's reference price by `limit`.
    ref = market_refs(state)[pp.prog_market]
    px_prog = jnp.where(pp.prog_limit > 0, ref * (1.0 + pp.prog_side * pp.prog_limit), 0.0)
    kp = jnp.where(on & (q_prog > 0), KIND_MARKET, KIND_NONE)

    def cat(*xs):
        return jnp.concatenate([jnp.asarray(x) for x in xs])

    orders = Orders(
        account=cat(ids, ids, pp.prog_account).astype(jnp.int32),
        market=cat(m1, m2, pp.prog_market).astype(jnp.int32),
        side=cat(s1, s2, pp.prog_side).astype(jnp.int32),
        kind=cat(k1, k2, kp).astype(jnp.int32),
        qty=cat(q1, q2, q_prog).astype(dtype),
        price=cat(p1, p2, px_prog).astype(dtype),
    )
    arb = cat(is_b | is_x, is_b | is_x, jnp.zeros_like(on))
    return orders, arb


def _own_bids(state: SimState, grids: list, market: Array, ids: Array):
    """Per user account (ids), its resting bids on its own `market` (n_user,): the top
    bid price (0 if none) and the USDT they reserve. `grids`: each market's level prices."""
    tops, resv = [], []
    for m, px in enumerate(grids):
        q = state.book.qty[m, BID]  # (G, Q)
        tops.append(jnp.max(jnp.where(q > 0, px[:, None], 0.0), axis=0))
        resv.append(jnp.einsum("gq,g->q", q, px))
    mine = state.book.owner[None, :] == ids[:, None]  # (n_user, Q)
    top = jnp.max(jnp.where(mine, jnp.stack(tops)[market], 0.0), axis=-1)
    reserved = jnp.sum(jnp.where(mine, jnp.stack(resv)[market], 0.0), axis=-1)
    return top, reserved


def external_moves(state: SimState, params: Params, equity: Array) -> SimState:
    """Ledger moves outside the books: retail re-entry deposits and the cross-venue
    arbitrageurs' trades on the external venues (against the outside world at the external
    price). Every move is between two accounts, so totals are conserved."""
    dims, pp, dt = params.dims, params.pop, params.dt
    acct = state.acct
    kind = pp.kind
    # Re-entry: new traders' money from the external wallet once the cohort is flat (after
    # a liquidation or a close). It opens new positions; it never tops up a losing one.
    # A spot cohort is flat once its BASE is worth less than its minimum trade.
    flat = jnp.where(
        pp.market == SPOT,
        acct.bal[:, BASE] * state.px.last[SPOT] < pp.min_trade * jnp.maximum(equity, 0.0),
        acct.pos == 0.0,
    )
    low = (kind == BEH_RETAIL) & flat & (equity < pp.reentry_below * state.pop.eq0)
    dep = jnp.where(
        low,
        jnp.minimum(
            jnp.maximum(acct.ext_bal[:, USDT], 0.0), pp.reentry_per_h * state.pop.eq0 * dt / 3600.0
        ),
        0.0,
    )
    dep = jnp.maximum(dep, 0.0)
    bal = acct.bal.at[:, USDT].add(dep)
    ext = acct.ext_bal.at[:, USDT].add(-dep)
    # Cross-venue arbs: sell withdrawn asset externally when the internal book is cheap, buy
    # it externally when the internal book is rich.
    is_x = kind == BEH_XVENUE_ARB
    asset = MARKET_ASSET_ARR[pp.market]
    pe = state.px.ext.mean(-1)[MARKET_INDEX_ROW[pp.market]]
    internal = state.px.last[pp.market]
    oh = jax.nn.one_hot(asset, 4, dtype=bal.dtype)  # (A, 4)
    held_ext = jnp.sum(ext * oh, -1)
    sell_u = jnp.where(is_x & (internal < pe), jnp.maximum(held_ext, 0.0), 0.0)
    buy_u = jnp.where(
        is_x & (internal > pe * (1 + pp.threshold)), jnp.maximum(ext[:, USDT], 0.0) / pe, 0.0
    )
    d_asset = buy_u - sell_u  # (A,) units the arb gains externally
    d_usdt = (sell_u - buy_u) * pe
    ext = ext + d_asset[:, None] * oh
    ext = ext.at[:, USDT].add(d_usdt)
    out = dims.outside
    # The outside world is the counterparty (its exchange-side balances hold its inventory).
    bal = bal.at[out].add(-jnp.sum(d_asset[:, None] * oh, 0))
    bal = bal.at[out, USDT].add(-jnp.sum(d_usdt))
    return state.replace(acct=acct.replace(bal=bal, ext_bal=ext))


def lp_equity(state: SimState, params: Params, asset_px: Array) -> Array:
    """The LP's marked equity in USDT (free balances, resting spot reserves and perp uPnL)
    minus the value of holding its starting inventory: its market-making PnL."""
    lp = params.dims.lp
    acct = state.acct
    wallet = jnp.sum(acct.bal[lp] * asset_px)
    reserved = 0.0
    for m in range(N_MARKETS):
        if m == PERP:
            continue
        px = level_prices(state, params, m)
        reserved = reserved + jnp.sum(state.book.qty[m, BID, :, LP_SLOT] * px)
        reserved = reserved + state.book.qty[m, ASK, :, LP_SLOT].sum() * asset_px[MARKET_ASSET[m]]
    upnl = acct.pos[lp] * (state.px.mark - acct.entry[lp])
    # Against holding the starting inventory: what market making itself earned or lost.
    a0 = params.accounts
    hold = jnp.sum(a0.bal[lp] * asset_px) + a0.pos[lp] * (state.px.mark - a0.entry[lp])
    return wallet + reserved + upnl - hold
