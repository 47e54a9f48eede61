"""The liquidation engine: cascade rounds over the accounts under maintenance, and each
account's liquidation (MECHANICS 4)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

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
    N_ASSETS,
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
       a solvent account is cut back to the top of the next lower tier where the rules
       allow it);
    3. what the book did not absorb: kept by a solvent account for its next turn; an
       insolvent one's goes to the insurance fund within its cap, then ADL;
    4. clearance fee to the fund; a closed isolated position returns its margin;
    5. cross (and a flat isolated account, whose wallet is what is under water): debts
       repaid, collateral sold into its own spot books; a hole left after that is the
       fund's, against the collateral left.

    Solvent: margin balance > 0 at mark at the account's turn, i.e. the bankruptcy price
    is still better than mark. The book can then still bring it back above maintenance:
    its IOC fills at prices no worse than `p_bk`, which keep the margin balance positive,
    and what the book did not take waits for the next round or tick (handing it to the
    fund at `p_bk` would give the fund that share of the account's margin balance). An
    insolvent account is closed in full: the book first, the rest to the fund and ADL.
    """
    # Re-checked at the account's turn: earlier liquidations this round moved prices.
    liq = active & (
        margin_checks.needs_liquidation(state, params)[a] | (forced & (state.acct.pos[a] != 0))
    )
    state = matching.cancel_all(state, params, a, liq)
    pos = state.acct.pos[a]
    flat = pos == 0
    s = jnp.sign(pos)
    # MECHANICS 3.4: bankrupt where the margin balance (haircuts applied, as the
    # maintenance check sees it) is zero; the haircuts are left to pay for the sale of
    # the collateral.
    mb = accounts.margin_balance_of(state, a)
    p_bk = mg.bankruptcy_price(pos, state.px.mark, mb)
    solvent = mb > 0
    cut = _liquidation_cut(state, a, forced | ~solvent, liq)
    lim = jnp.where(s > 0, jnp.maximum(p_bk, 0.0), jnp.where(p_bk > 0, p_bk, jnp.inf))

    def after_ioc(state, f_fill, n_fill):
        """Steps 3-4, and the start of step 5 (debts repaid from same-asset balances)."""
        rem = jnp.where(solvent, 0.0, jnp.maximum(cut - f_fill, 0.0))
        state, absorbed = insurance.absorb(state, params, a, s, rem, p_bk)
        liq_notional = n_fill + (absorbed.fund_qty + absorbed.adl_qty) * p_bk
        state = _clearance_fee(state, params, a, liq, liq_notional)
        cross_liq = liq & ((state.acct.mode[a] != ISOLATED) | flat)
        state, unpaid, unpaid_usdt = collateral.sales_start(state, params, a, cross_liq)
        return state, _AfterIoc(absorbed, liq_notional, cross_liq, unpaid, unpaid_usdt)

    # The IOC (turn 0) and the collateral sales (turns 1.., `COLLATERAL_SALE_ORDER`) share
    # one book walk: the compiled program holds a single copy of it. What differs between
    # the turns runs under a `cond` on the turn, the loop's counter, which is the same for
    # every env of a batch, so under vmap it stays a branch (only the taken side runs).
    def turn(j, c):
        state, acc, post = c
        ioc = j == 0

        def ioc_order(state):
            return jnp.int32(PERP), -s, cut, lim, jnp.int32(0)

        def sale(state):
            m, qty, lim_s, asset = collateral.sale_order(
                state, params, acc, a, j - 1, post.cross_liq, post.unpaid_usdt
            )
            return m, -jnp.ones_like(s), qty, lim_s, asset

        m, side, qty, limit, asset = jax.lax.cond(ioc, ioc_order, sale, state)
        # No trading fee on the IOC (the clearance fee replaces it); a sale pays the
        # account's taker rate.
        fee = jnp.where(ioc, 0.0, accounts.taker_rate_of(state, params, a))
        state, acc, filled, notional = matching.take(
            state, params, acc, a, m, side, qty, limit, fee_rate=fee
        )
        state, post = jax.lax.cond(
            ioc, lambda st: after_ioc(st, filled, notional), lambda st: (st, post), state
        )
        acc = jax.lax.cond(
            ioc, lambda: acc, lambda: collateral.record_sale(acc, asset, filled, notional)
        )
        return state, acc, post

    post0 = _AfterIoc.zero(state.acct.bal.dtype)
    n_turns = 1 + len(collateral.COLLATERAL_SALE_ORDER)
    state, acc, post = jax.lax.fori_loop(0, n_turns, turn, (state, acc, post0))
    absorbed, liq_notional = post.absorbed, post.liq_notional
    state = collateral.sales_end(state, params, a, post.unpaid, post.unpaid_usdt)
    state, bad = insurance.cover_bust(state, params, a, post.cross_liq)

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


