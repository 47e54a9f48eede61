"""Functional core shared by the three roles, in the gymnax shape.

A role env is a small, hashable object that holds only static configuration (number of
learning accounts, optional features that change shapes). Everything that can vary between
episodes or between envs of one batch lives in `EnvParams` (the jaxsim `Params` plus the
role's settings), so params can be vmapped: one batch may mix scenarios and variants as
long as their static `Dims` agree (`stack_params` checks that and says which field differs).

API (per role, all pure and jittable; `params=None` means `env.default_params`):

    obs, state = env.reset(key, params)
    obs, state, reward, terminated, truncated, info = env.step(key, state, action, params)

`step` auto-resets: when the episode ends (terminated or truncated) the returned `obs` and
`state` are those of a fresh episode and `info["final_observation"]` holds the observation
of the last step of the finished one (it equals `obs` otherwise). `reset_env` / `step_env`
are the non-resetting versions.

Learning accounts are the first `n_agents` user accounts (account 0, named `agent` in every
scenario, for the single-agent roles). Background traders and scripted flows run inside
`jaxsim.step`; the learners' orders are the `Orders` argument (`dims.max_orders` rows, of
which each learner uses `orders_per_agent`; unused rows are empty).

Marked equity (the reward's measure, in USDT at index prices): wallet balances minus debts
+ perp uPnL at mark (this is `jaxsim.mechanisms.accounts.equity` for a cross account) + isolated margin
+ balances on external venues + transfers in flight + what resting spot orders reserve.
Moving assets between venues or resting a spot order therefore changes no equity.

Common observation entries (`COMMON_OBS`, float32, clipped to +/-`OBS_CLIP`; NaN/inf never
leave the env): see the table built from `COMMON_OBS` in `RoleEnv`'s docstring.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.flatten_util import ravel_pytree

import jaxsim
from envs import spaces
from jaxsim import book as bk
from jaxsim import margin as mg
from jaxsim.config import build_params, scenario_config
from jaxsim.config.fields import settings_table
from jaxsim.engine import tie_to_key
from jaxsim.mechanisms import funding
from jaxsim.mechanisms.accounts import asset_prices, margin_balances
from jaxsim.mechanisms.accounts import marked_equity as engine_marked_equity
from jaxsim.mechanisms.accounts import slot_of as own_slot
from jaxsim.mechanisms.margin_checks import needs_liquidation
from jaxsim.ops import tie
from jaxsim.types import (
    ASK,
    BASE,
    BID,
    KIND_NONE,
    LST,
    LST_SPOT,
    N_SYSTEM,
    PERP,
    SPOT,
    STABLE,
    STABLE_SPOT,
    USDT,
    Orders,
    Params,
    SimState,
    TickEvents,
)

Array = jax.Array

OBS_CLIP = 10.0  # every observation entry lies in [-OBS_CLIP, OBS_CLIP]
LEV_SCALE = 125.0  # leverages are divided by this (Binance's largest tier-1 max leverage)
TIME_SCALE_S = 3600.0  # times to events are in hours
DEPTH_BAND = 0.01  # book depth counted within +/- 1% of mid
PCT = 100.0  # relative gaps are reported in percent
TINY = 1e-12
DEFAULT_SCENARIO = "calm"
DEFAULT_MAX_STEPS = 1000  # used when the scenario has no `horizon_s`
SHARED_NAME = "env"  # sim.name under which the adapters run every scenario (see with_shared_name)
_NO_CHANGE = 2**30  # "no pending change" sentinel in ticks

# name -> meaning. The order here is the order in the observation vector.
COMMON_OBS: tuple[tuple[str, str], ...] = (
    # rules in force and announced changes
    ("max_lev_tier1", "tier-1 max leverage in force / 125"),
    ("mmr_tier1", "tier-1 maintenance margin rate in force, percent"),
    ("pos_limit", "log10(1 + position limit in force / initial equity) / 5"),
    ("haircut_stable", "collateral haircut of STABLE x 10"),
    ("haircut_lst", "collateral haircut of LST x 10"),
    ("withdrawal_delay", "delay of transfers to/from external venues, hours"),
    ("change_announced", "1 if a rule change is announced and not yet in force"),
    ("time_to_change", "hours until the next announced change takes effect (0 if none)"),
    ("next_max_lev_tier1", "tier-1 max leverage once announced changes apply / 125"),
    ("next_mmr_tier1", "tier-1 maintenance rate once announced changes apply, percent"),
    ("next_pos_limit", "position limit once announced changes apply (pos_limit scale)"),
    # funding and prices
    ("funding_rate", "predicted funding rate / funding cap in force"),
    ("last_funding_rate", "last settled funding rate / funding cap in force"),
    ("time_to_funding", "time to the next settlement / funding interval"),
    ("basis", "(perp mid - spot mid) / spot mid, percent"),
    ("mark_index_gap", "(mark - BASE index) / index, percent"),
    ("spot_index_gap", "(spot mid - BASE index) / index, percent"),
    ("ext_spot_gap", "(mean external BASE price - spot mid) / spot mid, percent"),
    ("mark_return", "log(mark / mark one step ago), percent"),
    ("mark_vs_start", "log(mark / mark at reset) x 10"),
    ("vol_ratio", "realized BASE vol / reference vol"),
    # books
    ("perp_spread", "perp best ask - best bid, in units of 10 bp of mid"),
    ("perp_imbalance", "(bid depth - ask depth) / total within 1% of the perp mid"),
    ("perp_depth", "log1p(perp depth within 1% x mid / initial equity) / 5"),
    ("spot_spread", "spot spread, units of 10 bp"),
    ("spot_imbalance", "spot depth imbalance within 1%"),
    ("spot_depth", "log1p(spot depth within 1% x mid / initial equity) / 5"),
    # collateral assets
    ("stable_index_dev", "log(STABLE index / its start price), percent"),
    ("stable_spot_gap", "log(STABLE/USDT last / STABLE index), percent"),
    ("lst_premium", "log(LST index / (lst_rate x BASE index)), percent"),
    ("lst_spot_gap", "log(LST/USDT last / LST index), percent"),
    # stress
    ("insurance_fund", "insurance fund / its start balance"),
    ("liq_flow", "log1p(notional liquidated last tick / initial equity)"),
    ("open_interest", "log1p(long OI x mark / initial equity) / 5"),
    # own account
    ("equity", "marked equity / initial equity - 1"),
    ("perp_position", "position x mark / initial equity / notional_scale"),
    ("perp_upnl", "unrealized perp PnL / initial equity"),
    ("usdt", "USDT balance minus USDT debt / initial equity"),
    ("spot_base", "BASE balance minus debt x index / initial equity"),
    ("stable", "STABLE balance minus debt x index / initial equity"),
    ("lst", "LST balance minus debt x index / initial equity"),
    ("external", "balances on external venues x index / initial equity"),
    ("in_transit", "transfers in flight x index / initial equity"),
    ("leverage", "chosen leverage / 125"),
    ("margin_ratio", "maintenance margin / margin balance (liquidation at 1), in [0, 2]"),
    ("liq_distance", "(margin balance - maintenance) / position notional, in [0, 1]; 1 flat"),
    ("perp_bid_queue", "perp notional queued ahead of own best bid / initial equity (0: none)"),
    ("perp_ask_queue", "perp notional queued ahead of own best ask / initial equity (0: none)"),
    ("episode_progress", "steps taken / max_steps_in_episode"),
)
COMMON_OBS_NAMES: tuple[str, ...] = tuple(n for n, _ in COMMON_OBS)


def obs_table(entries: tuple[tuple[str, str], ...], start: int = 0) -> str:
    """Docstring table of observation entries (index, name, meaning), one per line.

    The first line carries no indentation: it replaces a placeholder indented like the
    docstring's body (4 spaces), and the following lines get the same indentation.
    """
    rows = [f"{start + i:>3}  {n:<20} {d}" for i, (n, d) in enumerate(entries)]
    return "\n    ".join(rows)


# ============================================================== pytrees


@struct.dataclass
class EnvParams:
    """Everything an episode depends on that is not a shape. vmappable and sweepable.

    Attributes:
        sim: the exchange's `jaxsim.Params` (scenario, rules, schedule, population).
        max_steps_in_episode: () int32, the time limit (truncation).
        notional_scale: () leverage multiple that maps position notional to O(1)
            observations (`perp_position` = 1 at notional_scale x initial equity).
        min_equity_frac: () the episode terminates once marked equity <= this fraction
            of the initial equity (0 = when the agent is broke).
        role: the role's settings struct (`MarketMakerSettings`, ...).
    """

    sim: Params
    max_steps_in_episode: Array
    notional_scale: Array
    min_equity_frac: Array
    role: Any


@struct.dataclass
class EnvState:
    """State of one env: the exchange plus what the role needs between steps.

    N = number of learning accounts (1 for the single-agent roles).
    """

    sim: SimState
    time: Array  # () int32 steps since reset
    equity0: Array  # (N,) marked equity at reset, USDT
    equity: Array  # (N,) marked equity after the last step, USDT
    alive: Array  # (N,) bool, False once a learner was liquidated (multi-agent)
    mark0: Array  # () perp mark at reset
    prev_mark: Array  # () perp mark before the last step
    liq_notional: Array  # () notional liquidated in the last tick, USDT


def tie_env_state(state: EnvState, key: Array) -> EnvState:
    """`state` with the leaves one step makes batched tied to `key` (values unchanged; see
    `jaxsim.engine.tie_to_key`), for a `lax.scan` over steps that starts from a reset made
    under vmap."""
    return state.replace(
        sim=tie_to_key(state.sim, key),
        **{
            f: tie(getattr(state, f), key)
            for f in ("equity0", "equity", "alive", "mark0", "prev_mark", "liq_notional")
        },
    )


# ============================================================== params helpers


def _as_array(x, dtype) -> Array:
    return jnp.asarray(x, dtype)


def load_sim_params(
    scenario: str = DEFAULT_SCENARIO,
    variant: str | None = None,
    overrides: dict | None = None,
    dtype=None,
    min_orders: int = 1,
    n_agents: int = 1,
    clone_agent: bool = False,
    learner_fees: dict | None = None,
) -> tuple[Params, dict]:
    """Load a scenario for a role: `jaxsim.load_scenario` plus the rows the learners need.

    Args:
        scenario: scenario name (configs/<name>.yaml) or a YAML path.
        variant: a variant of the scenario (None = the base scenario).
        overrides: nested dict or dotted keys merged last (see `jaxsim.load_scenario`).
        dtype: float dtype of the params (None = float32, float64 under x64).
        min_orders: `dims.max_orders` is raised to this if the scenario has fewer rows.
        n_agents: number of learning accounts (accounts 0..n_agents-1).
        clone_agent: give accounts 1..n_agents-1 copies of user 0's starting account,
            inserted after it (the scenario's other users keep their names and behaviours
            and the account axis grows by n_agents - 1).
        learner_fees: the role's own fee rates ({maker, taker}, `accounts.users[].fees`)
            for the learner accounts whose scenario row sets none.

    Returns:
        (params, cfg): the validated `jaxsim.Params` and the merged config dict.
    """
    cfg = scenario_config(scenario, variant, overrides)
    if learner_fees:
        users = list(cfg["accounts"].get("users") or [])
        for i in range(min(n_agents, len(users))):
            users[i] = {"fees": dict(learner_fees), **users[i]}
        cfg["accounts"]["users"] = users
    if clone_agent and n_agents > 1:
        users = list(cfg["accounts"].get("users") or [])
        if not users:
            raise ValueError(f"scenario '{cfg['name']}' has no user account 0 to clone")
        first = dict(users[0])
        base = first.get("name", "agent")
        clones = [{**first, "name": f"{base}_{i}"} for i in range(1, n_agents)]
        cfg["accounts"]["users"] = [users[0], *clones, *users[1:]]
        cfg["dims"]["n_accounts"] = int(cfg["dims"]["n_accounts"]) + n_agents - 1
    if n_agents > 1:
        # Each learner may rest orders: one book slot more per learner beyond the first
        # (the scenario's own n_makers leaves one for account 0).
        cfg["dims"]["n_makers"] = int(cfg["dims"]["n_makers"]) + n_agents - 1
    if int(cfg["dims"]["max_orders"]) < min_orders:
        cfg["dims"]["max_orders"] = min_orders
    return build_params(cfg, dtype), cfg


def funding_inside_episode(sim: Params, cfg: dict, max_steps: int) -> Params:
    """`sim` with its first funding settlement inside an episode of `max_steps` ticks.

    The engine's first settlement is one funding interval after the start (8 h by
    default), later than many episodes end (crash horizons 3-12 h, training episodes of
    a few hours), so no episode would see funding paid. An episode is taken to start
    mid-cycle instead (as a real session starts at any time of day): when the scenario does
    not set `first_funding_h` and the first settlement would come after the episode's
    end, it comes at the middle of the episode; the rates, the interval and every later
    settlement (one interval apart) are the scenario's.
    """
    if float(cfg.get("first_funding_h") or 0.0) > 0.0:
        return sim
    dt = float(sim.dt)
    if float(sim.first_funding_s) <= max_steps * dt:
        return sim
    first = max(1, max_steps // 2) * dt
    return sim.replace(first_funding_s=jnp.asarray(first, sim.first_funding_s.dtype))


def initial_equity(sim: Params, accounts: np.ndarray) -> np.ndarray:
    """Marked equity of the given accounts at reset (start prices), USDT, in NumPy."""
    p0 = np.asarray(sim.exo.price0, np.float64)
    px = np.concatenate([[1.0], p0])
    acc = sim.accounts
    bal = np.asarray(acc.bal, np.float64) - np.asarray(acc.debt, np.float64)
    ext = np.asarray(acc.ext_bal, np.float64)
    wallet = (bal + ext) @ px
    iso = np.asarray(acc.iso_margin, np.float64)
    upnl = np.asarray(acc.pos, np.float64) * (p0[0] - np.asarray(acc.entry, np.float64))
    return (wallet + iso + upnl)[accounts]


def check_dims_match(a: Params, b: Params, what: str = "params") -> None:
    """Raise ValueError naming the first static dim that differs between two Params."""
    if a.dims != b.dims:
        diffs = [
            f"{f.name}: {getattr(a.dims, f.name)} vs {getattr(b.dims, f.name)}"
            for f in dataclasses.fields(a.dims)
            if getattr(a.dims, f.name) != getattr(b.dims, f.name)
        ]
        raise ValueError(
            f"{what}: scenarios '{a.name}' and '{b.name}' cannot share a batch, their static "
            f"dims differ ({'; '.join(diffs)}); give them equal `dims` via overrides"
        )


def stack_params(params_list: list[EnvParams]) -> EnvParams:
    """Stack per-env params along a new leading axis (for a batch with per-env params).

    Scenarios and variants may differ; their static `jaxsim.Dims` must agree, and so must
    the role (settings type) and dtypes. The stacked `sim.name` joins the scenario names.

    Raises:
        ValueError: naming the field that differs.
    """
    if not params_list:
        raise ValueError("stack_params needs at least one EnvParams")
    first = params_list[0]
    names = []
    for i, p in enumerate(params_list):
        if not isinstance(p, EnvParams):
            raise ValueError(f"params[{i}] is {type(p).__name__}, expected EnvParams")
        if type(p.role) is not type(first.role):
            raise ValueError(
                f"params[{i}] has {type(p.role).__name__} settings, params[0] has "
                f"{type(first.role).__name__}: one batch holds one role"
            )
        check_dims_match(first.sim, p.sim, f"params[{i}]")
        if p.sim.dt.dtype != first.sim.dt.dtype:
            raise ValueError(
                f"params[{i}] is {p.sim.dt.dtype}, params[0] is {first.sim.dt.dtype}: "
                "load every scenario of a batch with the same dtype"
            )
        if p.sim.name not in names:
            names.append(p.sim.name)
    label = "+".join(names)
    same = [p.replace(sim=p.sim.replace(name=label)) for p in params_list]
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *same)


def with_shared_name(params: EnvParams) -> EnvParams:
    """`params` with `sim.name` set to SHARED_NAME.

    `jaxsim.Params.name` is static (part of the pytree structure), so params that differ
    only in their scenario label would each compile anew; the adapters run everything
    under one name and keep the label themselves (`env.scenario`).
    """
    return params.replace(sim=params.sim.replace(name=SHARED_NAME))


def batch_size_of(params: EnvParams) -> int | None:
    """Leading batch size of stacked params, or None for unbatched params."""
    shape = jnp.shape(params.max_steps_in_episode)
    return int(shape[0]) if len(shape) == 1 else None


# ============================================================== market views


def level_prices(sim: SimState, sp: Params, m: int) -> Array:
    """(G,) prices of market m's grid levels."""
    return bk.level_prices(sim.book.origin[m], sp.markets.tick_size[m], sp.dims.n_levels)


