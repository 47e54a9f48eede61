"""Margin checks on positions: initial margin in use, the largest notional the rules
allow, rule breaches and the maintenance check."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxsim import margin as mg
from jaxsim.mechanisms import accounts
from jaxsim.ops import materialize, sum_last
from jaxsim.types import (
    CROSS,
    ISOLATED,
    OK,
    REJ_LEVERAGE,
    REJ_MARGIN,
    REJ_POSITION_LIMIT,
    USDT,
    Params,
    SimState,
)

Array = jax.Array


def im_total_of(state: SimState, params: Params, a) -> Array:
    """Initial margin of account a's position and resting perp orders at its leverage."""
    acct = state.acct
    notional = jnp.abs(acct.pos[a]) * state.px.mark + accounts.open_order_notional_of(
        state, params, a
    )
    return notional / jnp.maximum(acct.lev[a], 1.0)


def breaching(state: SimState, params: Params) -> Array:
    """(A,) user accounts whose position is above what the rules in force allow them."""
    acct = state.acct
    n = jnp.abs(acct.pos) * state.px.mark
    n_allowed = max_allowed_notional(accounts.margin_balances(state), state.rules)
    return (n > n_allowed * (1 + 1e-6)) & ~accounts.system_mask(params) & (acct.pos != 0)


def max_allowed_notional(mb: Array, rules) -> Array:
    """Largest notional N with N <= position limit and N / max_lev(N) <= MB, per account."""
    floor = rules.tier_floor
    upper = jnp.concatenate([floor[1:], jnp.full((1,), jnp.inf, floor.dtype)])
    # The margin balances once, not once per tier (`ops.materialize`).
    cap = jnp.maximum(materialize(mb), 0.0)[:, None] * rules.tier_max_lev[None, :]  # (A, T)
    in_tier = jnp.minimum(cap, upper[None, :] * (1 - 1e-7))
    ok = cap >= floor[None, :]
    best = jnp.max(jnp.where(ok, in_tier, 0.0), axis=-1)
    return jnp.minimum(best, rules.position_limit)


def needs_liquidation(state: SimState, params: Params) -> Array:
    """(A,) margin balance below maintenance at mark, for accounts with any exposure.

    A flat isolated account has no position margin to check: its wallet is (haircut
    collateral value below zero, i.e. a negative USDT balance or debts its collateral
    does not cover, MECHANICS 3.3's LTV >= 1 without positions). Isolated accounts with a
    position are checked on the position's margin only."""
    acct = state.acct
    mb = accounts.margin_balances(state)
    wallet = mg.collateral_value(
        acct.bal, acct.debt, accounts.asset_prices(state.px), state.rules.haircut
    )
    mb = jnp.where((acct.mode == ISOLATED) & (acct.pos == 0), wallet, mb)
    mm = mg.maint_margin(jnp.abs(acct.pos) * state.px.mark, state.rules)
    exposure = (acct.pos != 0) | (sum_last(acct.debt) > 0) | (acct.bal[:, USDT] < 0)
    return (mb < mm) & exposure & ~accounts.system_mask(params)


def perp_order_check(
    state: SimState, params: Params, a, side, qty, f_dry, n_dry, rest_notional, q_m, px
) -> Array:
    """Reason code of a perp order of account a that opens exposure: one that increases
    the position, or flips it to the other side (the new side is a new position, checked
    in full even when smaller than the old one: +10 -> -6 opens a 6 short). Checked: the
    position limit in force (scaled to the perp book's depth `q_m` at prices `px` where
    the rules say so) and the tier's max leverage at the notional the whole order would
    reach, then margin after the walk's fill (`f_dry` at notional `n_dry`) and its taker fee
    (the account's rate, `accounts.fee_rates`).
    Cross: margin balance after the fill's impact covers the initial margin of the new
    position and of all resting orders. Isolated: the wallet covers what settlement
    takes from it (`margin.isolated_fill`: the increase's margin at the fill price, less
    a released margin, plus the fee) and the initial margin of all resting orders.
    Orders that only reduce the position pass (OK)."""
    acct, rules, mark = state.acct, state.rules, state.px.mark
    pos = acct.pos[a]
    new_pos = pos + side * qty
    n_new = jnp.abs(new_pos) * mark
    opens = (jnp.abs(new_pos) > jnp.abs(pos)) | (pos * new_pos < 0)
    lev = acct.lev[a]
    mb = accounts.margin_balance_of(state, a)
    avg_dry = n_dry / jnp.maximum(f_dry, 1e-30)
    fee = n_dry * accounts.taker_rate_of(state, params, a)
    impact = side * f_dry * (mark - avg_dry) - fee
    orders_im = (accounts.open_order_notional_of(state, params, a) + rest_notional) / lev
    free_cross = mb + impact - n_new / lev - orders_im
    wallet = mg.collateral_value(
        acct.bal[a], acct.debt[a], accounts.asset_prices(state.px), rules.haircut
    )
    to_wallet, _, _ = mg.isolated_fill(
        pos, acct.entry[a], acct.iso_margin[a], lev, side * f_dry, avg_dry
    )
    free_iso = wallet + to_wallet - fee - orders_im
    free = jnp.where(acct.mode[a] == CROSS, free_cross, free_iso)
    limit_now = mg.position_limit_in_force(rules, q_m, px)
    reason = jnp.where(
        n_new > limit_now,
        REJ_POSITION_LIMIT,
        jnp.where(
            lev > mg.max_leverage(n_new, rules), REJ_LEVERAGE, jnp.where(free < 0, REJ_MARGIN, OK)
        ),
    )
    return jnp.where(opens, reason, OK)
