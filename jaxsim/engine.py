"""The exchange: one tick (`step`) as a list of phases, `reset`, `rollout` and `audit`.

One tick, in the order of docs/design.md (each phase lives in `jaxsim.mechanisms`):

1. exogenous: the external venues' prices move (GBM, stochastic vol, jumps, shocks);
2. schedule: due rule changes take effect; breaching positions are force-reduced,
   queued for liquidation or grandfathered per the change's policy;
3. liquidity: the liquidity provider re-centres grids and re-quotes its depth;
4. population: background traders decide on one snapshot; their orders, then the
   learning agents', are processed in sequence (`orders.process`);
5. collateral: transfers between the exchange and external venues arrive;
6. index_mark + funding: index and mark re-priced, basis and premium sampled, funding
   settled at interval boundaries, and with it interest on debts and negative USDT;
7. liquidation: cascade rounds (re-priced between them) liquidate accounts under
   maintenance; the insurance fund takes over or ADL closes what the book cannot absorb;
   then the fund unwinds part of its inventory, and a deficit the fund cannot back is
   written off as bad debt;
8. events for the tick (`jaxsim.events`).

Everything is pure JAX with static loop bounds; `step` is jittable and vmappable over
state, orders and params.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxsim import events
from jaxsim import population as popm
from jaxsim import prices as pr
from jaxsim.mechanisms import (
    accounts,
    collateral,
    exogenous,
    funding,
    index_mark,
    insurance,
    liquidation,
    liquidity,
    schedule,
    tick_acc,
)
from jaxsim.mechanisms.orders import process as process_orders
from jaxsim.ops import tie
from jaxsim.types import (
    ASK,
    BASE,
    BID,
    KIND_LIMIT,
    KIND_MARKET,
    KIND_NONE,
    LP_SLOT,
    LST,
    MARKET_ASSET,
    N_ASSETS,
    N_MARKETS,
    OK,
    PERP,
    SPOT,
    STABLE,
    USDT,
    AccountState,
    Book,
    Orders,
    Params,
    PopState,
    PriceState,
    SimState,
    TickEvents,
)

Array = jax.Array


def no_orders(params: Params) -> Orders:
    """An empty order batch of the shape `step` expects."""
    k = params.dims.max_orders
    zi = jnp.zeros((k,), jnp.int32)
    zf = jnp.zeros((k,), params.dt.dtype)
    return Orders(account=zi, market=zi, side=zi, kind=zi, qty=zf, price=zf)


def step(
    key: Array, state: SimState, orders: Orders, params: Params
) -> tuple[SimState, TickEvents]:
    """Advance one tick; `orders` (K,) are the learning agents'. Returns (state, events)."""
    # Each phase runs under a named scope (`PHASES`): it names the compiled program's ops
    # (profiles, `benchmarks.compile_size`) and changes nothing else.
    k_exo, k_pop = jax.random.split(key)
    acc = _start_tick(state, params, key)
    fund0 = state.acct.bal[params.dims.insurance, USDT]

    with jax.named_scope("exogenous"):
        state = exogenous.move_venues(k_exo, state, params)
        state = index_mark.reprice(state, params)
        # The engine's own collateral sales this tick are banded around this opening index.
        acc = acc.replace(sale_ref=accounts.asset_prices(state.px))
    with jax.named_scope("schedule"):
        state, acc = schedule.apply_due(state, params, acc)
    with jax.named_scope("liquidity"):
        state = liquidity.requote(state, params)
    with jax.named_scope("population"):
        state, bg, arb = _background_orders(k_pop, state, params)
    with jax.named_scope("orders"):
        rows = jax.tree_util.tree_map(lambda x, y: jnp.concatenate([x, y]), bg, orders)
        state, acc, results = process_orders(state, params, rows, acc)
        state, background = _background_record(state, params, bg, arb, results)
    with jax.named_scope("prices_funding"):
        state = collateral.arrivals(state)
        state = index_mark.reprice(state, params)
        state, paid = funding.sample_and_settle(state, params)
        state = collateral.charge_interest(state, params, paid.settled)
    with jax.named_scope("liquidation"):
        state, acc = liquidation.run(state, params, acc)
        state, acc = insurance.write_off(state, params, acc)
    with jax.named_scope("events"):
        state = _end_tick(state, params, acc, background)
        ext = results.rows(slice(bg.kind.shape[0], None))
        ev = events.build(state, params, acc, fund0, paid, ext, background)
    return state, ev