def book_view(sim: SimState, sp: Params, m: int, exclude: Array | None = None):
    """Best bid/ask, mid, relative spread and depth within 1% of mid of market m.

    Args:
        exclude: an account whose own resting orders are left out (its quotes do not
            move the reference it quotes around), or None.

    Returns:
        (bid, ask, mid, spread, depth (2,) bid/ask base units). Empty sides give the last
        price as mid and zero spread.
    """
    px = level_prices(sim, sp, m)
    q = sim.book.qty[m]
    if exclude is not None:
        q = q * (sim.book.owner != exclude).astype(q.dtype)
    bid, ask = bk.best_prices(q, px)
    ok = (bid > 0) & jnp.isfinite(ask)
    last = sim.px.last[m]
    mid = jnp.where(ok, 0.5 * (bid + jnp.where(ok, ask, 0.0)), last)
    spread = jnp.where(ok, (jnp.where(ok, ask, 0.0) - bid) / jnp.maximum(mid, TINY), 0.0)
    depth = bk.depth_within(q, px, mid, DEPTH_BAND)
    bid = jnp.where(bid > 0, bid, mid)
    ask = jnp.where(jnp.isfinite(ask), ask, mid)
    return bid, ask, mid, spread, depth


def marked_equity(sim: SimState, sp: Params, accounts: Array) -> Array:
    """(N,) marked equity of `accounts` in USDT at index prices (see module docstring)."""
    return engine_marked_equity(sim, sp)[accounts]


