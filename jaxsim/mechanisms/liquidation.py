"""The liquidation engine: cascade rounds over the accounts under maintenance, and each
account's liquidation (MECHANICS 4)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxsim import book as bk
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
from jaxsim.ops import sum_last
from jaxsim.ops import while_loop as tied_while_loop
from jaxsim.types import (
    BID,
    ISOLATED,
    PERP,
    POLICY_LIQUIDATE,
    USDT,
    Params,
    SimState,
)

Array = jax.Array


def liquidate_account(state: SimState, params: Params, acc: tick_acc.TickAcc, a, forced, active):
    dims = params.dims
    n = dims.n_accounts
    dtype = state.acct.bal.dtype
    rules = state.rules
    mark = state.px.mark
    # Re-checked at the account's turn: earlier liquidations this round moved prices.
    liq = active & (
        margin_checks.needs_liquidation(state, params)[a] | (forced & (state.acct.pos[a] != 0))
    )
    state = matching.cancel_all(state, params, a, liq)
    acct = state.acct
    pos = acct.pos[a]
    s = jnp.sign(pos)
    equity = accounts.equity(state)
    p_bk = mg.bankruptcy_price(pos, mark, equity[a])
    # Partial liquidation by tiers: cut back to the top of the next lower tier.
    notional = jnp.abs(pos) * mark
    k = mg.tier_index(notional, rules.tier_floor)
    partial = (rules.partial_liquidation > 0) & (k > 0) & ~forced
    target_n = rules.tier_floor[k] * (1 - 1e-6)
    cut = jnp.where(partial, jnp.abs(pos) - target_n / mark, jnp.abs(pos))
    cut = jnp.where(liq, jnp.clip(cut, 0.0, jnp.abs(pos)), 0.0)
    # IOC at the bankruptcy price into the perp book, no trading fee (the clearance fee
    # below replaces it).
    lim = jnp.where(s > 0, jnp.maximum(p_bk, 0.0), jnp.where(p_bk > 0, p_bk, jnp.inf))
    state, acc, f_fill, n_fill = matching.take(
        state, params, acc, a, PERP, -s, cut, lim, fee_rate=0.0
    )
    rem = jnp.maximum(cut - f_fill, 0.0)

    # Insurance-fund takeover at the bankruptcy price, within its position cap; ADL for
    # the rest when enabled.
    ins = dims.insurance
    acct = state.acct
    fund = acct.bal[ins, USDT]
    cap_q = rules.if_position_cap * jnp.maximum(fund, 0.0) / jnp.maximum(mark, accounts.TINY)
    room = jnp.maximum(cap_q - s * acct.pos[ins], 0.0)
    x_if = jnp.where(rules.adl_on > 0, jnp.minimum(rem, room), rem)
    x_adl = rem - x_if
    dq = jnp.zeros((n,), dtype).at[a].add(-s * x_if).at[ins].add(s * x_if)
    acct = matching.settle_perp(acct, dq, jnp.full((n,), p_bk, dtype))
    # ADL: opposite positions ranked by PnL% x effective leverage, closed at p_bk.
    state = state.replace(acct=acct)
    eq_all = accounts.margin_balances(state)
    score = mg.adl_score(acct.pos, acct.entry, mark, eq_all)
    # Users and the LP can be deleveraged; the outside world, fund and fee account cannot.
    eligible = (jnp.sign(acct.pos) == -s) & (jnp.arange(n) != a) & (jnp.arange(n) <= dims.lp)
    score = jnp.where(eligible, score, -jnp.inf)
    order = jnp.argsort(-score)
    size_sorted = jnp.where(eligible, jnp.abs(acct.pos), 0.0)[order]
    before = jnp.cumsum(size_sorted) - size_sorted
    take_sorted = jnp.clip(x_adl - before, 0.0, size_sorted)
    take = jnp.zeros((n,), dtype).at[order].set(take_sorted)
    adl_total = take.sum()
    dq = s * take
    dq = dq.at[a].add(-s * adl_total)
    acct = matching.settle_perp(acct, dq, jnp.full((n,), p_bk, dtype))
    # Whatever ADL could not place stays with the fund.
    left = x_adl - adl_total
    dq = jnp.zeros((n,), dtype).at[a].add(-s * left).at[ins].add(s * left)
    acct = matching.settle_perp(acct, dq, jnp.full((n,), p_bk, dtype))
    state = state.replace(acct=acct)

    # Clearance fee to the fund, never more than the equity left.
    liq_notional = n_fill + (x_if + x_adl) * p_bk
    eq_after = accounts.equity(state)[a]
    fee = jnp.where(liq, jnp.minimum(rules.liq_fee * liq_notional, jnp.maximum(eq_after, 0.0)), 0.0)
    iso = acct.mode[a] == ISOLATED
    acct = acct.replace(
        bal=acct.bal.at[a, USDT].add(jnp.where(iso, 0.0, -fee)).at[ins, USDT].add(fee),
        iso_margin=acct.iso_margin.at[a].add(jnp.where(iso, -fee, 0.0)),
    )
    # A closed isolated position returns its margin; a negative one is paid by the fund.
    closed_iso = iso & (acct.pos[a] == 0) & liq
    im = acct.iso_margin[a]
    acct = acct.replace(
        bal=acct.bal.at[a, USDT]
        .add(jnp.where(closed_iso, jnp.maximum(im, 0.0), 0.0))
        .at[ins, USDT]
        .add(jnp.where(closed_iso, jnp.minimum(im, 0.0), 0.0)),
        iso_margin=acct.iso_margin.at[a].set(jnp.where(closed_iso, 0.0, im)),
    )
    state = state.replace(acct=acct)

    # Cross: repay debts from same-asset balances; then sell collateral into its own spot
    # book to cover the USDT deficit plus the debts still unpaid (valued at index); then
    # settle those debts with the lender (non-USDT ones in USDT at index).
    cross_liq = liq & ~iso
    acct = state.acct
    rep = jnp.where(cross_liq, jnp.minimum(jnp.maximum(acct.bal[a], 0.0), acct.debt[a]), 0.0)
    acct = acct.replace(
        bal=acct.bal.at[a].add(-rep).at[dims.outside].add(rep), debt=acct.debt.at[a].add(-rep)
    )
    state = state.replace(acct=acct)
    px_a = accounts.asset_prices(state.px)
    unpaid = jnp.where(cross_liq, acct.debt[a], 0.0)
    unpaid_usdt = jnp.sum(unpaid * px_a)

    # One book walk in a loop over the collateral assets rather than one per asset: the
    # compiled program holds a single copy of it.
    def sell(j, c):
        state, acc = c
        asset = collateral.SALE_ASSET_ARR[j]
        m = collateral.SALE_MARKET_ARR[j]
        deficit = jnp.where(cross_liq, jnp.maximum(unpaid_usdt - state.acct.bal[a, USDT], 0.0), 0.0)
        px = accounts.level_px(state, params, m)
        tot = sum_last(state.book.qty[m, BID])
        need = bk.walk_for_quote(tot, px, deficit * (1 + rules.taker_fee), 0.0).sum()
        qty = jnp.minimum(need, jnp.maximum(state.acct.bal[a, asset], 0.0))
        state, acc, sold, proceeds = matching.take(state, params, acc, a, m, -1, qty, 0.0)
        acc = acc.replace(
            coll_sold=acc.coll_sold.at[asset].add(sold),
            coll_sold_usdt=acc.coll_sold_usdt + proceeds,
        )
        return state, acc

    state, acc = jax.lax.fori_loop(0, len(collateral.COLLATERAL_SALE_ORDER), sell, (state, acc))
    acct = state.acct
    acct = acct.replace(
        bal=acct.bal.at[a, USDT].add(-unpaid_usdt).at[dims.outside, USDT].add(unpaid_usdt),
        debt=acct.debt.at[a].add(-unpaid),
    )
    # Position closed and USDT still negative (the books could not absorb the collateral):
    # the fund resets the negative wallet and takes collateral worth the deficit at index
    # in exchange (MECHANICS 4.1 step 4: leftover collateral goes to the fund).
    bust = cross_liq & (acct.pos[a] == 0) & (acct.bal[a, USDT] < 0)
    hole = jnp.where(bust, -acct.bal[a, USDT], 0.0)
    bal = acct.bal
    owed = hole
    for asset in collateral.COLLATERAL_SALE_ORDER:
        units = jnp.minimum(
            jnp.maximum(bal[a, asset], 0.0), owed / jnp.maximum(px_a[asset], accounts.TINY)
        )
        units = jnp.where(bust, units, 0.0)
        bal = bal.at[a, asset].add(-units).at[ins, asset].add(units)
        owed = jnp.maximum(owed - units * px_a[asset], 0.0)
    fund0 = acct.bal[ins, USDT]
    acct = acct.replace(bal=bal.at[a, USDT].add(hole).at[ins, USDT].add(-hole))
    fund1 = acct.bal[ins, USDT]
    bad = jnp.maximum(-fund1, 0.0) - jnp.maximum(-fund0, 0.0)
    state = state.replace(acct=acct)

    liq_n = jnp.where(liq, n_fill + (x_if + x_adl) * p_bk, 0.0)
    acc = acc.replace(
        liq_long=acc.liq_long + jnp.where(s > 0, liq_n, 0.0),
        liq_short=acc.liq_short + jnp.where(s < 0, liq_n, 0.0),
        liq_mask=acc.liq_mask.at[a].set(acc.liq_mask[a] | liq),
        takeover=acc.takeover + x_if * p_bk + left * p_bk,
        adl_count=acc.adl_count + jnp.sum(take > 0).astype(jnp.int32),
        adl_notional=acc.adl_notional + adl_total * p_bk,
        bad_debt=acc.bad_debt + jnp.maximum(bad, 0.0),
    )
    return state, acc


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