# The named scopes of `step`'s phases, in tick order.
PHASES = (
    "exogenous",
    "schedule",
    "liquidity",
    "population",
    "orders",
    "prices_funding",
    "liquidation",
    "events",
)


def _start_tick(state: SimState, params: Params, key: Array) -> tick_acc.TickAcc:
    """Zero accumulators, batched with the key under vmap (one tick's flows make them so
    anyway): the phases' loops, which carry them, then batch their bodies once (see
    `ops.tie`). `rules_changed` follows the rule schedule (the tick), shared by a batch:
    left untied."""
    acc = tie(tick_acc.zero(state.acct.bal.dtype, params.dims.n_accounts), key)
    return acc.replace(rules_changed=jnp.zeros((), jnp.int32))


def _background_orders(key: Array, state: SimState, params: Params):
    """Background traders decide on one snapshot (their external moves first). Returns
    (state, orders (K_bg,), arbitrage-row mask (K_bg,))."""
    equity = accounts.equity(state)
    state = popm.external_moves(state, params, equity)
    bg, arb = popm.background_orders(key, state, params, equity)
    return state, bg, arb


def _background_record(state, params, bg: Orders, arb: Array, results):
    """What the background rows (the first K_bg of `results`) did; the scripted programs'
    fills (the last rows of the background orders) count toward their schedules."""
    n_bg = bg.kind.shape[0]
    res = results.rows(slice(0, n_bg))
    is_trade = (bg.kind == KIND_MARKET) | (bg.kind == KIND_LIMIT)
    traded = jnp.where(is_trade, res.filled, 0.0)
    volume = jnp.zeros((N_MARKETS,), traded.dtype).at[jnp.clip(bg.market, 0, N_MARKETS - 1)]
    # Arbitrage trades offset on other venues (or on the other BASE book): not the market's.
    on_base = (bg.market == SPOT) | (bg.market == PERP)
    record = tick_acc.Background(
        volume=volume.add(traded),
        rejects=jnp.sum((res.reason != OK) & (bg.kind != KIND_NONE)).astype(jnp.int32),
        arb_volume=jnp.sum(jnp.where(arb, traded, 0.0)),
        prog_filled=traded[n_bg - params.dims.n_programs :],
        arb_flow=jnp.sum(
            jnp.where(arb & is_trade & on_base, bg.side * res.filled * res.avg_px, 0.0)
        ),
    )
    pop = state.pop.replace(prog_done=state.pop.prog_done + record.prog_filled)
    return state.replace(pop=pop), record


def _end_tick(state: SimState, params: Params, acc, background) -> SimState:
    """Advance the clock, keep the tick's net flow on the BASE books for the venues'
    impact next tick, and update the population's memory."""
    state = state.replace(t=state.t + 1, px=state.px.replace(flow=acc.flow - background.arb_flow))
    lp_eq = popm.lp_equity(state, params, accounts.asset_prices(state.px))
    return popm.update_memory(state, params, acc.liq_long + acc.liq_short, lp_eq)


# ============================================================== reset


def reset(key: Array, params: Params) -> SimState:
    """Initial state: accounts from params, books filled to the LP's target profile.

    Called outside a trace, it runs as one jitted program, compiled once per `Params`
    structure (the LP fill is a loop over markets, which run eagerly would be compiled
    again at every call); inside a trace it is traced inline.
    """
    if any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves((key, params))):
        return _reset(key, params)
    return _reset_jit(key, params)