def pending_rules(sim: SimState, sp: Params):
    """Announced rule changes not yet in force.

    Returns:
        (announced, time_to_change_s, next_rules): whether any is pending, seconds to the
        first one (0 if none), and the rules once all pending ones apply, in order of
        effective time.
    """
    sch = sp.schedule
    t = sim.t
    pending = sch.active & (sch.announce_tick <= t) & (sch.effective_tick >= t)
    ticks = jnp.min(jnp.where(pending, sch.effective_tick - t, _NO_CHANGE))
    announced = pending.any()
    time_s = jnp.where(announced, ticks * sp.dt, 0.0)
    flat, unravel = ravel_pytree(sim.rules)
    order = jnp.argsort(jnp.where(pending, sch.effective_tick, _NO_CHANGE), stable=True)

    def apply(f, i):
        on = pending[i]
        j = sch.flat_index[i]
        return f.at[j].set(jnp.where(on, sch.value[i].astype(f.dtype), f[j])), None

    flat, _ = jax.lax.scan(apply, flat, order)
    return announced, time_s, unravel(flat)


def _log_pos_limit(limit: Array, equity0: Array) -> Array:
    return jnp.log10(1.0 + jnp.maximum(limit, 0.0) / equity0) / 5.0


def _gap_pct(x: Array, ref: Array) -> Array:
    return (x - ref) / jnp.maximum(ref, TINY) * PCT


