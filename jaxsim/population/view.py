"""One tick's snapshot as every behaviour reads it, per user account.

Shapes: U = dims.n_accounts - N_SYSTEM user accounts (the system accounts never carry a
behaviour), M = N_MARKETS, G = dims.n_levels, AS = 4 assets.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from jaxsim import margin as mg
from jaxsim.mechanisms import margin_checks
from jaxsim.population.market import (
    MARKET_ASSET_ARR,
    external_price,
    level_prices,
    own_bids,
    quotes,
)
from jaxsim.types import N_MARKETS, N_SYSTEM, PERP, Params, SimState

Array = jax.Array


class View(NamedTuple):
    """The snapshot the behaviours share (built once a tick by `view`)."""

    n_user: int  # U
    ids: Array  # (U,) account ids 0..U-1
    kind: Array  # (U,) behaviour (types.BEH_*)
    pos: Array  # (U,) perp position, base units
    bal: Array  # (U, AS) exchange balances
    ext: Array  # (U, AS) balances held on the external venues
    eq: Array  # (U,) unhaircut equity in USDT, floored at 0
    mark: Array  # () perp mark price
    act: Array  # (U,) bool: the account acts this tick (probability act_prob)
    z: Array  # (U,) standard normal noise
    grids: list  # M arrays (G,): each market's level prices
    bids: Array  # (M,) best bid (0 if none)
    asks: Array  # (M,) best ask (0 if none)
    mids: Array  # (M,) mid (the last price while a side is empty)
    cap_q: Array  # () largest perp position (base units) the rules in force allow, less 5%
    cap_ann_q: Array  # (U,) largest perp position its equity allows under the announced rules, less 5% (inf: none announced)
    must_cut: Array  # (U,) bool: its perp position is above what the announced rules allow
    top_own: Array  # (U,) top price of the account's resting bids on its own market
    resv: Array  # (U,) USDT its resting bids on its own market reserve
    # Its own market column (PopParams.market: an arbitrageur's or looper's book).
    xm: Array  # (U,) its market
    asset: Array  # (U,) that market's asset
    pe: Array  # (U,) the external venues' price of that asset
    held: Array  # (U,) the asset held on the exchange
    held_ext: Array  # (U,) the asset held on the external venues
    ask_x: Array  # (U,) its market's best ask (0 if none)
    bid_x: Array  # (U,) its market's best bid (0 if none)


def pending_changes(state: SimState, params: Params) -> Array:
    """(S,) bool: schedule rows announced and not yet in force."""
    sch = params.schedule
    return sch.active & (sch.announce_tick <= state.t) & (sch.effective_tick > state.t)


def announced_rules(state: SimState, params: Params):
    """The rules in force with every announced, not yet effective change of the position
    limit and the tiers' max leverage applied at its strictest (the lowest value announced
    per element): what a trader plans for once a cut is announced (MECHANICS 5: when
    existing positions are affected, users deleverage or face liquidation). Other fields
    (floors, rates) stay as in force."""
    sch = params.schedule
    pending = pending_changes(state, params)
    flat, unravel = ravel_pytree(state.rules)
    offsets = unravel(jnp.arange(flat.size, dtype=jnp.int32))  # static element offsets
    rules = state.rules

    def strictest(now: Array, off: Array) -> Array:
        hit = pending[:, None] & (sch.flat_index[:, None] == jnp.ravel(off)[None, :])
        ann = jnp.min(jnp.where(hit, sch.value[:, None].astype(now.dtype), jnp.inf), axis=0)
        return jnp.minimum(now, ann.reshape(jnp.shape(now)))

    return rules.replace(
        position_limit=strictest(rules.position_limit, offsets.position_limit),
        tier_max_lev=strictest(rules.tier_max_lev, offsets.tier_max_lev),
    )


def view(key: Array, state: SimState, params: Params, equity: Array) -> View:
    """This tick's `View`. `equity`: (A,) each account's unhaircut equity in USDT; `key`
    draws who acts and the signal noise."""
    pp = params.pop
    n_user = params.dims.n_accounts - N_SYSTEM
    dtype = state.acct.bal.dtype
    acct = state.acct
    k_act, k_noise = jax.random.split(key)
    ids = jnp.arange(n_user)
    bal = acct.bal[:n_user]
    ext = acct.ext_bal[:n_user]
    grids = [level_prices(state, params, m) for m in range(N_MARKETS)]
    bids, asks, mids = quotes(state, params)
    # Nobody plans a position the rules in force would reject outright.
    limit_now = mg.position_limit_in_force(state.rules, state.book.qty[PERP], grids[PERP])
    # What the announced rules will allow each account's equity (its plan; the engine
    # checks its margin balance), while a change is announced and not yet in force
    # (otherwise no bound: a trader over what the rules in force allow rides its position,
    # as before any announcement).
    announced = jnp.any(pending_changes(state, params))
    eq = jnp.maximum(equity[:n_user], 0.0)
    allowed = margin_checks.max_allowed_notional(eq, announced_rules(state, params))
    allowed = jnp.where(announced, allowed, jnp.inf)
    pos = acct.pos[:n_user]
    top_own, resv = own_bids(state, grids, pp.market[:n_user], ids)
    xm = pp.market[:n_user]
    asset = MARKET_ASSET_ARR[xm]
    return View(
        n_user=n_user,
        ids=ids,
        kind=pp.kind[:n_user],
        pos=pos,
        bal=bal,
        ext=ext,
        eq=eq,
        mark=state.px.mark,
        act=jax.random.uniform(k_act, (n_user,), dtype) < pp.act_prob[:n_user],
        z=jax.random.normal(k_noise, (n_user,), dtype),
        grids=grids,
        bids=bids,
        asks=asks,
        mids=mids,
        cap_q=0.95 * limit_now / state.px.mark,
        cap_ann_q=0.95 * allowed / state.px.mark,
        must_cut=jnp.abs(pos) * state.px.mark > allowed,
        top_own=top_own,
        resv=resv,
        xm=xm,
        asset=asset,
        pe=external_price(state, xm),
        held=jnp.take_along_axis(bal, asset[:, None], 1)[:, 0],
        held_ext=jnp.take_along_axis(ext, asset[:, None], 1)[:, 0],
        ask_x=asks[xm],
        bid_x=bids[xm],
    )