def _reset(key: Array, params: Params) -> SimState:
    """The traced body of `reset`."""
    dims = params.dims
    dtype = params.dt.dtype
    p0 = params.exo.price0
    last = jnp.stack([p0[0], p0[0], p0[1], p0[2]]).astype(dtype)
    state = SimState(
        t=jnp.zeros((), jnp.int32),
        book=_initial_book(params, last),
        acct=_initial_accounts(params),
        px=_initial_prices(params, last),
        rules=params.rules,
        enforce=jnp.zeros((dims.n_accounts,), jnp.int32),
        pop=_initial_pop(params, last),
        bad_debt=jnp.zeros((), dtype),
    )
    state = index_mark.reprice(state, params)
    # Fill the books to the target profile at once (resilience 1 for the first fill).
    full = params.replace(
        markets=params.markets.replace(lp_resilience_per_s=jnp.full((N_MARKETS,), 1e9, dtype))
    )
    state = liquidity.requote(state, full)
    lp_eq = popm.lp_equity(state, params, accounts.asset_prices(state.px))
    return state.replace(pop=popm.init_pop_state(state, params, accounts.equity(state), lp_eq))


def _initial_accounts(params: Params) -> AccountState:
    """Balances, positions and modes from params; no transfers in flight."""
    ai, dtype = params.accounts, params.dt.dtype
    n, x = params.dims.n_accounts, params.dims.transfer_slots
    return AccountState(
        bal=ai.bal,
        debt=ai.debt,
        ext_bal=ai.ext_bal,
        pos=ai.pos,
        entry=ai.entry,
        iso_margin=ai.iso_margin,
        mode=ai.mode,
        lev=ai.lev,
        transit_amt=jnp.zeros((n, x), dtype),
        transit_asset=jnp.zeros((n, x), jnp.int32),
        transit_due=jnp.zeros((n, x), jnp.int32),
        transit_in=jnp.zeros((n, x), bool),
    )