def _log_pct(x: Array, ref: Array) -> Array:
    return jnp.log(jnp.maximum(x, TINY) / jnp.maximum(ref, TINY)) * PCT


def market_features(state: EnvState, params: EnvParams, equity_ref: Array) -> dict[str, Array]:
    """Observation entries shared by every learner (rules, funding, prices, books)."""
    sim, sp = state.sim, params.sim
    r = sim.rules
    p = sim.px
    announced, time_s, nxt = pending_rules(sim, sp)
    _, _, perp_mid, perp_spread, perp_depth = book_view(sim, sp, PERP)
    _, _, spot_mid, spot_spread, spot_depth = book_view(sim, sp, SPOT)
    cap = jnp.maximum(funding.cap_in_force(r), TINY)
    index = p.index
    mark = p.mark
    fund0 = sp.accounts.bal[sp.dims.insurance, USDT]
    fund = sim.acct.bal[sp.dims.insurance, USDT]
    oi_long = jnp.sum(jnp.maximum(sim.acct.pos, 0.0))

    def imbalance(d):
        return (d[BID] - d[ASK]) / jnp.maximum(d[BID] + d[ASK], TINY)

    def depth(d, mid):
        return jnp.log1p((d[BID] + d[ASK]) * mid / equity_ref) / 5.0

    return {
        "max_lev_tier1": r.tier_max_lev[0] / LEV_SCALE,
        "mmr_tier1": r.tier_mmr[0] * PCT,
        # The limit in force now (with `rules.depth_limit`, scaled to the perp book).
        "pos_limit": _log_pos_limit(
            mg.position_limit_in_force(r, sim.book.qty[PERP], level_prices(sim, sp, PERP)),
            equity_ref,
        ),
        "haircut_stable": r.haircut[STABLE] * 10.0,
        "haircut_lst": r.haircut[LST] * 10.0,
        "withdrawal_delay": r.withdrawal_delay_s / TIME_SCALE_S,
        "change_announced": announced.astype(p.mark.dtype),
        "time_to_change": time_s / TIME_SCALE_S,
        "next_max_lev_tier1": nxt.tier_max_lev[0] / LEV_SCALE,
        "next_mmr_tier1": nxt.tier_mmr[0] * PCT,
        "next_pos_limit": _log_pos_limit(nxt.position_limit, equity_ref),
        "funding_rate": p.funding_rate / cap,
        "last_funding_rate": p.last_funding_rate / cap,
        "time_to_funding": jnp.maximum(p.next_funding_s - sim.t * sp.dt, 0.0)
        / jnp.maximum(r.funding_interval_s, TINY),
        "basis": _gap_pct(perp_mid, spot_mid),
        "mark_index_gap": _gap_pct(mark, index[0]),
        "spot_index_gap": _gap_pct(spot_mid, index[0]),
        "ext_spot_gap": _gap_pct(p.ext[0].mean(), spot_mid),
        "mark_return": _log_pct(mark, state.prev_mark),
        "mark_vs_start": _log_pct(mark, state.mark0) / 10.0,
        "vol_ratio": p.vol[0] / jnp.maximum(sp.exo.vol_ref[0], TINY),
        "perp_spread": perp_spread * 1e3,
        "perp_imbalance": imbalance(perp_depth),
        "perp_depth": depth(perp_depth, perp_mid),
        "spot_spread": spot_spread * 1e3,
        "spot_imbalance": imbalance(spot_depth),
        "spot_depth": depth(spot_depth, spot_mid),
        "stable_index_dev": _log_pct(index[1], sp.exo.price0[1]),
        "stable_spot_gap": _log_pct(p.last[STABLE_SPOT], index[1]),
        "lst_premium": _log_pct(index[2], sp.exo.lst_rate * index[0]),
        "lst_spot_gap": _log_pct(p.last[LST_SPOT], index[2]),
        "insurance_fund": fund / jnp.maximum(fund0, 1.0),
        "liq_flow": jnp.log1p(state.liq_notional / equity_ref),
        "open_interest": jnp.log1p(oi_long * mark / equity_ref) / 5.0,
    }


