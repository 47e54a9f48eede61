"""Merged config dict -> `Params`: dims, exogenous prices, markets, then the rules,
schedule, accounts and population builders, and the cast to JAX arrays."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxsim.config.accounts import build_accounts
from jaxsim.config.fields import ConfigError, read
from jaxsim.config.load import scenario_config
from jaxsim.config.population import build_population
from jaxsim.config.rules import build_rules, rule_layout
from jaxsim.config.schedule import build_schedule
from jaxsim.config.table import FIELDS, INDEX_KEYS, MARKET_KEYS
from jaxsim.types import (
    BEH_RETAIL,
    BEH_XVENUE_ARB,
    N_MARKETS,
    SPOT,
    Dims,
    ExoParams,
    MarketParams,
    Params,
    PopParams,
)

_SHOCK = "exogenous.shocks[]"


def build_dims(cfg: dict) -> Dims:
    return Dims(**{f.key: read(FIELDS, f.path, cfg) for f in FIELDS.under("dims")})


def _shocks(shocks, dims: Dims, dt: float) -> dict[str, np.ndarray]:
    """Shock rows -> start tick, length in ticks, asset, log return (padded)."""
    if not isinstance(shocks, list) or len(shocks) > dims.n_shocks:
        raise ConfigError(
            f"exogenous.shocks must be a list of at most dims.n_shocks = {dims.n_shocks}"
        )
    allowed = {f.key for f in FIELDS.under(_SHOCK)}
    srows = []
    for i, s in enumerate(shocks):
        f = f"exogenous.shocks[{i}]"
        if not isinstance(s, dict) or set(s) - allowed or set(allowed) - set(s):
            raise ConfigError(f"{f} must have exactly the keys {sorted(allowed)}")
        asset = FIELDS[f"{_SHOCK}.asset"].read(s, f)
        start = FIELDS[f"{_SHOCK}.start_s"].read(s, f)
        dur = FIELDS[f"{_SHOCK}.duration_s"].read(s, f)
        ret = FIELDS[f"{_SHOCK}.return_pct"].read(s, f)
        srows.append(
            (
                round(start / dt),
                max(1, round(dur / dt)),
                INDEX_KEYS.index(asset),
                math.log1p(ret / 100.0),
            )
        )
    pad = dims.n_shocks - len(srows)
    cols = list(zip(*srows, strict=True)) if srows else [[], [], [], []]
    return dict(
        shock_start_tick=np.array(list(cols[0]) + [0] * pad, np.int32),
        shock_ticks=np.array(list(cols[1]) + [1] * pad, np.int32),
        shock_asset=np.array(list(cols[2]) + [0] * pad, np.int32),
        shock_log_return=np.array(list(cols[3]) + [0.0] * pad),
        shock_active=np.array([True] * len(srows) + [False] * pad),
    )


def build_exo(e: dict, dims: Dims, dt: float) -> ExoParams:
    """`exogenous:` -> ExoParams: every table row (units converted), then the shocks."""
    vals = {}
    for row in FIELDS.under("exogenous"):
        if "[" not in row.path:
            v = row.read(e, "exogenous")
            vals[row.target.split(".", 1)[1]] = (
                np.array(v) if isinstance(v, list) else np.asarray(v)
            )
    shocks = e.get("shocks") or []
    return ExoParams(**vals, **_shocks(shocks, dims, dt))


def build_markets(mk: dict, dims: Dims, price0: list[float]) -> MarketParams:
    allowed = set(MarketParams.__dataclass_fields__)
    extra = set(mk) - allowed
    if extra:
        raise ConfigError(f"unknown key 'markets.{sorted(extra)[0]}'; allowed: {sorted(allowed)}")
    rows = FIELDS.under("markets")
    markets = MarketParams(**{r.key: np.array(r.read(mk, "markets")) for r in rows})
    check_tick_grid(markets, dims, price0)
    return markets


def check_tick_grid(markets: MarketParams, dims: Dims, price0: list[float]) -> None:
    """Each market's grid of dims.n_levels ticks covers at least 1% of its price."""
    for m in range(N_MARKETS):
        top = price0[[0, 0, 1, 2][m]]
        if markets.tick_size[m] * dims.n_levels < 0.01 * top:
            raise ConfigError(
                f"markets.tick_size.{MARKET_KEYS[m]} = {markets.tick_size[m]} gives a grid of "
                f"{dims.n_levels} levels covering under 1% of price {top}; raise tick_size or dims.n_levels"
            )


def check_maker_slots(dims: Dims, pop: PopParams) -> None:
    """Maker slots: the LP's, one per cohort that rests limit bids (spot retail with a
    threshold, bidding cross-venue arbs), and at least one left for a learning account."""
    bidders = int(
        np.sum((pop.kind == BEH_RETAIL) & (pop.market == SPOT) & (pop.threshold > 0))
        + np.sum((pop.kind == BEH_XVENUE_ARB) & (pop.bid > 0))
    )
    if dims.n_makers < bidders + 2:
        raise ConfigError(
            f"dims.n_makers = {dims.n_makers} is too few: the LP and {bidders} limit-bidding "
            f"cohort(s) rest orders, so at least {bidders + 2} slots are needed (one left for "
            "a learning account)"
        )


def build_params(cfg: dict, dtype=None) -> Params:
    """Validate a merged config dict and build `Params`."""
    dtype = dtype or (jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)
    dims = build_dims(cfg)
    dt = read(FIELDS, "dt_s", cfg)
    basis_s = read(FIELDS, "basis_window_s", cfg)
    first_funding_s = read(FIELDS, "first_funding_h", cfg)
    exo = build_exo(cfg["exogenous"], dims, dt)
    price0 = read(FIELDS, "exogenous.price0", cfg)
    markets = build_markets(cfg["markets"], dims, price0)
    rules = build_rules(cfg["rules"], dims)
    schedule = build_schedule(cfg.get("schedule") or [], rules, dims, dt, cfg["rules"])
    accounts = build_accounts(cfg["accounts"], dims, price0, rules)
    pop = build_population(
        cfg.get("population") or {}, cfg["accounts"].get("users") or [], dims, dt
    )
    check_maker_slots(dims, pop)
    params = Params(
        dims=dims,
        dt=np.asarray(dt),
        basis_window_s=np.asarray(basis_s),
        markets=markets,
        exo=exo,
        rules=rules,
        schedule=schedule,
        accounts=accounts,
        pop=pop,
        # 0 = one funding interval after the start (the episode starts at a settlement).
        first_funding_s=np.asarray(first_funding_s or float(rules.funding_interval_s)),
        name=cfg.get("name", "custom"),
    )

    def cast(x):
        x = np.asarray(x)
        if x.dtype.kind == "f":
            return jnp.asarray(x, dtype)
        if x.dtype.kind in "iu":
            return jnp.asarray(x, jnp.int32)
        return jnp.asarray(x)

    return jax.tree_util.tree_map(cast, params)


def load_scenario(
    name_or_path, variant: str | None = None, overrides: dict | None = None, dtype=None
) -> Params:
    """Load, merge and validate a scenario (see `jaxsim.config`)."""
    return build_params(scenario_config(name_or_path, variant, overrides), dtype)


def rule_offset(field: str, index: int = 0, params: Params | None = None) -> int:
    """Offset of a rule field (and element) in the flattened ExchangeRules."""
    p = params or load_scenario("calm")
    off, shape = rule_layout(p.rules)[field]
    return off + index
