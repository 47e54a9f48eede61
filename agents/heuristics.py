"""Heuristic baseline policies as pure JAX functions `policy(key, obs, params) -> action`.

Every policy reads the role's normalized observation vector by entry name (indices are
resolved once, from the role's `obs_names`, when the policy is built) and returns the
role's action in [-1, 1]. Nothing inside a policy is Python control flow on values, so
they jit, vmap over a batch of envs and run inside `lax.scan` (see `agents.evaluate`).

`params` is the policy's own frozen pytree (a `flax.struct` dataclass of scalars): its
hyperparameters plus the few role settings it needs to invert the action decoding
(quote offset range, leverage cap...). Build it from the env's params with
`policy.make_params(env_params, **overrides)`; because it is a pytree of arrays it can be
vmapped (per-env settings) or swept.

Policies per role (`ROLE_POLICIES`):

- market_maker: `avellaneda_stoikov` (reservation price and spread of Avellaneda &
  Stoikov 2008: quotes skew against inventory), `flat` (no quotes), `random`.
- arbitrageur: `basis_arb` (cash-and-carry: long spot + short perp opened when the
  funding left in the episode beats spreads and fees, held in BASE units), `buy_and_hold`
  (spot), `flat`, `random`.
- leveraged_trader: `trend_follower` (long above the price at reset, short below, with
  hysteresis), `funding_contrarian` (short when funding is high, long when it is
  negative), `buy_and_hold` (1x long perp), `flat`, `random`. The directional ones size a
  position when they open or flip it and then hold it (`DirectionalParams.hold`).

What calm leaves a leveraged trader (measured with the flat policy over 24 h, 16 seeds;
the external price over 512): the BASE index follows the external venues' random walk
(GBM with stochastic volatility and jumps, nothing in it driven by past returns; the
autocorrelations of its 30 s to 2 h returns are within noise of 0, apart from -0.04 at
one tick from the venues' own noise), so no rule on past prices predicts it. The
predictable parts are small: the perp mid's gap to the index (std 8 bp, 1-99%: -15 to +16
bp; about 0.56-0.59 of it closes within 30-120 min, as the LP quotes around the index and
its inventory skew makes the slow part) and funding (0.009% per 8 h on average, 2.7 bp a
day to a short). A market order pays the taker fee (VIP0, 5 bp) and about 5 bp from the
mark to the touch (mean spread 9.8 bp), more at 3x, where one order is most of the touch's
depth. So in calm a directional rule's expected PnL is minus its costs, in proportion to
what it trades: `trend_follower` -3.6% +/- 2.2 a day (32 seeds; 2.2M traded,
1.1k USDT in fees and 1.1k crossing the spread on 100k), `funding_contrarian` +0.3% +/-
0.3 (-0.2% +/- 0.1 on another 16; it trades on 8 of the 32 seeds), against `buy_and_hold`'s
+0.7% +/- 0.7, which is market beta (correlation 1.00 with the index's move). A gap trade
opened only when half the gap pays the round trip never triggers in calm; with looser
gates it loses (-0.9% +/- 0.9 at half that gate, -5.7% +/- 1.3 at a quarter; 16 seeds).
The role's edge is in trending crashes: on `leverage_accident` the trend follower makes
+5.3% +/- 2.1 and buy-and-hold -5.9% +/- 0.7 (8 seeds).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from envs.core import LEV_SCALE, EnvParams
from envs.roles import ROLES
from jaxsim.prices import AUTO_CAP_LOW_LEV, AUTO_CAP_LOW_LEV_CAP, AUTO_CAP_MMR_MULT

Array = jax.Array
PolicyFn = Callable[[Array, Array, Any], Array]

PCT_PER_MARK_VS_START = 10.0  # obs `mark_vs_start` = log(mark / mark0) x 10 -> x 10 = percent
SMALL = 1e-6
BPS_PER_PCT = 100.0
PCT = 100.0  # fraction -> percent
SECONDS_PER_H = 3600.0


def own_taker_rate(sim, account: int = 0) -> Array:
    """The taker fee rate account `account` pays under the scenario's rules: its own rate
    when it has one (`accounts.users[].fees`), else `rules.fees.taker` (batched params
    give one rate per env)."""
    acc = sim.accounts
    return jnp.where(
        acc.own_taker_fee[..., account], acc.taker_fee[..., account], sim.rules.taker_fee
    )


@dataclasses.dataclass(frozen=True, eq=False)
class Policy:
    """A policy behind the evaluation interface.

    Attributes:
        name: label used in reports ("avellaneda_stoikov", "ppo", ...).
        role: the role whose observation / action it speaks.
        fn: `fn(key, obs (D,), params) -> action (A,)`, pure and jittable.
        make_params: `make_params(env_params, **overrides) -> params` for one env.
        description: one line for the report.
    """

    name: str
    role: str
    fn: PolicyFn
    make_params: Callable[..., Any]
    description: str = ""

    def __call__(self, key: Array, obs: Array, params: Any) -> Array:
        return self.fn(key, obs, params)


def obs_index(role: str) -> dict[str, int]:
    """Observation entry name -> index for a role."""
    return {n: i for i, n in enumerate(ROLES[role]().obs_names)}


def num_actions(role: str) -> int:
    return ROLES[role]().num_actions


def to_action(u: Array, lo: Array, hi: Array) -> Array:
    """Map a value in [lo, hi] to the action's [-1, 1] (clipped)."""
    return jnp.clip(2.0 * (u - lo) / jnp.maximum(hi - lo, SMALL) - 1.0, -1.0, 1.0)