def own_features(state: EnvState, params: EnvParams, accounts: Array) -> dict[str, Array]:
    """Observation entries about each learner's own account, each (N,)."""
    sim = state.sim
    a = sim.acct
    px = asset_prices(sim.px)
    mark = sim.px.mark
    eq0 = state.equity0
    pos = a.pos[accounts]
    notional = jnp.abs(pos) * mark
    mb = margin_balances(sim)[accounts]
    mm = mg.maint_margin(notional, sim.rules)
    net = (a.bal - a.debt)[accounts] * px
    exposure = (pos != 0) | (a.debt[accounts].sum(-1) > 0) | (a.bal[accounts, USDT] < 0)
    ratio = jnp.where(mb > 0, mm / jnp.maximum(mb, TINY), 2.0)
    ratio = jnp.where(exposure, jnp.clip(ratio, 0.0, 2.0), 0.0)
    dist = jnp.where(pos != 0, (mb - mm) / jnp.maximum(notional, TINY), 1.0)
    transit = jnp.sum(jnp.where(a.transit_amt > 0, a.transit_amt, 0.0) * px[a.transit_asset], -1)[
        accounts
    ]
    steps = jnp.maximum(params.max_steps_in_episode, 1).astype(mark.dtype)
    queue = jax.vmap(lambda acc: queue_ahead(sim, params.sim, acc, PERP))(accounts)  # (N, 2)
    return {
        "equity": state.equity / eq0 - 1.0,
        "perp_position": pos * mark / eq0 / params.notional_scale,
        "perp_upnl": pos * (mark - a.entry[accounts]) / eq0,
        "usdt": net[:, USDT] / eq0,
        "spot_base": net[:, BASE] / eq0,
        "stable": net[:, STABLE] / eq0,
        "lst": net[:, LST] / eq0,
        "external": jnp.sum(a.ext_bal[accounts] * px, -1) / eq0,
        "in_transit": transit / eq0,
        "leverage": a.lev[accounts] / LEV_SCALE,
        "margin_ratio": ratio,
        "liq_distance": jnp.clip(dist, 0.0, 1.0),
        "episode_progress": jnp.broadcast_to(state.time / steps, pos.shape),
        "perp_bid_queue": queue[:, BID] / eq0,
        "perp_ask_queue": queue[:, ASK] / eq0,
    }


def queue_ahead(sim: SimState, sp: Params, account: Array, m: int) -> Array:
    """(2,) notional queued ahead of `account`'s best resting bid and best ask on market m
    (the size a taker must fill before the account's order trades; 0 without one)."""
    px = level_prices(sim, sp, m)
    has, slot = own_slot(sim.book, account)
    own = jnp.where(has, sim.book.qty[m, :, :, slot], 0.0)  # (2, G)
    ahead = jnp.where(has, sim.book.ahead[m, :, :, slot], 0.0)
    best_bid = jnp.max(jnp.where(own[BID] > 0, px, -jnp.inf))
    best_ask = jnp.min(jnp.where(own[ASK] > 0, px, jnp.inf))
    at = jnp.stack([(own[BID] > 0) & (px == best_bid), (own[ASK] > 0) & (px == best_ask)])
    return jnp.sum(jnp.where(at, ahead * px, 0.0), -1)


def finite_clip(x: Array) -> Array:
    """NaN -> 0, +/-inf -> +/-OBS_CLIP, then clip; float32."""
    x = jnp.nan_to_num(x.astype(jnp.float32), nan=0.0, posinf=OBS_CLIP, neginf=-OBS_CLIP)
    return jnp.clip(x, -OBS_CLIP, OBS_CLIP)


def empty_orders(k: int, dtype) -> Orders:
    """k empty order rows."""
    zi = jnp.zeros((k,), jnp.int32)
    zf = jnp.zeros((k,), dtype)
    return Orders(account=zi, market=zi, side=zi, kind=zi, qty=zf, price=zf)


def order_rows(account, market, side, kind, qty, price, dtype) -> Orders:
    """Orders from per-row sequences (each of length k), cast to the engine's dtypes.

    Rows whose qty is not positive and whose kind needs a quantity become empty rows.
    """
    kind = jnp.stack([jnp.asarray(k, jnp.int32) for k in kind])
    qty = jnp.stack([jnp.asarray(q, dtype) for q in qty])
    return Orders(
        account=jnp.broadcast_to(jnp.asarray(account, jnp.int32), kind.shape),
        market=jnp.stack([jnp.asarray(m, jnp.int32) for m in market]),
        side=jnp.stack([jnp.asarray(s, jnp.int32) for s in side]),
        kind=kind,
        qty=qty,
        price=jnp.stack([jnp.asarray(p, dtype) for p in price]),
    )


def was_liquidated(
    prev: SimState, sim: SimState, events: TickEvents, sp: Params, accounts: Array
) -> Array:
    """(N,) whether the engine liquidated each learner during the tick just run.

    Uses a per-account flag from the engine when `TickEvents` carries one (`liq_mask`,
    (A,)). Until then: the account is still under maintenance after the tick, or the
    tick liquidated someone and the account's pre-tick holdings are under maintenance
    at the post-tick prices and rules (the engine liquidates exactly such accounts).
    """
    flag = getattr(events, "liq_mask", None)
    if flag is not None:
        return jnp.asarray(flag)[accounts].astype(bool)
    now = needs_liquidation(sim, sp)[accounts]
    hypo = prev.replace(px=sim.px, rules=sim.rules)
    before = needs_liquidation(hypo, sp)[accounts] & (events.liq_accounts > 0)
    return now | before


# ============================================================== the role base class


