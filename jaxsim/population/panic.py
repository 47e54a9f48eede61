"""Panic sellers (BEH_PANIC): sell `speed` of their BASE per tick while the spot drawdown
from its peak is above `threshold` or the liquidation EWMA above `exit` USDT per second."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxsim.population.view import View
from jaxsim.types import BASE, SPOT, Params, SimState

Array = jax.Array


def panic_seller(v: View, state: SimState, params: Params) -> Array:
    """(U,) BASE each account would sell on spot this tick (0 when not panicking)."""
    pp, n_user = params.pop, v.n_user
    thr, ex = pp.threshold[:n_user], pp.exit[:n_user]
    dd = 1.0 - state.px.last[SPOT] / state.pop.peak_spot
    panic = (dd > thr) | ((ex > 0) & (state.pop.liq_ewma > ex))
    return jnp.where(panic, pp.speed[:n_user] * jnp.maximum(v.bal[:, BASE], 0.0), 0.0)
