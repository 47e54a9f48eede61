"""`population:` section -> `PopParams`: behaviour cohorts, scripted programs, the LP's
market-making parameters and the population-wide trend / liquidation windows."""

from __future__ import annotations

import numpy as np

from jaxsim.config.fields import ConfigError
from jaxsim.config.table import COHORT_PARAMS, FIELDS, MARKET_KEYS
from jaxsim.types import BEHAVIOUR_NAMES, Dims, PopParams

_COHORT = "population.cohorts[]"
_PROGRAM = "population.programs[]"
_PROGRAM_REQ = {"account", "market", "side", "start_s", "duration_s", "qty"}
_PROGRAM_OPT = {"limit_pct", "carry"}


def _account_lookup(users: list):
    names = {u.get("name"): i for i, u in enumerate(users) if isinstance(u, dict) and u.get("name")}

    def account(row: dict, f: str) -> int:
        a = row.get("account")
        if a not in names:
            raise ConfigError(f"{f}.account '{a}' is not a named user; users: {sorted(names)}")
        return names[a]

    return account


def check_cohort_market(beh: str, mk, f: str) -> None:
    """A retail cohort trades the perp or BASE spot; the others a spot market."""
    if beh == "retail":
        if mk not in ("perp", "spot"):
            raise ConfigError(f"{f}.market '{mk}' must be perp or spot for a retail cohort")
    elif mk not in MARKET_KEYS or mk == "perp":
        raise ConfigError(f"{f}.market '{mk}' must be a spot market: spot, stable or lst")


def check_cohort_bid(row: dict, beh: str, f: str) -> None:
    """`bid` is a cross-venue arbitrageur's parameter."""
    if "bid" in row and beh != "xvenue_arb":
        raise ConfigError(f"{f}.bid applies to xvenue_arb cohorts only (this one is {beh})")


def check_spot_retail(side: float, lev_target: float, f: str) -> None:
    """Spot holders buy with the USDT they have: long only, at most their equity."""
    if side != 1.0:
        raise ConfigError(f"{f}.side must be 1 for a spot retail cohort (it cannot short)")
    if lev_target > 1.0:
        raise ConfigError(
            f"{f}.lev_target = {lev_target} must be at most 1 for a spot "
            "retail cohort (it buys with the USDT it holds)"
        )


def _cohorts(cohorts, account, n: int) -> dict[str, np.ndarray]:
    """Per-account behaviour columns: kind, market and every COHORT_PARAMS entry."""
    cols = {k: np.full(n, d) for k, (d, _, _) in COHORT_PARAMS.items()}
    cols["kind"] = np.zeros(n, np.int32)
    cols["market"] = np.zeros(n, np.int32)
    if not isinstance(cohorts, list):
        raise ConfigError("population.cohorts must be a list")
    allowed = {"account", "behaviour", "market", *COHORT_PARAMS}
    seen: set[int] = set()
    for i, row in enumerate(cohorts):
        f = f"population.cohorts[{i}]"
        if not isinstance(row, dict) or set(row) - allowed:
            bad = sorted(set(row) - allowed) if isinstance(row, dict) else row
            raise ConfigError(f"{f}: unknown key {bad}; allowed: {sorted(allowed)}")
        a = account(row, f)
        if a in seen:
            raise ConfigError(f"{f}.account '{row['account']}' already has a behaviour")
        seen.add(a)
        beh = row.get("behaviour")
        if beh not in BEHAVIOUR_NAMES[1:]:
            raise ConfigError(f"{f}.behaviour '{beh}' not one of {list(BEHAVIOUR_NAMES[1:])}")
        cols["kind"][a] = BEHAVIOUR_NAMES.index(beh)
        # A retail cohort trades the perp (default) or holds BASE spot bought with USDT.
        mk = row.get("market", "perp" if beh == "retail" else "spot")
        check_cohort_market(beh, mk, f)
        cols["market"][a] = MARKET_KEYS.index(mk)
        for k in COHORT_PARAMS:
            if k in row:
                cols[k][a] = FIELDS[f"{_COHORT}.{k}"].read(row, f)
        check_cohort_bid(row, beh, f)
        if beh == "retail" and mk == "spot":
            check_spot_retail(cols["side"][a], cols["lev_target"][a], f)
    return cols