class RoleEnv:
    """Base of the role envs: a gymnax-shaped functional env over `jaxsim.step`.

    Subclasses set `role`, `action_names`, `role_obs` (extra observation entries),
    `orders_per_agent`, a settings struct class and implement `decode_one`,
    `role_features` and (optionally) `penalty`.

    Observation: float32 (D,) for one learner, (N, D) for N learners, D = len(obs_names);
    `obs_names` = the common entries below followed by the role's own entries. Every entry
    is finite and clipped to [-OBS_CLIP, OBS_CLIP] = [-10, 10]. Common entries:

    {common}

    Action: float32 (A,) in [-1, 1] ((N, A) for N learners); NaN maps to 0, +/-inf and
    out-of-range values are clipped to [-1, 1] inside the core (the adapters reject
    non-finite actions with ValueError before that). A wrong shape or a non-float dtype
    raises ValueError when the step is traced.

    Reward: () ((N,) for N learners) = change of marked equity over the step / equity at
    reset, minus the role's penalty (market maker: inventory penalty). Zero for learners
    already out (multi-agent).

    Termination: the engine liquidated the learner this tick (see `was_liquidated`), or
    its marked equity fell to `min_equity_frac` x its equity at reset or below.
    Truncation: `max_steps_in_episode` steps taken and not terminated.
    """

    role: ClassVar[str] = "role"
    action_names: ClassVar[tuple[str, ...]] = ()
    role_obs: ClassVar[tuple[tuple[str, str], ...]] = ()
    orders_per_agent: ClassVar[int] = 0
    settings_cls: ClassVar[type] = object
    # The learners' own fee rates (`accounts.users[].fees`), applied where the scenario's
    # row for the learner sets none; {} = the venue's regular schedule (`rules.fees`).
    learner_fees: ClassVar[dict] = {}

    def __init__(self, n_agents: int = 1):
        if int(n_agents) < 1:
            raise ValueError(f"n_agents must be >= 1, got {n_agents}")
        self.n_agents = int(n_agents)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__doc__:
            n = len(COMMON_OBS)
            cls.__doc__ = cls.__doc__.replace("{common}", obs_table(COMMON_OBS)).replace(
                "{role_obs}", obs_table(cls.role_obs, n)
            )

    # ------------------------------------------------------------ static config

    def _static(self) -> tuple:
        return (type(self), self.n_agents)

    def __hash__(self) -> int:
        return hash(self._static())

    def __eq__(self, other) -> bool:
        return isinstance(other, RoleEnv) and self._static() == other._static()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n_agents={self.n_agents})"

    @property
    def name(self) -> str:
        return f"cascade-{self.role}"

    @property
    def obs_names(self) -> tuple[str, ...]:
        """Name of each observation entry, in order (stable across versions)."""
        return COMMON_OBS_NAMES + tuple(n for n, _ in self.role_obs)

    @property
    def num_actions(self) -> int:
        return len(self.action_names)

    @property
    def accounts(self) -> np.ndarray:
        """Account index of each learner."""
        return np.arange(self.n_agents)

    # ------------------------------------------------------------ params

    @functools.cached_property
    def default_params(self) -> EnvParams:
        """Params of the `calm` scenario with the role's default settings.

        Built once per env object and cached. The build runs eagerly (concrete arrays)
        even when first reached inside a `jit` / `vmap` trace, as gymnax's `params=None`
        does from PureJaxRL's wrappers: the config loader needs concrete values, and a
        cached tracer would leak out of its trace.
        """
        with jax.ensure_compile_time_eval():
            return self.make_params()

    def default_settings(self, dtype=jnp.float32):
        """The role's settings struct with defaults (see the settings class)."""
        return self.settings_cls.create(dtype)

    def make_params(
        self,
        scenario: str = DEFAULT_SCENARIO,
        variant: str | None = None,
        overrides: dict | None = None,
        *,
        dtype=None,
        max_steps_in_episode: int | None = None,
        notional_scale: float = 10.0,
        min_equity_frac: float = 0.0,
        **settings: float,
    ) -> EnvParams:
        """Params for a scenario (any name `jaxsim.load_scenario` accepts).

        Args:
            scenario, variant, overrides, dtype: as in `jaxsim.load_scenario`.
            max_steps_in_episode: time limit; None = the scenario's `horizon_s` / dt if it
                has one, else 1000.
            notional_scale: see `EnvParams`.
            min_equity_frac: see `EnvParams`.
            **settings: role settings by name (see the role's settings class).

        Raises:
            jaxsim.ConfigError: a bad scenario value. ValueError: a bad role setting.
        """
        sim, cfg = load_sim_params(
            scenario,
            variant,
            overrides,
            dtype,
            min_orders=self.orders_per_agent * self.n_agents,
            n_agents=self.n_agents,
            clone_agent=self.n_agents > 1,
            learner_fees=self.learner_fees,
        )
        if max_steps_in_episode is None:
            horizon = cfg.get("horizon_s")
            dt = float(cfg["dt_s"])
            max_steps_in_episode = (
                max(1, round(float(horizon) / dt)) if horizon else DEFAULT_MAX_STEPS
            )
        sim = funding_inside_episode(sim, cfg, int(max_steps_in_episode))
        return self.params_from_sim(
            sim,
            max_steps_in_episode=max_steps_in_episode,
            notional_scale=notional_scale,
            min_equity_frac=min_equity_frac,
            **settings,
        )

    def params_from_sim(
        self,
        sim: Params,
        *,
        max_steps_in_episode: int = DEFAULT_MAX_STEPS,
        notional_scale: float = 10.0,
        min_equity_frac: float = 0.0,
        **settings: float,
    ) -> EnvParams:
        """Wrap already loaded `jaxsim.Params` with the role's settings (validated)."""
        if int(max_steps_in_episode) < 1:
            raise ValueError(f"max_steps_in_episode must be >= 1, got {max_steps_in_episode}")
        if not float(notional_scale) > 0:
            raise ValueError(f"notional_scale must be > 0, got {notional_scale}")
        if not 0.0 <= float(min_equity_frac) < 1.0:
            raise ValueError(f"min_equity_frac must be in [0, 1), got {min_equity_frac}")
        dtype = sim.dt.dtype
        role = self.settings_cls.create(dtype, **settings)
        params = EnvParams(
            sim=sim,
            max_steps_in_episode=jnp.asarray(int(max_steps_in_episode), jnp.int32),
            notional_scale=_as_array(notional_scale, dtype),
            min_equity_frac=_as_array(min_equity_frac, dtype),
            role=role,
        )
        self.check_params(params)
        return params

    def check_params(self, params: EnvParams) -> None:
        """Static checks: order rows, learner accounts, starting equity.

        Raises:
            ValueError: naming the field and what is needed.
        """
        if not isinstance(params, EnvParams):
            raise ValueError(f"params must be EnvParams, got {type(params).__name__}")
        if not isinstance(params.role, self.settings_cls):
            raise ValueError(
                f"{type(self).__name__} needs {self.settings_cls.__name__} settings, "
                f"got {type(params.role).__name__}"
            )
        dims = params.sim.dims
        need = self.orders_per_agent * self.n_agents
        if dims.max_orders < need:
            raise ValueError(
                f"dims.max_orders = {dims.max_orders}, but {self.n_agents} {self.role} "
                f"learner(s) need {need} order rows; load with overrides "
                f"{{'dims.max_orders': {need}}} (make_params does this)"
            )
        n_user = dims.n_accounts - N_SYSTEM
        if self.n_agents > n_user:
            raise ValueError(
                f"{self.n_agents} learners need accounts 0..{self.n_agents - 1}, scenario "
                f"'{params.sim.name}' has {n_user} user accounts"
            )
        if batch_size_of(params) is None:
            eq = initial_equity(params.sim, self.accounts)
            if not np.all(eq > 0):
                raise ValueError(
                    f"learner accounts {self.accounts.tolist()} of scenario "
                    f"'{params.sim.name}' start with marked equity {eq.tolist()}; every "
                    "learner needs a positive starting equity"
                )

    # ------------------------------------------------------------ spaces

    def observation_space(self, params: EnvParams | None = None) -> spaces.Box:
        """Box(-10, 10, (D,)) float32 ((N, D) for N learners)."""
        shape = (len(self.obs_names),)
        if self.n_agents > 1:
            shape = (self.n_agents, *shape)
        return spaces.Box(-OBS_CLIP, OBS_CLIP, shape, jnp.float32)

    def action_space(self, params: EnvParams | None = None) -> spaces.Box:
        """Box(-1, 1, (A,)) float32 ((N, A) for N learners)."""
        shape = (self.num_actions,)
        if self.n_agents > 1:
            shape = (self.n_agents, *shape)
        return spaces.Box(-1.0, 1.0, shape, jnp.float32)

    # ------------------------------------------------------------ role hooks

    def decode_one(
        self, action: Array, state: EnvState, params: EnvParams, account: Array
    ) -> Orders:
        """Orders (orders_per_agent rows) for one learner's clipped action (A,)."""
        raise NotImplementedError

    def role_features(
        self, state: EnvState, params: EnvParams, account: Array, equity0: Array
    ) -> dict[str, Array]:
        """The role's extra observation entries for one learner, name -> ()."""
        return {}

    def penalty(self, state: EnvState, params: EnvParams, account: Array, equity0: Array) -> Array:
        """() penalty subtracted from one learner's reward after the step."""
        return jnp.zeros((), state.sim.px.mark.dtype)

    # ------------------------------------------------------------ core

    def _sanitize(self, action: Array) -> Array:
        action = jnp.asarray(action)
        want = self.action_space().shape
        if action.shape != want:
            raise ValueError(
                f"{self.role} action must have shape {want}, got {tuple(action.shape)}"
            )
        if not jnp.issubdtype(action.dtype, jnp.floating):
            raise ValueError(f"{self.role} action must be a float array, got dtype {action.dtype}")
        action = jnp.nan_to_num(action.astype(jnp.float32), nan=0.0, posinf=1.0, neginf=-1.0)
        action = jnp.clip(action, -1.0, 1.0)
        return action.reshape(self.n_agents, self.num_actions)

    def orders(self, action: Array, state: EnvState, params: EnvParams) -> Orders:
        """All learners' orders for this tick, padded to dims.max_orders rows."""
        act = self._sanitize(action)
        acc = jnp.asarray(self.accounts, jnp.int32)
        rows = jax.vmap(self.decode_one, in_axes=(0, None, None, 0))(act, state, params, acc)
        # A learner that is out submits nothing.
        rows = rows.replace(kind=jnp.where(state.alive[:, None], rows.kind, KIND_NONE))
        rows = jax.tree_util.tree_map(lambda x: x.reshape(-1), rows)
        k = params.sim.dims.max_orders
        pad = empty_orders(k - rows.kind.shape[0], params.sim.dt.dtype)
        return jax.tree_util.tree_map(lambda x, y: jnp.concatenate([x, y]), rows, pad)

    def get_obs(self, state: EnvState, params: EnvParams) -> Array:
        """Observation(s) of the learner(s): (D,) or (N, D) float32."""
        acc = jnp.asarray(self.accounts, jnp.int32)
        eq_ref = state.equity0[0]
        market = market_features(state, params, eq_ref)
        own = own_features(state, params, acc)
        role = jax.vmap(self.role_features, in_axes=(None, None, 0, 0))(
            state, params, acc, state.equity0
        )
        n = self.n_agents
        cols = []
        for name in self.obs_names:
            if name in own:
                cols.append(own[name])
            elif name in role:
                cols.append(role[name])
            else:
                cols.append(jnp.broadcast_to(market[name], (n,)))
        obs = finite_clip(jnp.stack(cols, axis=-1))
        return obs[0] if n == 1 else obs

    def _squeeze(self, x: Array) -> Array:
        return x[0] if self.n_agents == 1 else x

    def reset_env(self, key: Array, params: EnvParams) -> tuple[Array, EnvState]:
        """A fresh episode (no auto-reset logic). Returns (obs, state)."""
        sim = jaxsim.reset(key, params.sim)
        acc = jnp.asarray(self.accounts, jnp.int32)
        eq = marked_equity(sim, params.sim, acc)
        eq0 = jnp.maximum(eq, 1.0)
        dtype = sim.px.mark.dtype
        state = EnvState(
            sim=sim,
            time=jnp.zeros((), jnp.int32),
            equity0=eq0,
            equity=eq,
            alive=jnp.ones((self.n_agents,), bool),
            mark0=sim.px.mark,
            prev_mark=sim.px.mark,
            liq_notional=jnp.zeros((), dtype),
        )
        return self.get_obs(state, params), state

    def step_env(
        self, key: Array, state: EnvState, action: Array, params: EnvParams
    ) -> tuple[Array, EnvState, Array, Array, dict[str, Array]]:
        """One tick without auto-reset. Returns (obs, state, reward, terminated, info)."""
        orders = self.orders(action, state, params)
        sim, events = jaxsim.step(key, state.sim, orders, params.sim)
        acc = jnp.asarray(self.accounts, jnp.int32)
        eq = marked_equity(sim, params.sim, acc)
        liq = was_liquidated(state.sim, sim, events, params.sim, acc)
        broke = eq <= params.min_equity_frac * state.equity0
        terminated = state.alive & (liq | broke)
        new = state.replace(
            sim=sim,
            time=state.time + 1,
            equity=eq,
            alive=state.alive & ~terminated,
            prev_mark=state.sim.px.mark,
            liq_notional=events.liq_notional_long + events.liq_notional_short,
        )
        pnl = (eq - state.equity) / state.equity0
        pen = jax.vmap(self.penalty, in_axes=(None, None, 0, 0))(new, params, acc, state.equity0)
        reward = jnp.where(state.alive, pnl - pen, 0.0).astype(jnp.float32)
        reward = jnp.nan_to_num(reward, nan=0.0, posinf=OBS_CLIP, neginf=-OBS_CLIP)
        obs = self.get_obs(new, params)
        _, _, spot_mid, _, _ = book_view(sim, params.sim, SPOT)
        _, _, perp_mid, _, _ = book_view(sim, params.sim, PERP)
        info = {
            "equity": self._squeeze(eq),
            "pnl": self._squeeze(pnl),
            "penalty": self._squeeze(pen),
            "liquidated": self._squeeze(liq & state.alive),
            "position": self._squeeze(sim.acct.pos[acc]),
            "mark_price": sim.px.mark,
            "index_price": sim.px.index[0],
            "spot_price": spot_mid,
            "basis": events.basis,
            "funding_rate": sim.px.funding_rate,
            "liq_notional": new.liq_notional,
            "fees": self._squeeze(events.fees_paid[acc]),
            "order_reason": events.order_reason,
            "time": new.time,
        }
        return obs, new, self._squeeze(reward), self._squeeze(terminated), info

    def reset(self, key: Array, params: EnvParams | None = None) -> tuple[Array, EnvState]:
        """gymnax `reset`: (obs, state)."""
        params = self.default_params if params is None else params
        return self.reset_env(key, params)

    def step(
        self, key: Array, state: EnvState, action: Array, params: EnvParams | None = None
    ) -> tuple[Array, EnvState, Array, Array, Array, dict[str, Array]]:
        """gymnax `step` with auto-reset.

        Returns:
            (obs, state, reward, terminated, truncated, info). On the step that ends an
            episode, obs/state already belong to the next episode and
            `info["final_observation"]` is the last observation of the finished one.
        """
        params = self.default_params if params is None else params
        k_step, k_reset = jax.random.split(key)
        obs_st, st, reward, terminated, info = self.step_env(k_step, state, action, params)
        limit = st.time >= params.max_steps_in_episode
        truncated = limit & ~terminated
        done = jnp.all(~st.alive | limit)
        # The fresh episode is built only on the step that ends one (under vmap the cond
        # becomes a select of both branches, as a select would be).
        obs, state = jax.lax.cond(
            done, lambda: self.reset_env(k_reset, params), lambda: (obs_st, st)
        )
        info["final_observation"] = obs_st
        info["done"] = done
        return obs, state, reward, terminated, truncated, info

    def step_batch(
        self,
        keys: Array,
        state: EnvState,
        action: Array,
        params: EnvParams,
        per_env_params: bool = True,
    ) -> tuple[Array, EnvState, Array, Array, Array, dict[str, Array]]:
        """`jax.vmap(self.step)` over a batch (leading axis), with the same results (the
        observation up to float32 rounding: XLA fuses it differently), but the fresh
        episodes are built only on steps where some env of the batch finished.

        Under vmap the auto-reset of `step` is computed for every env on every step and
        selected away (a reset, a second observation and a select over the whole state);
        here it sits behind one batch-level `lax.cond`. Measured on the 2-core CPU at
        batch 128 (market maker, calm): 5-10% of a step, within the run-to-run noise of
        that machine. `params` is batched when `per_env_params`, else shared.
        """
        ax = 0 if per_env_params else None
        split = jax.vmap(jax.random.split)(keys)
        k_step, k_reset = split[:, 0], split[:, 1]
        obs_st, st, reward, terminated, info = jax.vmap(self.step_env, in_axes=(0, 0, 0, ax))(
            k_step, state, action, params
        )

        def flags(s, max_steps, term):
            limit = s.time >= max_steps
            return limit & ~term, jnp.all(~s.alive | limit)

        truncated, done = jax.vmap(flags, in_axes=(0, ax, 0))(
            st, params.max_steps_in_episode, terminated
        )

        reset_batch = jax.vmap(self.reset_env, in_axes=(0, ax))
        obs, new_state = auto_reset_batch(reset_batch, k_reset, params, done, obs_st, st)
        info["final_observation"] = obs_st
        info["done"] = done
        return obs, new_state, reward, terminated, truncated, info


