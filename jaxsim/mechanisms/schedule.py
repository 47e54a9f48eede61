"""The rule schedule: due rule changes take effect; positions that break the new rules
are force-reduced, liquidated or grandfathered per the change's policy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from jaxsim import ops
from jaxsim.mechanisms import accounts, margin_checks, matching, tick_acc
from jaxsim.ops import while_loop as tied_while_loop
from jaxsim.types import (
    PERP,
    POLICY_FORCE_REDUCE,
    Params,
    SimState,
)

Array = jax.Array


def apply_due(state: SimState, params: Params, acc: tick_acc.TickAcc):
    """Apply due rule changes; queue breaching accounts for the change's policy."""
    sch = params.schedule
    due = sch.active & (sch.effective_tick == state.t)
    flat, unravel = ravel_pytree(state.rules)
    # Only the due rows write: a field with several rows (a phased change) or padding rows
    # (index 0) must not write their current value back over the due one, as a scatter
    # with duplicate indices keeps an unspecified one of them. The config allows at most
    # one row per rule element and tick.
    idx = jnp.where(due, sch.flat_index, flat.shape[0])
    flat = flat.at[idx].set(sch.value.astype(flat.dtype), mode="drop")
    state = state.replace(rules=unravel(flat))
    policy = jnp.max(jnp.where(due, sch.policy, 0))
    acc = acc.replace(rules_changed=acc.rules_changed + due.sum().astype(jnp.int32))
    # Positions that now break the limits (notional above the position limit, or initial
    # margin at the tier's max leverage above the margin balance) are queued for the
    # policy; grandfathered ones are left alone.
    queue = due.any() & margin_checks.breaching(state, params) & (policy > 0)
    state = state.replace(enforce=jnp.where(queue, policy, state.enforce))
    return force_reduce(state, params, acc)


def force_reduce(state: SimState, params: Params, acc: tick_acc.TickAcc):
    """Cut queued force-reduce accounts back to what the rules in force allow, by market order
    no worse than the mark x (1 -/+ `rules.sale_band`) (the mark is the tick's opening
    one: nothing re-prices it before the cut).

    Up to `dims.liq_per_round` accounts per tick; the rest stay queued for the next tick,
    as does an account whose cut the band (or the book) stopped short.
    """
    pending = state.enforce == POLICY_FORCE_REDUCE
    idx, valid = ops.first_k(pending, min(params.dims.liq_per_round, params.dims.n_accounts))
    n_valid = valid.sum()  # the valid slots are a prefix of idx

    def reduce_one(carry):
        i, state, acc = carry
        a = idx[i]
        mark = state.px.mark
        n_now = jnp.abs(state.acct.pos[a]) * mark
        # Orders go first so the margin they tie up is free, then the excess is sold.
        state = matching.cancel_all(state, params, a, True)
        allowed = margin_checks.max_allowed_notional(accounts.margin_balances(state), state.rules)[
            a
        ]
        qty = jnp.maximum(n_now - allowed, 0.0) / mark
        side = -jnp.sign(state.acct.pos[a])
        lim = mark * (1 + side * state.rules.sale_band)
        state, acc, _, notional = matching.take(state, params, acc, a, PERP, side, qty, lim)
        # Stays queued while the book could not absorb the whole cut.
        done = ~margin_checks.breaching(state, params)[a]
        enforce = state.enforce.at[a].set(jnp.where(done, 0, state.enforce[a]))
        return i + 1, state.replace(enforce=enforce), acc.replace(forced=acc.forced + notional)

    # A while loop over the queued accounts only: under vmap it costs the busiest env's
    # count (nothing at all on the ticks where no enforcement is pending), where a scan
    # of conds would become selects over every slot.
    _, state, acc = tied_while_loop(
        lambda c: c[0] < n_valid, reduce_one, (jnp.zeros((), jnp.int32), state, acc), n_valid
    )
    return state, acc
