"""Scripted programs (`population.programs` rows): market-order flows such as a whale's
block sale, ETF outflows or a manipulator's legs, `qty` base units per tick over their
window. Shapes: P = dims.n_programs."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxsim.population.market import market_refs
from jaxsim.types import KIND_MARKET, KIND_NONE, Params, SimState

Array = jax.Array


def program_orders(state: SimState, params: Params) -> tuple[Array, Array, Array, Array]:
    """This tick's program rows: (P,) active, (P,) kind, (P,) quantity and (P,) limit price
    (0 = none). A carrying program sends what is due by the end of this tick less what it
    traded; the others send their slice and drop what does not fill. A limited program
    trades no worse than its market's reference price (`market_refs`) by `prog_limit`."""
    pp, t = params.pop, state.t
    on = pp.prog_active & (t >= pp.prog_start) & (t < pp.prog_end)
    due = pp.prog_qty * jnp.clip(t + 1 - pp.prog_start, 0, pp.prog_end - pp.prog_start)
    q_prog = jnp.where(pp.prog_carry, jnp.maximum(due - state.pop.prog_done, 0.0), pp.prog_qty)
    q_prog = jnp.where(on, q_prog, 0.0)
    ref = market_refs(state)[pp.prog_market]
    px_prog = jnp.where(pp.prog_limit > 0, ref * (1.0 + pp.prog_side * pp.prog_limit), 0.0)
    kp = jnp.where(on & (q_prog > 0), KIND_MARKET, KIND_NONE)
    return on, kp, q_prog, px_prog
