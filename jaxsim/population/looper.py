"""Collateral loopers (BEH_LOOPER): USDT borrowed against their market's asset (STABLE or
LST) and spent on more of it, unwound into the book when the asset depegs. See the package
docstring for the rule. Shapes: U user accounts."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxsim.population.view import View
from jaxsim.types import KIND_BORROW, KIND_MARKET, KIND_NONE, KIND_REPAY, USDT, Params, SimState

Array = jax.Array


class Looper(NamedTuple):
    """A looper's two slots this tick, per user account (U,)."""

    unwind: Array  # bool: depeg scare, it sells (slot 1) and repays (slot 2)
    lever: Array  # bool: under target, it borrows USDT (slot 1) and buys (slot 2)
    qty1: Array  # asset units sold, or USDT borrowed
    kind1: Array  # KIND_MARKET (sale), KIND_BORROW or KIND_NONE
    qty2: Array  # asset units bought, or USDT repaid
    kind2: Array  # KIND_MARKET (buy), KIND_REPAY or KIND_NONE


def looper(v: View, state: SimState, params: Params) -> Looper:
    """Lever toward `lev_target` x equity in the asset while it trades within `exit` of its
    external price; unwind `speed` of the holding while it is more than `threshold` under."""
    pp, n_user, ask_x, held = params.pop, v.n_user, v.ask_x, v.held
    mid_x = v.mids[v.xm]
    discount = 1.0 - mid_x / jnp.maximum(v.pe, 1e-12)
    unit_px = jnp.maximum(mid_x, 1e-12)
    loop_target = pp.lev_target[:n_user] * v.eq / unit_px
    loop_gap = loop_target - held
    debt_usdt = state.acct.debt[:n_user, USDT]
    scare = discount > pp.threshold[:n_user]
    under = (
        (loop_gap > pp.min_trade[:n_user] * loop_target)
        & (discount < pp.exit[:n_user])
        & (ask_x > 0)
    )
    unwind = v.act & (debt_usdt > 0) & scare & (held > 0)
    lever = v.act & ~unwind & under & (v.eq > 0)
    l_sell = pp.speed[:n_user] * held
    l_borrow = pp.speed[:n_user] * loop_gap * ask_x
    # Slot 2: the buy with the borrowed USDT (a little under it, for the book's slope), or
    # the repayment from USDT already held (this tick's sale proceeds repay next tick).
    return Looper(
        unwind=unwind,
        lever=lever,
        qty1=jnp.where(unwind, l_sell, jnp.where(lever, l_borrow, 0.0)),
        kind1=jnp.where(unwind, KIND_MARKET, jnp.where(lever, KIND_BORROW, KIND_NONE)),
        qty2=jnp.where(
            lever,
            0.98 * l_borrow / jnp.maximum(ask_x, 1e-12),
            jnp.where(unwind, jnp.minimum(debt_usdt, jnp.maximum(v.bal[:, USDT], 0.0)), 0.0),
        ),
        kind2=jnp.where(lever, KIND_MARKET, jnp.where(unwind, KIND_REPAY, KIND_NONE)),
    )
