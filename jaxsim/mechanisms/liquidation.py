"""The liquidation engine: cascade rounds over the accounts under maintenance, and each
account's liquidation (MECHANICS 4)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxsim import margin as mg
from jaxsim import ops
from jaxsim.mechanisms import (
    accounts,
    collateral,
    index_mark,
    insurance,
    margin_checks,
    matching,
    tick_acc,
)
from jaxsim.ops import while_loop as tied_while_loop
from jaxsim.types import (
    ISOLATED,
    PERP,
    POLICY_LIQUIDATE,
    USDT,
    Params,
    SimState,
)

Array = jax.Array


def liquidate_account(
    state: SimState, params: Params, acc: tick_acc.TickAcc, a, forced, active
) -> tuple[SimState, tick_acc.TickAcc]:
    """Liquidate account `a` if it is (still) under maintenance, or `forced` by a rule
    change, while `active` (MECHANICS 4.1):

    1. cancel its orders;
    2. IOC at the bankruptcy price into the perp book, no trading fee (partial by tiers:
       cut back to the top of the next lower tier where the rules allow it);
    3. what the book did not absorb: insurance-fund takeover within its cap, then ADL;
    4. clearance fee to the fund; a closed isolated position returns its margin;
    5. cross (and a flat isolated account, whose wallet is what is under water): debts
       repaid, collateral sold into its own spot books; a hole left after that is the
       fund's, against the collateral left.
    """
    # Re-checked at the account's turn: earlier liquidations this round moved prices.
    liq = active & (
        margin_checks.needs_liquidation(state, params)[a] | (forced & (state.acct.pos[a] != 0))
    )
    state = matching.cancel_all(state, params, a, liq)
    pos = state.acct.pos[a]
    flat = pos == 0
    s = jnp.sign(pos)
    p_bk = mg.bankruptcy_price(pos, state.px.mark, accounts.equity(state)[a])
    cut = _liquidation_cut(state, a, forced, liq)
    lim = jnp.where(s > 0, jnp.maximum(p_bk, 0.0), jnp.where(p_bk > 0, p_bk, jnp.inf))
    # No trading fee on the IOC: the clearance fee replaces it.
    state, acc, f_fill, n_fill = matching.take(
        state, params, acc, a, PERP, -s, cut, lim, fee_rate=0.0
    )
    rem = jnp.maximum(cut - f_fill, 0.0)
    state, absorbed = insurance.absorb(state, params, a, s, rem, p_bk)
    liq_notional = n_fill + (absorbed.fund_qty + absorbed.adl_qty) * p_bk
    state = _clearance_fee(state, params, a, liq, liq_notional)
    cross_liq = liq & ((state.acct.mode[a] != ISOLATED) | flat)
    state, acc = collateral.liquidation_sales(state, params, acc, a, cross_liq)
    state, bad = insurance.cover_bust(state, params, a, cross_liq)

    liq_n = jnp.where(liq, liq_notional, 0.0)
    acc = acc.replace(
        liq_long=acc.liq_long + jnp.where(s > 0, liq_n, 0.0),
        liq_short=acc.liq_short + jnp.where(s < 0, liq_n, 0.0),
        liq_mask=acc.liq_mask.at[a].set(acc.liq_mask[a] | liq),
        takeover=acc.takeover + absorbed.fund_qty * p_bk + absorbed.left_qty * p_bk,
        adl_count=acc.adl_count + absorbed.adl_count,
        adl_notional=acc.adl_notional + absorbed.adl_total * p_bk,
        bad_debt=acc.bad_debt + jnp.maximum(bad, 0.0),
    )
    return state, acc


def _liquidation_cut(state: SimState, a, forced, liq) -> Array:
    """Quantity of account a's position to close: all of it, or with partial liquidation
    (and not forced) down to the top of the next lower tier; 0 when not liquidated."""
    rules = state.rules
    mark = state.px.mark
    pos = state.acct.pos[a]
    notional = jnp.abs(pos) * mark
    k = mg.tier_index(notional, rules.tier_floor)
    partial = (rules.partial_liquidation > 0) & (k > 0) & ~forced
    target_n = rules.tier_floor[k] * (1 - 1e-6)
    cut = jnp.where(partial, jnp.abs(pos) - target_n / mark, jnp.abs(pos))
    return jnp.where(liq, jnp.clip(cut, 0.0, jnp.abs(pos)), 0.0)


def _clearance_fee(state: SimState, params: Params, a, liq, liq_notional) -> SimState:
    """Clearance fee on the liquidated notional to the fund, never more than the equity
    left; then a closed isolated position returns its margin (a negative one is paid by
    the fund)."""
    ins = params.dims.insurance
    acct = state.acct
    eq_after = accounts.equity(state)[a]
    fee = jnp.where(
        liq, jnp.minimum(state.rules.liq_fee * liq_notional, jnp.maximum(eq_after, 0.0)), 0.0
    )
    iso = acct.mode[a] == ISOLATED
    acct = acct.replace(
        bal=acct.bal.at[a, USDT].add(jnp.where(iso, 0.0, -fee)).at[ins, USDT].add(fee),
        iso_margin=acct.iso_margin.at[a].add(jnp.where(iso, -fee, 0.0)),
    )
    closed_iso = iso & (acct.pos[a] == 0) & liq
    im = acct.iso_margin[a]
    acct = acct.replace(
        bal=acct.bal.at[a, USDT]
        .add(jnp.where(closed_iso, jnp.maximum(im, 0.0), 0.0))
        .at[ins, USDT]
        .add(jnp.where(closed_iso, jnp.minimum(im, 0.0), 0.0)),
        iso_margin=acct.iso_margin.at[a].set(jnp.where(closed_iso, 0.0, im)),
    )
    return state.replace(acct=acct)


def run(state: SimState, params: Params, acc: tick_acc.TickAcc):
    """`cascade_rounds` rounds, re-priced between them. Each takes the accounts under
    maintenance at its start (and those a rule change queued for liquidation), in account
    order, up to `liq_per_round` of them; the rest wait for the next round or tick."""
    k = min(params.dims.liq_per_round, params.dims.n_accounts)
    n_rounds = params.dims.cascade_rounds

    def one_round(carry):
        r, _, state, acc = carry
        state = index_mark.reprice(state, params)
        forced = state.enforce == POLICY_LIQUIDATE
        idx, valid = ops.first_k(margin_checks.needs_liquidation(state, params) | forced, k)
        # After the last round only the re-price runs.
        n_valid = jnp.where(r < n_rounds, valid.sum(), 0)  # the valid slots are a prefix

        def slot(c):
            i, st, ac = c
            a = idx[i]
            st, ac = liquidate_account(st, params, ac, a, forced[a], jnp.bool_(True))
            enforce = st.enforce.at[a].set(jnp.where(forced[a], 0, st.enforce[a]))
            return i + 1, st.replace(enforce=enforce), ac

        # Only the flagged slots run: under vmap a while loop costs the busiest env's
        # count, where a scan of conds would become selects over every slot.
        _, state, acc = tied_while_loop(
            lambda c: c[0] < n_valid, slot, (jnp.zeros((), jnp.int32), state, acc), n_valid
        )
        return r + 1, n_valid > 0, state, acc

    # Each round re-prices first; the loop stops after a round that found nobody (its
    # re-price is the final one: re-pricing is idempotent, so further rounds would change
    # nothing) or after the re-price that follows the last round. One re-price site in
    # the compiled program rather than two.
    # The flag (the predicate) is batched as soon as the mark (which decides who is under
    # maintenance) is.
    _, _, state, acc = tied_while_loop(
        lambda c: c[1],
        one_round,
        (jnp.zeros((), jnp.int32), jnp.bool_(True), state, acc),
        state.px.mark,
    )
    # The fund unwinds part of its taken-over position into the book, and sells the
    # collateral it took from bankrupt accounts into its own spot books at the same rate
    # (the liquidation engine keeps selling until the inventory is gone). Most ticks it
    # holds neither: `ops.once` skips the four book walks then.
    ins = params.dims.insurance
    held = jnp.stack(
        [jnp.maximum(state.acct.bal[ins, a], 0.0) for a in collateral.COLLATERAL_SALE_ORDER]
    )
    busy = (state.acct.pos[ins] != 0) | jnp.any(held > 0)
    return ops.once(busy, lambda c: insurance.unwind(*c, params), (state, acc))
