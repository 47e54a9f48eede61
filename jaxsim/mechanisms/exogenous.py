"""External venues: their prices move by GBM with stochastic volatility, jumps, scripted
shocks and the impact of the flow traded here."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxsim.ops import materialize
from jaxsim.types import (
    Params,
    SimState,
)

Array = jax.Array


VOL_EWMA_S = 300.0  # time constant of the realized-vol estimate used by the LP


def move_venues(key, state: SimState, params: Params) -> SimState:
    """One tick of the external venues: BASE by GBM (plus the venue impact of the flow
    traded here), STABLE mean-reverting to 1, LST as BASE x redemption rate x a
    mean-reverting premium; stochastic volatility, Poisson jumps and scripted shocks on
    top; per-venue dispersion; the realized-volatility EWMA the LP watches."""
    exo, dt = params.exo, params.dt
    k1, k2 = jax.random.split(key)
    dtype = state.px.ext.dtype
    z = jax.random.normal(k1, (3,), dtype)
    noise = jax.random.normal(k2, (3, params.dims.n_venues), dtype)
    # The draws, computed once: XLA would fuse the normal transform into each of their
    # consumers (benchmarks.compile_size); a few values per env, so the sort is cheap.
    z, noise = materialize(z, noise)
    sv, shock_drift = _vol_and_shocks(key, state, params)
    sig = exo.vol_per_sqrt_s * jnp.exp(sv)
    logp = jnp.log(state.px.ext_common)
    # BASE: GBM. STABLE: mean-reverting to its redemption price 1. LST: BASE times the
    # redemption rate times a mean-reverting premium.
    d_base = -0.5 * sig[0] ** 2 * dt + sig[0] * jnp.sqrt(dt) * z[0]
    # The wider market absorbs the net flow traded here last tick (0 unless configured):
    # a log offset that decays (transient impact) or stays (half-life 0).
    imp = state.px.impact
    imp_new = imp * jnp.exp(-exo.venue_impact_decay_per_s * dt) + exo.venue_impact * state.px.flow
    d_base = d_base + imp_new - imp
    new_base = logp[0] + d_base + shock_drift[0]
    kappa = jnp.minimum(exo.stable_reversion_per_s * dt, 1.0)
    new_stable = logp[1] * (1 - kappa) + sig[1] * jnp.sqrt(dt) * z[1] + shock_drift[1]
    lst_prem = logp[2] - logp[0] - jnp.log(exo.lst_rate)
    new_lst_prem = lst_prem * (1 - kappa) + sig[2] * jnp.sqrt(dt) * z[2] + shock_drift[2]
    new_lst = new_base + jnp.log(exo.lst_rate) + new_lst_prem
    new_log = jnp.stack([new_base, new_stable, new_lst])
    common = jnp.exp(new_log)
    ext = common[:, None] * (1.0 + exo.venue_dispersion * noise)
    r = new_log - logp
    alpha = jnp.minimum(dt / VOL_EWMA_S, 1.0)
    var = (1 - alpha) * state.px.vol**2 + alpha * r**2 / dt
    return state.replace(
        px=state.px.replace(ext=ext, ext_common=common, vol=jnp.sqrt(var), impact=imp_new),
        pop=state.pop.replace(sv=sv),
    )


def _vol_and_shocks(key, state: SimState, params: Params):
    """(sv, drift), each (3,) for BASE, STABLE, LST: the stochastic-volatility log factor
    (mean-reverting) after this tick, and this tick's log-price shock (the scripted shock's
    slice plus Poisson jumps). Their draws use keys of their own (folded from `key`), so
    switching them off leaves the diffusion's path unchanged."""
    exo, dt = params.exo, params.dt
    dtype = state.px.ext.dtype
    t = state.t
    shock_on = (
        exo.shock_active
        & (t >= exo.shock_start_tick)
        & (t < exo.shock_start_tick + exo.shock_ticks)
    )
    shock_drift = (
        jnp.zeros((3,), dtype)
        .at[exo.shock_asset]
        .add(jnp.where(shock_on, exo.shock_log_return / jnp.maximum(exo.shock_ticks, 1), 0.0))
    )
    k_sv, k_jump, k_jsize = (jax.random.fold_in(key, i) for i in (1, 2, 3))
    z_sv, u_jump, z_jump = materialize(
        jax.random.normal(k_sv, (3,), dtype),
        jax.random.uniform(k_jump, (3,), dtype),
        jax.random.normal(k_jsize, (3,), dtype),
    )
    kappa_sv = jnp.minimum(exo.sv_reversion_per_s * dt, 1.0)
    sv = state.pop.sv * (1 - kappa_sv) + exo.vol_of_vol_per_sqrt_s * jnp.sqrt(dt) * z_sv
    jump = jnp.where(u_jump < exo.jump_rate_per_s * dt, exo.jump_std * z_jump, 0.0)
    return sv, shock_drift + jump