RoleEnv.__doc__ = (RoleEnv.__doc__ or "").replace("{common}", obs_table(COMMON_OBS))


# ============================================================== compiled functions


@functools.cache
def jitted(env: RoleEnv):
    """(reset, step) of `env`, jitted once per env configuration (shared by adapters)."""
    return jax.jit(env.reset), jax.jit(env.step)


@functools.cache
def jitted_batch(env: RoleEnv, per_env_params: bool):
    """(reset, step) vmapped over a batch and jitted, params shared or per env."""
    ax = 0 if per_env_params else None
    reset = jax.jit(jax.vmap(env.reset, in_axes=(0, ax)))
    step = jax.jit(functools.partial(env.step_batch, per_env_params=per_env_params))
    return reset, step


def auto_reset_batch(reset_batch, k_reset: Array, params, done: Array, obs: Array, state):
    """(obs, state) of a batch after its auto-reset: the envs that are `done` (B,) start
    fresh episodes from `reset_batch(k_reset, params)`, the others keep `obs` / `state`.
    The fresh episodes sit behind one batch-level `lax.cond`, so they are built only on
    steps where some env of the batch finished."""

    def with_reset(_):
        obs_re, st_re = reset_batch(k_reset, params)

        def pick(r, x):
            return jnp.where(jnp.reshape(done, done.shape + (1,) * (x.ndim - 1)), r, x)

        return pick(obs_re, obs), jax.tree_util.tree_map(pick, st_re, state)

    return jax.lax.cond(done.any(), with_reset, lambda _: (obs, state), None)


def settings_struct(cls):
    """Decorate a settings dataclass: a flax struct with a validating `create`.

    The class lists fields with defaults and a `_ranges` dict name -> (lo, hi); these
    become rows of a field table (`cls._fields`, `jaxsim.config.fields.settings_table`:
    path `Class.name`, the range, the default and the docstring's help), which `create`
    validates with, as the scenario loader does its fields.
    """
    cls = struct.dataclass(cls)
    cls._fields = settings_table(
        cls, cls._ranges, {f.name: f.default for f in dataclasses.fields(cls)}
    )

    @classmethod
    def create(klass, dtype=jnp.float32, **values):
        fields = {f.name: f for f in dataclasses.fields(klass)}
        unknown = set(values) - set(fields)
        if unknown:
            raise ValueError(
                f"unknown {klass.__name__} setting(s) {sorted(unknown)}; allowed: {sorted(fields)}"
            )
        out = {}
        for name in fields:
            row = klass._fields[f"{klass.__name__}.{name}"]
            out[name] = jnp.asarray(row.check(values.get(name, row.default)), dtype)
        return klass(**out)

    cls.create = create
    return cls