def _create(cls, env_params: EnvParams | None, from_env: dict[str, Any], overrides: dict):
    """Instantiate a params struct: defaults <- values read from the env <- overrides."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    bad = set(overrides) - set(fields)
    if bad:
        raise ValueError(
            f"unknown {cls.__name__} parameter(s) {sorted(bad)}; allowed: {sorted(fields)}"
        )
    vals = {k: f.default for k, f in fields.items()}
    if env_params is not None:
        vals.update({k: get(env_params) for k, get in from_env.items()})
    vals.update(overrides)
    return cls(**{k: jnp.asarray(v, jnp.float32) for k, v in vals.items()})


def _empty_params(env_params: EnvParams | None = None, **overrides) -> Any:
    if overrides:
        raise ValueError(f"this policy has no parameters, got {sorted(overrides)}")
    return ()


# ============================================================== shared references


def flat(role: str) -> Policy:
    """Do nothing: no quotes, no position, collateral in USDT."""
    n = num_actions(role)
    if role == "market_maker":
        # Sizes at -1 (u = 0 < min_size_frac: no quote), hedge at -1 (none).
        act = jnp.array([0.0, 0.0, -1.0, -1.0, -1.0] + [0.0, 0.0, -1.0, -1.0][: n - 5])
    elif role == "leveraged_trader":
        # Target position 0, leverage 1x, no STABLE / LST.
        act = jnp.array([0.0, -1.0, -1.0, -1.0])
    else:
        # Spot target 0, perp target 0, no transfers.
        act = jnp.zeros((n,))

    def fn(key: Array, obs: Array, params: Any) -> Array:
        return act.astype(jnp.float32)

    return Policy("flat", role, fn, _empty_params, "no trading (reference)")


def random_policy(role: str) -> Policy:
    """Uniform random action in [-1, 1]^A every step."""
    n = num_actions(role)

    def fn(key: Array, obs: Array, params: Any) -> Array:
        return jax.random.uniform(key, (n,), jnp.float32, -1.0, 1.0)

    return Policy("random", role, fn, _empty_params, "uniform random actions")


# ============================================================== market maker


@struct.dataclass
class AvellanedaStoikovParams:
    """Avellaneda–Stoikov market maker, in basis points of the mid.

    Inventory q is the net BASE exposure as a multiple of the initial equity (position
    notional / equity). With sigma the mid's volatility per step (bp) and tau the risk
    horizon (steps), the reservation price is r = -gamma q sigma^2 tau and the total
    spread is gamma sigma^2 tau + (2 / gamma) ln(1 + gamma / kappa); bid = r - spread/2,
    ask = r + spread/2 (so a long inventory moves both quotes down: the ask gets more
    aggressive, the bid less). The quotes are placed around the book mid; `fair_weight`
    moves the reservation price towards the index (fair value) when the book lags it:
    r += fair_weight x (index - perp mid) in bp, read from the `basis` and
    `spot_index_gap` observations.

    Attributes:
        gamma: risk aversion, 1 / (bp x inventory unit).
        sigma_bps: mid volatility per step at `vol_ratio` = 1, bp (45%/yr at 30 s ~ 4.4).
        tau_steps: risk horizon, steps (the infinite-horizon variant: a constant).
        kappa: decay of the fill intensity with distance from the mid, 1 / bp.
        min_half_spread_bps: floor on the half spread, bp.
        fair_weight: weight of the index - mid gap in the reservation price (0 = classic
            AS around the book mid).
        size_frac: quote size in [0, 1] of the env's max_quote_frac x equity per side.
        max_inventory: |q| above which the side that would add to it is not quoted.
        hedge_inventory: |q| above which a hedge market order cuts the position.
        hedge_frac: share of the position the hedge cuts.
        min_offset_bps, max_offset_bps, notional_scale: copied from the env settings
            (to invert the action decoding and the position observation).
    """

    gamma: float = 0.1
    sigma_bps: float = 4.4
    tau_steps: float = 30.0
    kappa: float = 0.5
    min_half_spread_bps: float = 1.0
    fair_weight: float = 0.0
    size_frac: float = 0.25
    max_inventory: float = 1.0
    hedge_inventory: float = 2.0
    hedge_frac: float = 0.5
    min_offset_bps: float = 0.0
    max_offset_bps: float = 50.0
    notional_scale: float = 10.0


def avellaneda_stoikov(role: str = "market_maker") -> Policy:
    if role != "market_maker":
        raise ValueError("avellaneda_stoikov is a market_maker policy")
    ix = obs_index(role)
    n = num_actions(role)
    i_pos, i_spot, i_vol = ix["perp_position"], ix["spot_base"], ix["vol_ratio"]
    i_basis, i_gap = ix["basis"], ix["spot_index_gap"]

    def fn(key: Array, obs: Array, p: AvellanedaStoikovParams) -> Array:
        q = obs[i_pos] * p.notional_scale + obs[i_spot]
        sigma = p.sigma_bps * jnp.maximum(obs[i_vol], 0.1)
        risk = p.gamma * sigma**2 * p.tau_steps  # bp per inventory unit
        fair = -(obs[i_basis] + obs[i_gap]) * BPS_PER_PCT  # (index - perp mid) / mid, bp
        reservation = p.fair_weight * fair - q * risk
        half = 0.5 * (risk + 2.0 / p.gamma * jnp.log1p(p.gamma / p.kappa))
        half = jnp.maximum(half, p.min_half_spread_bps)
        bid_off = half - reservation
        ask_off = half + reservation
        bid_u = jnp.where(q > p.max_inventory, 0.0, p.size_frac)
        ask_u = jnp.where(q < -p.max_inventory, 0.0, p.size_frac)
        hedge = jnp.where(jnp.abs(q) > p.hedge_inventory, p.hedge_frac, -1.0)
        act = jnp.stack(
            [
                to_action(bid_off, p.min_offset_bps, p.max_offset_bps),
                to_action(ask_off, p.min_offset_bps, p.max_offset_bps),
                2.0 * bid_u - 1.0,
                2.0 * ask_u - 1.0,
                hedge,
            ]
        )
        if n > 5:  # quote_spot: leave the spot book alone
            act = jnp.concatenate([act, jnp.array([0.0, 0.0, -1.0, -1.0])])
        return act.astype(jnp.float32)

    def make_params(env_params: EnvParams | None = None, **overrides) -> AvellanedaStoikovParams:
        return _create(
            AvellanedaStoikovParams,
            env_params,
            {
                "min_offset_bps": lambda e: e.role.min_offset_bps,
                "max_offset_bps": lambda e: e.role.max_offset_bps,
                "notional_scale": lambda e: e.notional_scale,
            },
            overrides,
        )

    return Policy(
        "avellaneda_stoikov",
        role,
        fn,
        make_params,
        "Avellaneda-Stoikov quotes: reservation price skewed against inventory",
    )


# ============================================================== arbitrageur


@struct.dataclass
class BasisArbParams:
    """Cash-and-carry: long spot + short perp, opened only when the carry it can still
    collect in the episode beats what opening it costs, then held in BASE units.

    The account's equity marks spot BASE at the index and the perp at the mark, and the
    end of the episode marks the position (nothing is paid to close it). Per unit of
    notional, a hedged carry opened now therefore earns the funding settled before the
    end, plus (with `basis_weight`) the basis it is opened at less the mark - index gap
    expected to remain at the end, minus what opening costs (both legs cross half their
    book's spread and pay the taker fee):

        funding = next settlement's expected rate (if it falls inside the episode)
                  + the baseline rate x the settlements after it
        carry   = funding + basis_weight x (basis - mark_index_gap x exp(-left / gap_decay_h))
        cost    = (perp spread + spot spread) / 2 + 2 x taker fee               (percent)

    The next settlement's rate is the predicted one weighted by the share of its
    time-weighted premium average already fixed, elapsed^2 (MECHANICS 1.1: weights grow
    linearly in time), and the baseline rate (interest x interval / 8 h, the rate while the
    premium stays inside the clamp) for the rest. Open when carry - cost > enter_pct; once
    open, unwind only when closing beats holding by exit_pct (carry + cost < -exit_pct).
    An open carry keeps the BASE it holds (no rebalancing as the price moves) and shorts
    the perp by exactly that quantity.

    `basis_weight` defaults to 0: entries on the observed basis lost in every scenario where
    they traded, because a basis wide enough to pay the spreads is a dislocation of one
    book that has mostly closed when the orders execute one tick later
    (benchmarks/RESULTS.md, "Arbitrageur economics").

    Attributes:
        enter_pct: margin (percent) by which the carry must beat the costs to open.
        exit_pct: margin (percent) by which closing must beat holding to unwind.
        basis_weight: weight of the basis term (0 = funding carry only).
        gap_decay_h: decay time of the mark - index gap, hours (calm: its autocorrelation
            is 0.22 after 1 h and 0.06 after 2 h).
        size: each leg's notional / initial equity when opening (spot action, |perp|).
        max_spot_frac, max_perp_frac: copied from the env settings.
        taker_fee_pct: the account's taker rate, percent (copied from the env params).
        funding_cap_pct: the scenario's funding cap, percent (0 = auto: from the tier-1
            rules in the observation, as the engine computes it).
        base_rate_pct: the baseline funding rate per interval, percent (interest x
            interval / 8 h, copied from the env params).
        funding_interval_h, horizon_h: funding interval and episode length, hours (copied
            from the env params).
    """

    enter_pct: float = 0.02
    exit_pct: float = 0.10
    basis_weight: float = 0.0
    gap_decay_h: float = 1.0
    size: float = 0.9
    max_spot_frac: float = 1.0
    max_perp_frac: float = 1.0
    taker_fee_pct: float = 0.017
    funding_cap_pct: float = 0.0
    base_rate_pct: float = 0.01
    funding_interval_h: float = 8.0
    horizon_h: float = 24.0


def basis_arb(role: str = "arbitrageur") -> Policy:
    if role != "arbitrageur":
        raise ValueError("basis_arb is an arbitrageur policy")
    ix = obs_index(role)
    i_basis, i_gap = ix["basis"], ix["mark_index_gap"]
    i_fund, i_pos, i_spot = ix["funding_rate"], ix["perp_position"], ix["spot_base"]
    i_ttf, i_prog = ix["time_to_funding"], ix["episode_progress"]
    i_lev, i_mmr = ix["max_lev_tier1"], ix["mmr_tier1"]
    i_pspr, i_sspr = ix["perp_spread"], ix["spot_spread"]

    def fn(key: Array, obs: Array, p: BasisArbParams) -> Array:
        # The funding cap in force (the observation is the predicted rate / cap).
        auto = jnp.where(
            obs[i_lev] * LEV_SCALE <= AUTO_CAP_LOW_LEV,
            AUTO_CAP_LOW_LEV_CAP * PCT,
            AUTO_CAP_MMR_MULT * obs[i_mmr],
        )
        cap_pct = jnp.where(p.funding_cap_pct > 0, p.funding_cap_pct, auto)
        fixed = jnp.clip(1.0 - obs[i_ttf], 0.0, 1.0) ** 2
        next_pct = fixed * obs[i_fund] * cap_pct + (1.0 - fixed) * p.base_rate_pct
        interval = jnp.maximum(p.funding_interval_h, SMALL)
        left_h = (1.0 - obs[i_prog]) * p.horizon_h
        next_h = obs[i_ttf] * interval
        later = jnp.floor(jnp.maximum(left_h - next_h, 0.0) / interval)
        funding = jnp.where(left_h >= next_h, next_pct + later * p.base_rate_pct, 0.0)
        keep = jnp.exp(-left_h / jnp.maximum(p.gap_decay_h, SMALL))
        carry = funding + p.basis_weight * (obs[i_basis] - obs[i_gap] * keep)
        # Spreads are observed in units of 10 bp = 0.1 %; half of each is crossed.
        cost = 0.05 * (obs[i_pspr] + obs[i_sspr]) + 2.0 * p.taker_fee_pct
        in_carry = obs[i_pos] < -SMALL
        on = (carry - cost > p.enter_pct) | (in_carry & (carry + cost > -p.exit_pct))
        # Opening: both legs at `size`. Open: keep the BASE held (once at least half
        # built) and short the perp by exactly that much (both actions convert at the
        # index, `spot_base` is BASE x index / equity).
        held = jnp.maximum(obs[i_spot], 0.0)
        spot_u = jnp.where(in_carry & (held >= 0.5 * p.size), held, p.size)
        perp_u = jnp.where(in_carry, held, p.size)
        spot = jnp.where(on, spot_u / jnp.maximum(p.max_spot_frac, SMALL), 0.0)
        perp = jnp.where(on, -perp_u / jnp.maximum(p.max_perp_frac, SMALL), 0.0)
        return jnp.stack([spot, perp, 0.0, 0.0]).clip(-1.0, 1.0).astype(jnp.float32)

    def make_params(env_params: EnvParams | None = None, **overrides) -> BasisArbParams:
        return _create(
            BasisArbParams,
            env_params,
            {
                "max_spot_frac": lambda e: e.role.max_spot_frac,
                "max_perp_frac": lambda e: e.role.max_perp_frac,
                "taker_fee_pct": lambda e: own_taker_rate(e.sim, 0) * PCT,
                "funding_cap_pct": lambda e: e.sim.rules.funding_cap * PCT,
                "base_rate_pct": lambda e: (
                    e.sim.rules.funding_interest
                    * e.sim.rules.funding_interval_s
                    / (8.0 * SECONDS_PER_H)
                    * PCT
                ),
                "funding_interval_h": lambda e: e.sim.rules.funding_interval_s / SECONDS_PER_H,
                "horizon_h": lambda e: e.max_steps_in_episode * e.sim.dt / SECONDS_PER_H,
            },
            overrides,
        )

    return Policy(
        "basis_arb",
        role,
        fn,
        make_params,
        "long spot + short perp while the funding left in the episode beats spreads and fees",
    )


def arb_buy_and_hold(role: str = "arbitrageur") -> Policy:
    """Hold spot BASE with all the equity (no perp, no transfers)."""

    def fn(key: Array, obs: Array, params: Any) -> Array:
        return jnp.array([1.0, 0.0, 0.0, 0.0], jnp.float32)

    return Policy("buy_and_hold", role, fn, _empty_params, "all equity in spot BASE")


# ============================================================== leveraged trader


@struct.dataclass
class DirectionalParams:
    """A directional leveraged trader (trend follower, funding contrarian, buy-and-hold).

    Attributes:
        enter: |signal| that opens a position (signal units of the policy).
        exit: a position is kept while the signal has its sign and |signal| > exit.
        leverage: chosen leverage (capped by the env's max_leverage and the tier-1 cap).
        size: fraction of the buying power at that leverage (position action).
        hold: 1 = an open position whose side the signal keeps is held as it is (the
            action that decodes to the current position), as a trader holds a position
            once opened; 0 = re-sized every step to size x the buying power, which moves
            with every change of the margin balance and pays the spread and the taker
            fee on each re-size (the trend follower traded 3.4M a calm day that way,
            2.2M holding; 32 seeds).
        max_leverage, margin_buffer, notional_scale: copied from the env (to invert the
            position decoding).
    """

    enter: float = 0.5
    exit: float = 0.0
    leverage: float = 3.0
    size: float = 1.0
    hold: float = 1.0
    max_leverage: float = 20.0
    margin_buffer: float = 0.05
    notional_scale: float = 10.0


def _lt_action(obs: Array, ix: dict[str, int], direction: Array, p: Any) -> Array:
    """The leveraged trader's action for a direction (+1 / -1 / 0) at p.leverage.

    A new or flipped position is sized to p.size x the buying power; with p.hold, one the
    direction keeps is held: its action is the one the env decodes back to the current
    position, target = a x lev x margin balance x (1 - margin_buffer) / mark, with the
    position notional and the margin balance read from `perp_position` and `equity` (the
    margin balance of a USDT wallet, whose haircut is 0.01%)."""
    cap = jnp.maximum(jnp.minimum(p.max_leverage, obs[ix["max_lev_tier1"]] * LEV_SCALE), 1.0)
    lev = jnp.clip(p.leverage, 1.0, cap)
    lev_a = to_action(lev, 1.0, cap)
    pos = obs[ix["perp_position"]]
    notional = pos * p.notional_scale  # position notional / initial equity
    margin = jnp.maximum(1.0 + obs[ix["equity"]], SMALL) * (1.0 - p.margin_buffer)
    held = notional / (lev * margin)
    same_side = (direction != 0) & (jnp.sign(pos) == direction)
    pos_a = jnp.where((p.hold > 0.5) & same_side, held, direction * p.size)
    return jnp.stack([pos_a, lev_a, -1.0, -1.0]).clip(-1.0, 1.0).astype(jnp.float32)


def _lt_from_env() -> dict[str, Callable[[EnvParams], Any]]:
    """Leveraged trader settings a policy copies from the env to invert its decoding."""
    return {
        "max_leverage": lambda e: e.role.max_leverage,
        "margin_buffer": lambda e: e.role.margin_buffer,
        "notional_scale": lambda e: e.notional_scale,
    }


def _hysteresis(signal: Array, current: Array, enter: Array, exit_: Array) -> Array:
    """+1 / -1 / 0: enter beyond +/-enter, keep a position while its side's signal > exit."""
    new = jnp.where(signal > enter, 1.0, jnp.where(signal < -enter, -1.0, 0.0))
    side = jnp.sign(current)
    keep = (side != 0) & (side * signal > exit_)
    return jnp.where(new != 0, new, jnp.where(keep, side, 0.0))


def _directional(
    name: str, signal_fn, defaults: dict[str, float], description: str, role: str
) -> Policy:
    if role != "leveraged_trader":
        raise ValueError(f"{name} is a leveraged_trader policy")
    ix = obs_index(role)
    i_pos = ix["perp_position"]

    def fn(key: Array, obs: Array, p: DirectionalParams) -> Array:
        direction = _hysteresis(signal_fn(obs, ix), obs[i_pos], p.enter, p.exit)
        return _lt_action(obs, ix, direction, p)

    def make_params(env_params: EnvParams | None = None, **overrides) -> DirectionalParams:
        return _create(
            DirectionalParams,
            env_params,
            _lt_from_env(),
            {**defaults, **overrides},
        )

    return Policy(name, role, fn, make_params, description)


def trend_follower(role: str = "leveraged_trader") -> Policy:
    """Signal: percent move of the mark since reset; long above +enter, short below -enter."""
    return _directional(
        "trend_follower",
        lambda obs, ix: obs[ix["mark_vs_start"]] * PCT_PER_MARK_VS_START,
        {"enter": 0.5, "exit": 0.0, "leverage": 3.0},
        "long when the mark is up > 0.5% since reset, short when down (3x)",
        role,
    )


def funding_contrarian(role: str = "leveraged_trader") -> Policy:
    """Signal: minus the predicted funding rate (fraction of the cap): short when high."""
    return _directional(
        "funding_contrarian",
        lambda obs, ix: -obs[ix["funding_rate"]],
        {"enter": 0.1, "exit": 0.05, "leverage": 3.0},
        "short when predicted funding > 10% of the cap, long when < -10% (3x)",
        role,
    )


def lt_buy_and_hold(role: str = "leveraged_trader") -> Policy:
    """Constant 1x long perp (the buy-and-hold reference of a leveraged trader)."""
    return _directional(
        "buy_and_hold",
        lambda obs, ix: jnp.ones(()),
        {"enter": 0.0, "exit": -1.0, "leverage": 1.0},
        "1x long perp held throughout",
        role,
    )


# ============================================================== registry

_BUILDERS: dict[str, dict[str, Callable[[str], Policy]]] = {
    "market_maker": {
        "avellaneda_stoikov": avellaneda_stoikov,
        "flat": flat,
        "random": random_policy,
    },
    "arbitrageur": {
        "basis_arb": basis_arb,
        "buy_and_hold": arb_buy_and_hold,
        "flat": flat,
        "random": random_policy,
    },
    "leveraged_trader": {
        "trend_follower": trend_follower,
        "funding_contrarian": funding_contrarian,
        "buy_and_hold": lt_buy_and_hold,
        "flat": flat,
        "random": random_policy,
    },
}
ROLE_POLICIES: dict[str, tuple[str, ...]] = {r: tuple(b) for r, b in _BUILDERS.items()}


@functools.cache
def heuristic(role: str, name: str) -> Policy:
    """The heuristic `name` of `role` (cached: the same object, so jit caches hit).

    Raises:
        ValueError: unknown role or policy, listing the valid ones.
    """
    if role not in _BUILDERS:
        raise ValueError(f"unknown role '{role}'; allowed: {sorted(_BUILDERS)}")
    if name not in _BUILDERS[role]:
        raise ValueError(
            f"no heuristic '{name}' for role '{role}'; allowed: {list(ROLE_POLICIES[role])}"
        )
    return _BUILDERS[role][name](role)


def baselines(role: str) -> list[Policy]:
    """Every heuristic of a role, in `ROLE_POLICIES` order."""
    if role not in _BUILDERS:
        raise ValueError(f"unknown role '{role}'; allowed: {sorted(_BUILDERS)}")
    return [heuristic(role, n) for n in ROLE_POLICIES[role]]