def _programs(progs, account, dims: Dims, dt: float) -> dict[str, np.ndarray]:
    """Scripted order flow: per program row account, market, side, tick window, qty per
    tick, limit and carry (padded to dims.n_programs)."""
    if not isinstance(progs, list) or len(progs) > dims.n_programs:
        raise ConfigError(
            f"population.programs must be a list of at most dims.n_programs = {dims.n_programs}"
        )
    p = dims.n_programs
    out = dict(
        prog_account=np.zeros(p, np.int32),
        prog_market=np.zeros(p, np.int32),
        prog_side=np.zeros(p),
        prog_start=np.zeros(p, np.int32),
        prog_end=np.zeros(p, np.int32),
        prog_qty=np.zeros(p),
        prog_active=np.zeros(p, bool),
        prog_limit=np.zeros(p),
        prog_carry=np.zeros(p, bool),
    )
    for i, row in enumerate(progs):
        f = f"population.programs[{i}]"
        if (
            not isinstance(row, dict)
            or not _PROGRAM_REQ <= set(row)
            or set(row) - _PROGRAM_REQ - _PROGRAM_OPT
        ):
            raise ConfigError(
                f"{f} must have the keys {sorted(_PROGRAM_REQ)} and optionally {sorted(_PROGRAM_OPT)}"
            )

        def get(key, row=row, f=f):
            return FIELDS[f"{_PROGRAM}.{key}"].read(row, f)

        # limit_pct: trade no worse than the market's reference (the venues' price; the
        # index for the perp) by this percentage. carry: an unfilled part is sent again
        # the next tick, until the window ends.
        out["prog_limit"][i] = get("limit_pct")
        out["prog_carry"][i] = get("carry")
        out["prog_account"][i] = account(row, f)
        out["prog_market"][i] = MARKET_KEYS.index(get("market"))
        out["prog_side"][i] = 1.0 if get("side") == "buy" else -1.0
        start, dur = get("start_s"), get("duration_s")
        out["prog_start"][i] = p0 = round(start / dt)
        out["prog_end"][i] = p1 = p0 + max(1, round(dur / dt))
        out["prog_qty"][i] = get("qty") / (p1 - p0)
        out["prog_active"][i] = True
    return out


def _market_making(mm) -> dict[str, np.ndarray]:
    """The LP's quoting parameters (`population.mm`)."""
    mm = mm or {}
    rows = FIELDS.under("population.mm")
    allowed = {r.key for r in rows}
    if not isinstance(mm, dict) or set(mm) - allowed:
        raise ConfigError(f"population.mm: unknown key; allowed: {sorted(allowed)}")
    out = {}
    for r in rows:
        v = r.read(mm, "population.mm")
        name = r.target.split(".", 1)[1]
        if r.key == "perp_skew_vs":
            out[name] = np.asarray(1.0 if v == "flat" else 0.0)
        else:
            out[name] = np.array(v) if isinstance(v, list) else np.asarray(v)
    return out


def build_population(pop: dict, users: list, dims: Dims, dt: float) -> PopParams:
    """Population section -> PopParams (cohort columns per account, program rows, LP)."""
    account = _account_lookup(users)
    cols = _cohorts(pop.get("cohorts") or [], account, dims.n_accounts)
    progs = _programs(pop.get("programs") or [], account, dims, dt)
    mm = _market_making(pop.get("mm"))
    fast = FIELDS["population.trend_fast_s"].read(pop, "population")
    slow = FIELDS["population.trend_slow_s"].read(pop, "population", lo=fast)
    return PopParams(
        **cols,
        **progs,
        **mm,
        trend_fast_s=np.asarray(fast),
        trend_slow_s=np.asarray(slow),
        trend_scale=np.asarray(FIELDS["population.trend_scale"].read(pop, "population")),
        liq_ewma_s=np.asarray(FIELDS["population.liq_ewma_s"].read(pop, "population")),
    )