@struct.dataclass
class _AfterIoc:
    """What `liquidate_account`'s IOC turn leaves for the sales and the account's records."""

    absorbed: insurance.Absorbed
    liq_notional: Array  # () the liquidated notional (book fills, fund and ADL at p_bk)
    cross_liq: Array  # () bool: the account's collateral is sold (cross, or flat isolated)
    unpaid: Array  # (4,) debts left after same-asset repayment
    unpaid_usdt: Array  # () their value in USDT at index

    @classmethod
    def zero(cls, dtype) -> _AfterIoc:
        z = jnp.zeros((), dtype)
        i = jnp.zeros((), jnp.int32)
        return cls(
            absorbed=insurance.Absorbed(z, z, z, i, z),
            liq_notional=z,
            cross_liq=jnp.bool_(False),
            unpaid=jnp.zeros((N_ASSETS,), dtype),
            unpaid_usdt=z,
        )


def _liquidation_cut(state: SimState, a, full, liq) -> Array:
    """Quantity of account a's position to close: all of it, or with partial liquidation
    (and not `full`: forced by a rule change, or insolvent) down to the top of the next
    lower tier; 0 when not liquidated."""
    rules = state.rules
    mark = state.px.mark
    pos = state.acct.pos[a]
    notional = jnp.abs(pos) * mark
    k = mg.tier_index(notional, rules.tier_floor)
    partial = (rules.partial_liquidation > 0) & (k > 0) & ~full
    target_n = rules.tier_floor[k] * (1 - 1e-6)
    cut = jnp.where(partial, jnp.abs(pos) - target_n / mark, jnp.abs(pos))
    return jnp.where(liq, jnp.clip(cut, 0.0, jnp.abs(pos)), 0.0)


def _clearance_fee(state: SimState, params: Params, a, liq, liq_notional) -> SimState:
    """Clearance fee on the liquidated notional to the fund, never more than the margin
    balance left (the haircut cushion of a bankrupt account's collateral stays to pay for
    its sale); then a closed isolated position returns its margin (a negative one is paid
    by the fund)."""
    ins = params.dims.insurance
    acct = state.acct
    mb_after = accounts.margin_balance_of(state, a)
    fee = jnp.where(
        liq, jnp.minimum(state.rules.liq_fee * liq_notional, jnp.maximum(mb_after, 0.0)), 0.0
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


def _queued(state: SimState, params: Params) -> Array:
    """(A,) accounts the liquidation engine takes: under maintenance, or queued for
    liquidation by a rule change and still holding a position."""
    forced = (state.enforce == POLICY_LIQUIDATE) & (state.acct.pos != 0)
    return margin_checks.needs_liquidation(state, params) | forced


def _worst_first(state: SimState, params: Params, k: int) -> tuple[Array, Array]:
    """Indices of the (at most) k queued accounts with the lowest margin ratio MB / MM,
    ties by account index, and their validity (the valid slots are a prefix).

    The accounts nearest to (or furthest past) bankruptcy for their size go first, so a
    backlog is left among the healthiest. An account with a debt or a negative USDT
    balance but no position (MM = 0, MB < 0) ranks first. A rule change's `liquidate`
    queue is ranked by the same ratio: above maintenance it is >= 1, so those accounts
    come after every account under maintenance."""
    acct = state.acct
    mb = accounts.margin_balances(state)
    mm = mg.maint_margin(jnp.abs(acct.pos) * state.px.mark, state.rules)
    ratio = jnp.clip(mb / jnp.maximum(mm, accounts.TINY), -1e30, 1e30)
    queued = _queued(state, params)
    # top_k keeps the lower index first among equal values.
    _, idx = jax.lax.top_k(jnp.where(queued, -ratio, -jnp.inf), k)
    return idx, queued[idx]


def run(state: SimState, params: Params, acc: tick_acc.TickAcc):
    """`cascade_rounds` rounds, re-priced between them. Each takes the accounts under
    maintenance at its start (and those a rule change queued for liquidation), worst
    margin ratio first, up to `liq_per_round` of them; the rest wait for the next round
    or tick. The accounts still queued when the rounds end are the tick's backlog."""
    k = min(params.dims.liq_per_round, params.dims.n_accounts)
    n_rounds = params.dims.cascade_rounds

    def one_round(carry):
        r, _, state, acc = carry
        state = index_mark.reprice(state, params)
        # A queued account that closed its position itself has nothing left to liquidate.
        flat = (state.enforce == POLICY_LIQUIDATE) & (state.acct.pos == 0)
        state = state.replace(enforce=jnp.where(flat, 0, state.enforce))
        forced = state.enforce == POLICY_LIQUIDATE
        idx, valid = _worst_first(state, params, k)
        # After the last round only the re-price runs.
        n_valid = jnp.where(r < n_rounds, valid.sum(), 0)  # the valid slots are a prefix

        def slot(c):
            i, st, ac = c
            a = idx[i]
            st, ac = liquidate_account(st, params, ac, a, forced[a], jnp.bool_(True))
            # A forced account stays queued until its position is closed (a solvent one
            # keeps what the book could not take).
            done = forced[a] & (st.acct.pos[a] == 0)
            enforce = st.enforce.at[a].set(jnp.where(done, 0, st.enforce[a]))
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
    # Queued after the last re-price (a round found nobody, or the rounds ran out): left
    # for the next tick.
    acc = acc.replace(liq_backlog=_queued(state, params).sum().astype(jnp.int32))
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