def _initial_book(params: Params, last: Array) -> Book:
    """Empty books, each grid centred on its market's starting price; the LP owns slot 0."""
    dims, dtype = params.dims, params.dt.dtype
    g, q = dims.n_levels, dims.n_makers
    origin = (jnp.round(last / params.markets.tick_size) - g // 2).astype(jnp.int32)
    return Book(
        qty=jnp.zeros((N_MARKETS, 2, g, q), dtype),
        ahead=jnp.zeros((N_MARKETS, 2, g, q), dtype),
        origin=origin,
        owner=jnp.full((q,), -1, jnp.int32).at[LP_SLOT].set(dims.lp),
    )


def _initial_prices(params: Params, last: Array) -> PriceState:
    """Every venue at its starting price; funding at the interest-rate baseline."""
    dims, dtype = params.dims, params.dt.dtype
    p0 = params.exo.price0
    z = jnp.zeros((), dtype)
    return PriceState(
        ext=jnp.broadcast_to(p0[:, None], (3, dims.n_venues)).astype(dtype),
        ext_common=p0.astype(dtype),
        last=last,
        last_trade_t=jnp.zeros((N_MARKETS,), jnp.int32),
        index=p0.astype(dtype),
        mark=p0[0],
        basis_buf=jnp.zeros((dims.basis_window,), dtype),
        basis_count=jnp.zeros((), jnp.int32),
        prem_wsum=z,
        prem_w=z,
        prem_n=jnp.zeros((), jnp.int32),
        funding_rate=params.rules.funding_interest
        * params.rules.funding_interval_s
        / pr.SECONDS_PER_8H,
        last_funding_rate=z,
        next_funding_s=params.first_funding_s,
        vol=params.exo.vol_ref.astype(dtype),
        flow=z,
        impact=z,
    )


def _initial_pop(params: Params, last: Array) -> PopState:
    """The population's memory before its first tick (`popm.init_pop_state` fills it)."""
    n, dtype = params.dims.n_accounts, params.dt.dtype
    zp = jnp.zeros((), dtype)
    return PopState(
        ema_fast=zp,
        ema_slow=zp,
        peak_spot=zp,
        liq_ewma=zp,
        eq0=jnp.zeros((n,), dtype),
        sv=jnp.zeros((3,), dtype),
        int_last=last,
        int_vol=jnp.zeros((N_MARKETS,), dtype),
        lp_peak=zp,
        lp_eq=zp,
        prog_done=jnp.zeros((params.dims.n_programs,), dtype),
    )


_reset_jit = jax.jit(_reset)


# ============================================================== rollout and audit


# SimState leaves that one tick leaves equal across a batch of envs with shared params (the
# tick, the rules, the funding clock and the equity reference): `tie_to_key` leaves them be,
# except the premium averaging weights, which a per-env funding schedule (batched rules)
# makes per-env: those are tied to the rules.
_SHARED_LEAVES = frozenset({".t", ".px.basis_count", ".px.next_funding_s", ".pop.eq0"})
_RULE_LEAVES = frozenset({".px.prem_w", ".px.prem_n"})


def tie_to_key(state: SimState, key: Array) -> SimState:
    """`state` with its per-env leaves passed through a select on `key` (values unchanged,
    bit for bit; XLA drops a select of equal branches).

    `reset` does not draw from its key, so under `vmap` every leaf of its state starts
    unbatched, and a `lax.scan` over ticks finds which carry leaves are batched by
    batching the whole tick again until they stop changing: the tick's nested loops are
    batched once per pass, most of a rollout's trace time. Tied to the (batched) key, the
    leaves one tick makes batched are batched from the start, so the scan's first pass is
    its last; the compiled program is the same. Outside `vmap` this is the identity.
    """

    def one(path, x):
        name = jax.tree_util.keystr(path)
        if name in _SHARED_LEAVES or path[0].name == "rules":
            return x
        if name in _RULE_LEAVES:
            return tie(x, state.rules.funding_interval_s)
        return tie(x, key)

    return jax.tree_util.tree_map_with_path(one, state)


def rollout(key: Array, params: Params, n_ticks: int, policy=None, state: SimState | None = None):
    """Run `n_ticks` ticks with `lax.scan`. Returns (final state, stacked TickEvents).

    policy(key, state, params) -> Orders is called every tick; None submits no orders.
    """
    k_reset, k_run = jax.random.split(key)
    if state is None:
        state = reset(k_reset, params)
    state = tie_to_key(state, k_run)
    return run_ticks(state, jax.random.split(k_run, n_ticks), params, policy)


def run_ticks(state: SimState, keys: Array, params: Params, policy=None):
    """`rollout`'s ticks from `state`, one per key of `keys` (T, 2): (final state, stacked
    TickEvents). A rollout split at any tick and continued from there gives the same ticks."""

    def body(state, k):
        k_pol, k_step = jax.random.split(k)
        orders = no_orders(params) if policy is None else policy(k_pol, state, params)
        return step(k_step, state, orders, params)

    return jax.lax.scan(body, state, keys)


def audit(state: SimState, params: Params) -> dict[str, Array]:
    """Ledger totals. Each asset total is conserved by every operation of the engine.

    `usdt` counts free, isolated, external, in-transit and book-reserved USDT plus
    -sum(pos * entry): realized perp PnL is only zero-sum together with the open
    positions' entry values (sum(pos) = 0, so this term is the aggregate uPnL at any mark);
    less the bad debt written off so far (`SimState.bad_debt`, also reported as
    `bad_debt`): a write-off credits the insurance fund with USDT nobody paid in.
    """
    acct = state.acct
    dims = params.dims
    spot_ms = [m for m in range(N_MARKETS) if m != PERP]
    bid_usdt = sum(
        jnp.sum(state.book.qty[m, BID].sum(-1) * accounts.level_prices(state, params, m))
        for m in spot_ms
    )
    transit = (
        jnp.zeros((N_ASSETS,), acct.bal.dtype)
        .at[acct.transit_asset.ravel()]
        .add(acct.transit_amt.ravel())
    )
    asset_tot = acct.bal.sum(0) + acct.ext_bal.sum(0) + transit
    ask_res = {MARKET_ASSET[m]: state.book.qty[m, ASK].sum() for m in spot_ms}
    out = {
        "usdt": asset_tot[USDT]
        + acct.iso_margin.sum()
        + bid_usdt
        - jnp.sum(acct.pos * acct.entry)
        - state.bad_debt,
        "base": asset_tot[BASE] + ask_res[BASE],
        "stable": asset_tot[STABLE] + ask_res[STABLE],
        "lst": asset_tot[LST] + ask_res[LST],
        "insurance_fund": acct.bal[dims.insurance, USDT],
        "bad_debt": state.bad_debt,
        "fees": acct.bal[dims.fees, USDT],
        "oi_long": jnp.sum(jnp.maximum(acct.pos, 0.0)),
        "oi_short": jnp.sum(jnp.maximum(-acct.pos, 0.0)),
        "debt": acct.debt.sum(0),
    }
    return out
