"""Scenario YAML -> validated `Params`.

A scenario file overrides `configs/defaults.yaml`; a variant (under `variants:` in the
scenario) and `overrides` (nested dict or dotted keys) are merged on top, in that order.
Every value is checked; a bad one raises `ConfigError` naming the field and what is allowed.
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import yaml
from jax.flatten_util import ravel_pytree

from jaxsim.types import (
    BEH_RETAIL,
    BEH_XVENUE_ARB,
    BEHAVIOUR_NAMES,
    N_MARKETS,
    N_SYSTEM,
    POLICY_NAMES,
    SPOT,
    AccountInit,
    Dims,
    ExchangeRules,
    ExoParams,
    MarketParams,
    Params,
    PopParams,
    Schedule,
)

CONFIG_DIR = Path(
    os.environ.get("CASCADE_CONFIGS", Path(__file__).resolve().parent.parent / "configs")
)
SECONDS_PER_YEAR = 365.0 * 86400.0
MARKET_KEYS = ("spot", "perp", "stable", "lst")
ASSET_KEYS = ("usdt", "base", "stable", "lst")
INDEX_KEYS = ("base", "stable", "lst")
# Keys whose values are free-form (lists / maps checked separately).
_FREE = {"users", "shocks", "schedule", "variants", "tiers", "venues", "cohorts", "programs"}
_TOP_EXTRA = {"description", "extends", "horizon_s"}


class ConfigError(ValueError):
    """A scenario file or override holds a value outside what the simulator allows."""


# ------------------------------------------------------------------ files


def list_scenarios() -> list[str]:
    """Names of the scenario files in configs/ (defaults excluded)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml") if p.stem != "defaults")


def list_variants(name: str) -> list[str]:
    return sorted((_read_scenario(name).get("variants") or {}).keys())


def _read_yaml(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def _resolve(name_or_path: str | os.PathLike) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p
    cand = CONFIG_DIR / f"{name_or_path}.yaml"
    if cand.exists():
        return cand
    raise ConfigError(
        f"unknown scenario '{name_or_path}': not a YAML path and not one of {list_scenarios()}"
    )


def _read_scenario(name_or_path) -> dict:
    path = _resolve(name_or_path)
    data = _read_yaml(path)
    parent = data.pop("extends", None)
    if parent:
        base = _read_scenario(parent)
        variants = {**(base.get("variants") or {}), **(data.get("variants") or {})}
        data = _merge(base, data, "", check=False)
        data["variants"] = variants
    return data


# ------------------------------------------------------------------ merging


def _merge(base: dict, over: dict, path: str, check: bool = True) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        here = f"{path}.{k}" if path else k
        if check and k not in base and not (path == "" and k in _TOP_EXTRA):
            raise ConfigError(f"unknown key '{here}'; allowed: {sorted(base)}")
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k not in ("variants",):
            out[k] = _merge(out[k], v, here, check)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _undot(overrides: dict) -> dict:
    nested: dict = {}
    for k, v in overrides.items():
        parts = str(k).split(".")
        d = nested
        for p in parts[:-1]:
            d = d.setdefault(p, {})
        if isinstance(v, dict) and isinstance(d.get(parts[-1]), dict):
            d[parts[-1]] = {**d[parts[-1]], **_undot(v)}
        else:
            d[parts[-1]] = _undot(v) if isinstance(v, dict) else v
    return nested


def scenario_config(
    name_or_path, variant: str | None = None, overrides: dict | None = None
) -> dict:
    """The merged, unvalidated config dict (defaults <- scenario <- variant <- overrides)."""
    defaults = _read_yaml(CONFIG_DIR / "defaults.yaml")
    scen = _read_scenario(name_or_path)
    variants = scen.get("variants") or {}
    cfg = _merge(defaults, {k: v for k, v in scen.items() if k != "variants"}, "")
    cfg["variants"] = variants
    cfg["name"] = Path(str(name_or_path)).stem
    if variant is not None:
        if variant not in variants:
            raise ConfigError(
                f"unknown variant '{variant}' of scenario '{cfg['name']}'; allowed: {sorted(variants)}"
            )
        cfg = _merge(cfg, variants[variant], "variants." + variant)
        cfg["name"] = f"{cfg['name']}/{variant}"
    if overrides:
        cfg = _merge(cfg, _undot(overrides), "overrides")
    return cfg


# ------------------------------------------------------------------ checks


def _impact_halflife(e) -> float:
    return _num(e["venue_impact_halflife_h"], "exogenous.venue_impact_halflife_h", 0.0)


def _num(
    v: Any,
    field: str,
    lo: float = -math.inf,
    hi: float = math.inf,
    lo_open: bool = False,
    hi_open: bool = False,
) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(f"{field} must be a number, got {v!r}")
    x = float(v)
    lo_s = "(" if lo_open else "["
    hi_s = ")" if hi_open else "]"
    bad = (
        (not math.isfinite(x) and not (x == math.inf and hi == math.inf))
        or x < lo
        or x > hi
        or (lo_open and x == lo)
        or (hi_open and x == hi)
    )
    if bad:
        raise ConfigError(f"{field} = {v!r} is outside the allowed range {lo_s}{lo}, {hi}{hi_s}")
    return x


def _int(v: Any, field: str, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f"{field} must be an integer, got {v!r}")
    if not lo <= v <= hi:
        raise ConfigError(f"{field} = {v} is outside the allowed range [{lo}, {hi}]")
    return v


def _keyed(d: Any, keys: tuple[str, ...], field: str, **rng) -> list[float]:
    if not isinstance(d, dict):
        raise ConfigError(f"{field} must be a mapping with keys {list(keys)}")
    extra = set(d) - set(keys)
    if extra:
        raise ConfigError(f"unknown key '{field}.{sorted(extra)[0]}'; allowed: {list(keys)}")
    missing = [k for k in keys if k not in d]
    if missing:
        raise ConfigError(f"{field}.{missing[0]} is missing")
    return [_num(d[k], f"{field}.{k}", **rng) for k in keys]


def _bool(v: Any, field: str) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(f"{field} must be true or false, got {v!r}")
    return v


# ------------------------------------------------------------------ rules


def _build_rules(r: dict, dims: Dims) -> ExchangeRules:
    tiers = r["tiers"]
    if not isinstance(tiers, list) or not tiers:
        raise ConfigError("rules.tiers must be a non-empty list of [floor, max_leverage, mmr]")
    if len(tiers) > dims.n_tiers:
        raise ConfigError(
            f"rules.tiers has {len(tiers)} rows; dims.n_tiers allows at most {dims.n_tiers}"
        )
    floors, levs, mmrs = [], [], []
    for i, row in enumerate(tiers):
        if not isinstance(row, (list, tuple)) or len(row) != 3:
            raise ConfigError(f"rules.tiers[{i}] must be [floor, max_leverage, mmr]")
        floors.append(_num(row[0], f"rules.tiers[{i}].floor", 0.0))
        levs.append(_num(row[1], f"rules.tiers[{i}].max_leverage", 1.0, 1000.0))
        mmrs.append(_num(row[2], f"rules.tiers[{i}].mmr", 0.0, 1.0, lo_open=True))
    if floors[0] != 0.0:
        raise ConfigError("rules.tiers[0].floor must be 0 (the first tier starts at zero notional)")
    for i in range(1, len(tiers)):
        if floors[i] <= floors[i - 1]:
            raise ConfigError(
                f"rules.tiers must be monotone: tiers[{i}].floor {floors[i]} <= tiers[{i - 1}].floor {floors[i - 1]}"
            )
        if mmrs[i] < mmrs[i - 1]:
            raise ConfigError(
                f"rules.tiers must be monotone: tiers[{i}].mmr {mmrs[i]} < tiers[{i - 1}].mmr {mmrs[i - 1]}"
            )
        if levs[i] > levs[i - 1]:
            raise ConfigError(
                f"rules.tiers must be monotone: tiers[{i}].max_leverage {levs[i]} > tiers[{i - 1}].max_leverage {levs[i - 1]}"
            )
    for i, (lv, mr) in enumerate(zip(levs, mmrs, strict=True)):
        if mr >= 1.0 / lv:
            raise ConfigError(
                f"rules.tiers[{i}]: mmr {mr} must be below the initial margin 1/max_leverage = {1 / lv:.4g}"
            )
    pad = dims.n_tiers - len(tiers)
    # Padding tiers start at an unreachable notional and repeat the last row.
    floors += [_PAD_FLOOR * 10 * (k + 1) for k in range(pad)]
    levs += [levs[-1]] * pad
    mmrs += [mmrs[-1]] * pad

    idx = r["index"]
    if not isinstance(idx, dict) or set(idx) != set(INDEX_KEYS):
        raise ConfigError(f"rules.index must have exactly the keys {list(INDEX_KEYS)}")
    weights, clips, floors_px = [], [], []
    for k in INDEX_KEYS:
        e = idx[k]
        f = f"rules.index.{k}"
        allowed = {"venues", "internal", "redemption", "clip", "floor"}
        if not isinstance(e, dict) or set(e) - allowed:
            raise ConfigError(f"{f} must be a mapping with keys {sorted(allowed)}")
        ven = e.get("venues", [0.0] * dims.n_venues)
        if not isinstance(ven, list) or len(ven) != dims.n_venues:
            raise ConfigError(f"{f}.venues must list {dims.n_venues} weights (dims.n_venues)")
        w = [_num(x, f"{f}.venues[{i}]", 0.0, 1.0) for i, x in enumerate(ven)]
        w.append(_num(e.get("internal", 0.0), f"{f}.internal", 0.0, 1.0))
        w.append(_num(e.get("redemption", 0.0), f"{f}.redemption", 0.0, 1.0))
        if abs(sum(w) - 1.0) > 1e-6:
            raise ConfigError(f"{f}: weights must sum to 1, they sum to {sum(w):.6g}")
        weights.append(w)
        clips.append(_num(e.get("clip", 0.01), f"{f}.clip", 0.0, 1.0, lo_open=True))
        floors_px.append(_num(e.get("floor", 0.0), f"{f}.floor", 0.0))

    fund = r["funding"]
    f = "rules.funding"
    interest = _num(fund["interest_8h"], f"{f}.interest_8h", -0.01, 0.01)
    clamp = _num(fund["clamp_8h"], f"{f}.clamp_8h", 0.0, 0.01)
    cap = fund["cap"]
    cap = 0.75 * mmrs[0] if cap == "auto" else _num(cap, f"{f}.cap", 0.0, 0.1, lo_open=True)
    interval_h = _num(fund["interval_h"], f"{f}.interval_h", 0.0, 24.0, lo_open=True)
    imn = _num(fund["imn_quote"], f"{f}.imn_quote", 0.0, lo_open=True)
    fees = r["fees"]
    band = _keyed(r["price_band"], MARKET_KEYS, "rules.price_band", lo=0.0, hi=0.99, lo_open=True)
    dl = r["depth_limit"]
    if not isinstance(dl, dict) or set(dl) != {"mult", "band", "floor"}:
        raise ConfigError("rules.depth_limit must be a mapping with keys ['band', 'floor', 'mult']")
    rules = dict(
        tier_floor=floors,
        tier_mmr=mmrs,
        tier_max_lev=levs,
        position_limit=_num(r["position_limit"], "rules.position_limit", 0.0, lo_open=True),
        depth_limit_mult=_num(dl["mult"], "rules.depth_limit.mult", 0.0, 1000.0),
        depth_limit_band=_num(dl["band"], "rules.depth_limit.band", 0.0, 0.5, lo_open=True),
        depth_limit_floor=_num(dl["floor"], "rules.depth_limit.floor", 0.0),
        index_weights=weights,
        index_clip=clips,
        price_floor=floors_px,
        haircut=_keyed(r["haircut"], ASSET_KEYS, "rules.haircut", lo=0.0, hi=1.0, hi_open=True),
        funding_interest=interest,
        funding_clamp=clamp,
        funding_cap=cap,
        funding_interval_s=interval_h * 3600.0,
        imn_quote=imn,
        maker_fee=_num(fees["maker"], "rules.fees.maker", -0.01, 0.01),
        taker_fee=_num(fees["taker"], "rules.fees.taker", 0.0, 0.01),
        liq_fee=_num(fees["liquidation"], "rules.fees.liquidation", 0.0, 0.1),
        adl_on=float(_bool(r["adl"], "rules.adl")),
        if_position_cap=_num(r["if_position_cap"], "rules.if_position_cap", 0.0),
        withdrawal_delay_s=_num(
            r["withdrawal_delay_s"], "rules.withdrawal_delay_s", 0.0, 30 * 86400.0
        ),
        partial_liquidation=float(_bool(r["partial_liquidation"], "rules.partial_liquidation")),
        price_band=band,
        if_unwind_per_s=_num(r["if_unwind_per_h"], "rules.if_unwind_per_h", 0.0, 3600.0) / 3600.0,
    )
    out = ExchangeRules(**{k: np.asarray(v, np.float64) for k, v in rules.items()})
    _check_rules_consistent(out, "rules")
    return out


def _rule_layout(rules: ExchangeRules) -> dict[str, tuple[int, tuple[int, ...]]]:
    """Field name -> (offset in the flattened rules, shape)."""
    flat, unravel = ravel_pytree(jax.tree_util.tree_map(jnp.asarray, rules))
    offsets = unravel(jnp.arange(flat.size, dtype=flat.dtype))
    out = {}
    for field in ExchangeRules.__dataclass_fields__:
        arr = np.asarray(getattr(offsets, field))
        out[field] = (int(arr.ravel()[0]) if arr.size else 0, tuple(arr.shape))
    return out


RULE_FIELDS = tuple(ExchangeRules.__dataclass_fields__)


# Allowed values of each rule field (per element), for schedule rows.
RULE_RANGES: dict[str, dict] = {
    "tier_floor": dict(lo=0.0),
    "tier_mmr": dict(lo=0.0, hi=1.0, lo_open=True),
    "tier_max_lev": dict(lo=1.0, hi=1000.0),
    "position_limit": dict(lo=0.0, lo_open=True),
    "depth_limit_mult": dict(lo=0.0, hi=1000.0),
    "depth_limit_band": dict(lo=0.0, hi=0.5, lo_open=True),
    "depth_limit_floor": dict(lo=0.0),
    "index_weights": dict(lo=0.0, hi=1.0),
    "index_clip": dict(lo=0.0, hi=1.0, lo_open=True),
    "price_floor": dict(lo=0.0),
    "haircut": dict(lo=0.0, hi=1.0, hi_open=True),
    "funding_interest": dict(lo=-0.01, hi=0.01),
    "funding_clamp": dict(lo=0.0, hi=0.01),
    "funding_cap": dict(lo=0.0, hi=0.1, lo_open=True),
    "funding_interval_s": dict(lo=0.0, hi=86400.0, lo_open=True),
    "imn_quote": dict(lo=0.0, lo_open=True),
    "maker_fee": dict(lo=-0.01, hi=0.01),
    "taker_fee": dict(lo=0.0, hi=0.01),
    "liq_fee": dict(lo=0.0, hi=0.1),
    "adl_on": dict(lo=0.0, hi=1.0),
    "if_position_cap": dict(lo=0.0),
    "withdrawal_delay_s": dict(lo=0.0, hi=30 * 86400.0),
    "partial_liquidation": dict(lo=0.0, hi=1.0),
    "price_band": dict(lo=0.0, hi=0.99, lo_open=True),
    "if_unwind_per_s": dict(lo=0.0, hi=1.0),
}
_PAD_FLOOR = 1e29  # tiers at or above this floor are padding
_RULES_TEMPLATE: dict = {}  # the scenario's rules section, used to expand `field: tiers` rows


def _check_rules_consistent(r: ExchangeRules, where: str) -> None:
    """Cross-field checks that must hold whenever rules are in force (also mid-schedule)."""
    floor, mmr, lev = (np.asarray(x, float) for x in (r.tier_floor, r.tier_mmr, r.tier_max_lev))
    real = floor < _PAD_FLOOR
    f, m, lv = floor[real], mmr[real], lev[real]
    if f.size == 0 or f[0] != 0.0:
        raise ConfigError(f"{where}: tier_floor[0] must be 0 (the first tier starts at zero)")
    for i in range(1, f.size):
        if f[i] <= f[i - 1]:
            raise ConfigError(
                f"{where}: tiers must be monotone: tier_floor[{i}] <= tier_floor[{i - 1}]"
            )
        if m[i] < m[i - 1]:
            raise ConfigError(f"{where}: tiers must be monotone: tier_mmr[{i}] < tier_mmr[{i - 1}]")
        if lv[i] > lv[i - 1]:
            raise ConfigError(
                f"{where}: tiers must be monotone: tier_max_lev[{i}] > tier_max_lev[{i - 1}]"
            )
    for i in range(f.size):
        if m[i] >= 1.0 / lv[i]:
            raise ConfigError(f"{where}: tier_mmr[{i}] must be below 1/tier_max_lev[{i}]")
    w = np.asarray(r.index_weights, float)
    for k, name in enumerate(INDEX_KEYS):
        if abs(w[k].sum() - 1.0) > 1e-6:
            raise ConfigError(
                f"{where}: index_weights of {name} must sum to 1, they sum to {w[k].sum():.6g}"
            )


def _expand_table_rows(rows: Any, rules: ExchangeRules, dims: Dims) -> list:
    """Rewrite the convenience fields into per-field rows.

    - `field: tiers, value: [[floor, max_leverage, mmr], ...]` replaces the whole bracket
      table (as `rules.tiers` in YAML);
    - `field: max_leverage_cap, value: X` caps every tier's max leverage at X (tiers
      allowing more are lowered to X; the maintenance rates stay).
    """
    if not isinstance(rows, list):
        raise ConfigError("schedule must be a list of rule changes")
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ConfigError(f"schedule[{i}] must be a mapping")
        field = row.get("field")
        base = {k: v for k, v in row.items() if k not in ("field", "value")}
        if field == "tiers":
            tbl = row.get("value")
            if not isinstance(tbl, list) or not tbl or len(tbl) > dims.n_tiers:
                raise ConfigError(
                    f"schedule[{i}].value must be a list of 1..{dims.n_tiers} [floor, max_leverage, mmr] rows"
                )
            try:
                new = _build_rules({**_RULES_TEMPLATE, "tiers": tbl}, dims)
            except ConfigError as e:
                raise ConfigError(f"schedule[{i}] (field: tiers): {e}") from None
            for name in ("tier_floor", "tier_max_lev", "tier_mmr"):
                out.append({**base, "field": name, "value": [float(x) for x in getattr(new, name)]})
        elif field == "max_leverage_cap":
            cap = _num(row.get("value"), f"schedule[{i}].value", 1.0, 1000.0)
            levs = np.minimum(np.asarray(rules.tier_max_lev, float), cap)
            out.append({**base, "field": "tier_max_lev", "value": [float(x) for x in levs]})
        else:
            out.append(row)
    return out


def _build_schedule(rows: Any, rules: ExchangeRules, dims: Dims, dt: float) -> Schedule:
    if not isinstance(rows, list):
        raise ConfigError("schedule must be a list of rule changes")
    layout = _rule_layout(rules)
    rows = _expand_table_rows(rows, rules, dims)
    expanded = []
    for i, row in enumerate(rows):
        f = f"schedule[{i}]"
        allowed = {"announce_s", "effective_s", "field", "value", "policy", "index"}
        if not isinstance(row, dict) or set(row) - allowed:
            raise ConfigError(f"{f} must be a mapping with keys {sorted(allowed)}")
        ann = _num(row.get("announce_s", row.get("effective_s", 0.0)), f"{f}.announce_s", 0.0)
        eff = _num(row.get("effective_s"), f"{f}.effective_s", 0.0)
        if eff < ann:
            raise ConfigError(f"{f}.effective_s ({eff}) must not be before announce_s ({ann})")
        field = row.get("field")
        if field not in layout:
            raise ConfigError(f"{f}.field '{field}' is not a rule; allowed: {list(layout)}")
        policy = row.get("policy", "grandfather")
        if policy not in POLICY_NAMES:
            raise ConfigError(f"{f}.policy '{policy}' not one of {list(POLICY_NAMES)}")
        off, shape = layout[field]
        size = int(np.prod(shape)) if shape else 1
        value = row.get("value")
        rng = RULE_RANGES[field]
        if shape:
            if "index" in row:
                ix = _int(row["index"], f"{f}.index", 0, size - 1)
                vals = {ix: _num(value, f"{f}.value", **rng)}
            else:
                if not isinstance(value, list) or len(value) > size:
                    raise ConfigError(
                        f"{f}.value must be a list of at most {size} numbers for '{field}'"
                    )
                vals = {j: _num(x, f"{f}.value[{j}]", **rng) for j, x in enumerate(value)}
        else:
            vals = {0: _num(value, f"{f}.value", **rng)}
        for j, v in vals.items():
            expanded.append(
                (round(ann / dt), round(eff / dt), off + j, v, POLICY_NAMES.index(policy))
            )
    if len(expanded) > dims.n_schedule:
        raise ConfigError(
            f"schedule expands to {len(expanded)} rows; dims.n_schedule allows {dims.n_schedule}"
        )
    # One value per rule element and tick: two rows setting the same element at the same
    # effective time would leave which one wins unspecified.
    element = {}
    for name, (off, shape) in layout.items():
        size = int(np.prod(shape)) if shape else 1
        for j in range(size):
            element[off + j] = f"{name}[{j}]" if shape else name
    seen: dict[tuple[int, int], float] = {}
    for row in expanded:
        key = (row[1], row[2])
        if key in seen and seen[key] != row[3]:
            raise ConfigError(
                f"schedule sets {element[row[2]]} twice at effective_s={row[1] * dt:g} "
                f"({seen[key]:g} and {row[3]:g}); give each change its own time"
            )
        seen[key] = row[3]
    # The rules in force after every effective time must still be consistent.
    flat, unravel = ravel_pytree(
        jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), rules)
    )
    flat = np.asarray(flat, np.float64).copy()
    for tick in sorted({row[1] for row in expanded}):
        for row in expanded:
            if row[1] == tick:
                flat[row[2]] = row[3]
        _check_rules_consistent(
            unravel(jnp.asarray(flat)), f"schedule at effective_s={tick * dt:g}"
        )
    pad = dims.n_schedule - len(expanded)
    cols = list(zip(*expanded, strict=True)) if expanded else [[], [], [], [], []]
    return Schedule(
        announce_tick=np.array(list(cols[0]) + [0] * pad, np.int32),
        effective_tick=np.array(list(cols[1]) + [-1] * pad, np.int32),
        flat_index=np.array(list(cols[2]) + [0] * pad, np.int32),
        value=np.array(list(cols[3]) + [0.0] * pad, np.float64),
        policy=np.array(list(cols[4]) + [0] * pad, np.int32),
        active=np.array([True] * len(expanded) + [False] * pad),
    )


# ------------------------------------------------------------------ accounts


def _build_accounts(
    acc: dict, dims: Dims, price0: list[float], rules: ExchangeRules
) -> AccountInit:
    users = acc.get("users") or []
    if not isinstance(users, list):
        raise ConfigError("accounts.users must be a list")
    n_user = dims.n_accounts - N_SYSTEM
    if len(users) > n_user:
        raise ConfigError(
            f"accounts.users has {len(users)} accounts; dims.n_accounts = "
            f"{dims.n_accounts} leaves room for {n_user} (4 are system accounts)"
        )
    n = dims.n_accounts
    bal = np.zeros((n, 4))
    debt = np.zeros((n, 4))
    ext = np.zeros((n, 4))
    pos = np.zeros(n)
    entry = np.zeros(n)
    iso = np.zeros(n)
    mode = np.zeros(n, np.int32)
    lev = np.full(n, 10.0)
    allowed = {
        "name",
        "usdt",
        "base",
        "stable",
        "lst",
        "debt",
        "external",
        "position",
        "entry",
        "mode",
        "leverage",
        "isolated_margin",
    }
    max_lev0 = float(rules.tier_max_lev[0])
    for i, u in enumerate(users):
        f = f"accounts.users[{i}]"
        if not isinstance(u, dict) or set(u) - allowed:
            bad = sorted(set(u) - allowed) if isinstance(u, dict) else u
            raise ConfigError(f"{f}: unknown key {bad}; allowed: {sorted(allowed)}")
        for j, k in enumerate(ASSET_KEYS):
            bal[i, j] = _num(u.get(k, 0.0), f"{f}.{k}", 0.0)
        for name, arr in (("debt", debt), ("external", ext)):
            d = u.get(name, {})
            if not isinstance(d, dict) or set(d) - set(ASSET_KEYS):
                raise ConfigError(f"{f}.{name} must map assets {list(ASSET_KEYS)} to amounts")
            for j, k in enumerate(ASSET_KEYS):
                arr[i, j] = _num(d.get(k, 0.0), f"{f}.{name}.{k}", 0.0)
        pos[i] = _num(u.get("position", 0.0), f"{f}.position")
        entry[i] = (
            _num(u.get("entry", price0[0]), f"{f}.entry", 0.0, lo_open=True) if pos[i] else 0.0
        )
        m = u.get("mode", "cross")
        if m not in ("cross", "isolated"):
            raise ConfigError(f"{f}.mode '{m}' must be 'cross' or 'isolated'")
        mode[i] = 0 if m == "cross" else 1
        lev[i] = _num(u.get("leverage", 10.0), f"{f}.leverage", 1.0, max_lev0)
        iso[i] = _num(u.get("isolated_margin", 0.0), f"{f}.isolated_margin", 0.0)
        if mode[i] == 0 and iso[i] > 0:
            raise ConfigError(f"{f}.isolated_margin is only for mode: isolated")
    for key, row in (("lp", dims.lp), ("outside", dims.outside)):
        bal[row] = _keyed(acc[key], ASSET_KEYS, f"accounts.{key}", lo=0.0)
    bal[dims.insurance, 0] = _num(acc["insurance_fund"], "accounts.insurance_fund", 0.0)
    lev[n_user:] = 1.0
    # Open interest must net to zero: the LP holds the other side of any imbalance.
    net = pos.sum()
    if abs(net) > 0:
        pos[dims.lp] = -net
        entry[dims.lp] = price0[0]
    return AccountInit(
        bal=bal, debt=debt, ext_bal=ext, pos=pos, entry=entry, iso_margin=iso, mode=mode, lev=lev
    )


# ------------------------------------------------------------------ population

# Behaviour parameters a cohort row may set: name -> (default, lo, hi).
COHORT_PARAMS: dict[str, tuple[float, float, float]] = {
    "side": (0.0, -1.0, 1.0),
    "bias": (0.0, -1.0, 1.0),
    "lev_target": (1.0, 0.0, 125.0),
    "trend": (0.0, -10.0, 10.0),
    "funding": (0.0, 0.0, 10.0),
    "act_prob": (1.0, 0.0, 1.0),
    "speed": (0.5, 0.0, 1.0),
    "noise": (0.0, 0.0, 10.0),
    "threshold": (0.0, 0.0, 1.0),
    "exit": (0.0, 0.0, 1e12),
    "reentry_per_h": (0.0, 0.0, 100.0),
    "reentry_below": (0.0, 0.0, 1.0),
    "min_trade": (0.01, 0.0, 1.0),
    "hold": (0.0, 0.0, 1.0),
    "bid": (0.0, 0.0, 1.0),
}


def _build_population(pop: dict, users: list, dims: Dims, dt: float) -> PopParams:
    n = dims.n_accounts
    names = {u.get("name"): i for i, u in enumerate(users) if isinstance(u, dict) and u.get("name")}

    def account(row, f):
        a = row.get("account")
        if a not in names:
            raise ConfigError(f"{f}.account '{a}' is not a named user; users: {sorted(names)}")
        return names[a]

    cols = {k: np.full(n, d) for k, (d, _, _) in COHORT_PARAMS.items()}
    kind = np.zeros(n, np.int32)
    market = np.zeros(n, np.int32)
    cohorts = pop.get("cohorts") or []
    if not isinstance(cohorts, list):
        raise ConfigError("population.cohorts must be a list")
    seen: set[int] = set()
    for i, row in enumerate(cohorts):
        f = f"population.cohorts[{i}]"
        allowed = {"account", "behaviour", "market", *COHORT_PARAMS}
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
        kind[a] = BEHAVIOUR_NAMES.index(beh)
        if beh == "retail":
            # A retail cohort trades the perp (default) or holds BASE spot bought with USDT.
            mk = row.get("market", "perp")
            if mk not in ("perp", "spot"):
                raise ConfigError(f"{f}.market '{mk}' must be perp or spot for a retail cohort")
        else:
            mk = row.get("market", "spot")
            if mk not in MARKET_KEYS or mk == "perp":
                raise ConfigError(f"{f}.market '{mk}' must be a spot market: spot, stable or lst")
        market[a] = MARKET_KEYS.index(mk)
        for k, (_, lo, hi) in COHORT_PARAMS.items():
            if k in row:
                cols[k][a] = _num(row[k], f"{f}.{k}", lo, hi)
        if "bid" in row and beh != "xvenue_arb":
            raise ConfigError(f"{f}.bid applies to xvenue_arb cohorts only (this one is {beh})")
        if beh == "retail" and mk == "spot":
            # Spot holders buy with the USDT they have: long only, at most their equity.
            if cols["side"][a] != 1.0:
                raise ConfigError(f"{f}.side must be 1 for a spot retail cohort (it cannot short)")
            if cols["lev_target"][a] > 1.0:
                raise ConfigError(
                    f"{f}.lev_target = {cols['lev_target'][a]} must be at most 1 for a spot "
                    "retail cohort (it buys with the USDT it holds)"
                )

    progs = pop.get("programs") or []
    if not isinstance(progs, list) or len(progs) > dims.n_programs:
        raise ConfigError(
            f"population.programs must be a list of at most dims.n_programs = {dims.n_programs}"
        )
    p = dims.n_programs
    pa, pm, ps = np.zeros(p, np.int32), np.zeros(p, np.int32), np.zeros(p)
    p0, p1, pq = np.zeros(p, np.int32), np.zeros(p, np.int32), np.zeros(p)
    pon = np.zeros(p, bool)
    plim, pcarry = np.zeros(p), np.zeros(p, bool)
    for i, row in enumerate(progs):
        f = f"population.programs[{i}]"
        req = {"account", "market", "side", "start_s", "duration_s", "qty"}
        opt = {"limit_pct", "carry"}
        if not isinstance(row, dict) or not req <= set(row) or set(row) - req - opt:
            raise ConfigError(f"{f} must have the keys {sorted(req)} and optionally {sorted(opt)}")
        # limit_pct: trade no worse than the market's reference (the venues' price; the
        # index for the perp) by this percentage. carry: an unfilled part is sent again
        # the next tick, until the window ends.
        plim[i] = _num(row.get("limit_pct", 0.0), f"{f}.limit_pct", 0.0, 99.0) / 100.0
        carry = row.get("carry", False)
        if not isinstance(carry, bool):
            raise ConfigError(f"{f}.carry must be true or false, got {carry!r}")
        pcarry[i] = carry
        pa[i] = account(row, f)
        if row["market"] not in MARKET_KEYS:
            raise ConfigError(f"{f}.market '{row['market']}' not one of {list(MARKET_KEYS)}")
        pm[i] = MARKET_KEYS.index(row["market"])
        if row["side"] not in ("buy", "sell"):
            raise ConfigError(f"{f}.side '{row['side']}' must be buy or sell")
        ps[i] = 1.0 if row["side"] == "buy" else -1.0
        start = _num(row["start_s"], f"{f}.start_s", 0.0)
        dur = _num(row["duration_s"], f"{f}.duration_s", 0.0, lo_open=True)
        p0[i] = round(start / dt)
        p1[i] = p0[i] + max(1, round(dur / dt))
        pq[i] = _num(row["qty"], f"{f}.qty", 0.0, lo_open=True) / (p1[i] - p0[i])
        pon[i] = True

    mm = pop.get("mm") or {}
    allowed_mm = {
        "skew_bps",
        "inv_unit",
        "loss_withdraw",
        "loss_ref_usdt",
        "widen",
        "int_vol_ref_annual",
        "perp_skew_vs",
    }
    if not isinstance(mm, dict) or set(mm) - allowed_mm:
        raise ConfigError(f"population.mm: unknown key; allowed: {sorted(allowed_mm)}")
    perp_skew_vs = mm.get("perp_skew_vs", "start")
    if perp_skew_vs not in ("start", "flat"):
        raise ConfigError(
            f"population.mm.perp_skew_vs = {perp_skew_vs!r} must be 'start' (skew against the "
            "LP's starting perp position) or 'flat' (against its whole position)"
        )
    fast = _num(pop.get("trend_fast_s", 600.0), "population.trend_fast_s", 0.0, lo_open=True)
    slow = _num(pop.get("trend_slow_s", 3600.0), "population.trend_slow_s", fast)
    return PopParams(
        kind=kind,
        side=cols["side"],
        bias=cols["bias"],
        lev_target=cols["lev_target"],
        trend=cols["trend"],
        funding=cols["funding"],
        act_prob=cols["act_prob"],
        speed=cols["speed"],
        noise=cols["noise"],
        threshold=cols["threshold"],
        exit=cols["exit"],
        market=market,
        reentry_per_h=cols["reentry_per_h"],
        reentry_below=cols["reentry_below"],
        min_trade=cols["min_trade"],
        hold=cols["hold"],
        bid=cols["bid"],
        trend_fast_s=np.asarray(fast),
        trend_slow_s=np.asarray(slow),
        trend_scale=np.asarray(
            _num(pop.get("trend_scale", 0.005), "population.trend_scale", 0.0, lo_open=True)
        ),
        liq_ewma_s=np.asarray(
            _num(pop.get("liq_ewma_s", 600.0), "population.liq_ewma_s", 0.0, lo_open=True)
        ),
        prog_account=pa,
        prog_market=pm,
        prog_side=ps,
        prog_start=p0,
        prog_end=p1,
        prog_qty=pq,
        prog_active=pon,
        prog_limit=plim,
        prog_carry=pcarry,
        lp_skew_bps=np.array(
            _keyed(mm.get("skew_bps", 0.0), MARKET_KEYS, "population.mm.skew_bps", lo=0.0)
        ),
        lp_inv_unit=np.array(
            _keyed(
                mm.get("inv_unit", 1.0), MARKET_KEYS, "population.mm.inv_unit", lo=0.0, lo_open=True
            )
        ),
        lp_perp_flat=np.asarray(1.0 if perp_skew_vs == "flat" else 0.0),
        lp_loss_withdraw=np.asarray(
            _num(mm.get("loss_withdraw", 0.0), "population.mm.loss_withdraw", 0.0)
        ),
        lp_loss_ref=np.asarray(
            _num(mm.get("loss_ref_usdt", 1e6), "population.mm.loss_ref_usdt", 0.0, lo_open=True)
        ),
        lp_widen=np.array(_keyed(mm.get("widen", 0.0), MARKET_KEYS, "population.mm.widen", lo=0.0)),
        int_vol_ref=np.array(
            _keyed(
                mm.get("int_vol_ref_annual", 0.5),
                MARKET_KEYS,
                "population.mm.int_vol_ref_annual",
                lo=0.0,
            )
        )
        / math.sqrt(SECONDS_PER_YEAR),
    )


# ------------------------------------------------------------------ top level


def build_params(cfg: dict, dtype=None) -> Params:
    """Validate a merged config dict and build `Params`."""
    dtype = dtype or (jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)
    d = cfg["dims"]
    dims_kwargs = {}
    limits = {
        "n_accounts": (N_SYSTEM + 1, 4096),
        "n_levels": (8, 4096),
        "max_orders": (1, 1024),
        "n_tiers": (1, 64),
        "n_schedule": (1, 1024),
        "cascade_rounds": (1, 64),
        "liq_per_round": (1, 4096),
        "n_venues": (1, 32),
        "basis_window": (1, 4096),
        "transfer_slots": (1, 64),
        "n_shocks": (1, 256),
        "n_programs": (1, 256),
        "n_makers": (2, 4097),
    }
    for k, (lo, hi) in limits.items():
        dims_kwargs[k] = _int(d[k], f"dims.{k}", lo, hi)
    dims = Dims(**dims_kwargs)
    dt = _num(cfg["dt_s"], "dt_s", 0.0, 3600.0, lo_open=True)
    basis_s = _num(cfg["basis_window_s"], "basis_window_s", 0.0, lo_open=True)

    e = cfg["exogenous"]
    price0 = _keyed(e["price0"], INDEX_KEYS, "exogenous.price0", lo=0.0, lo_open=True)
    vol = _keyed(e["vol_annual"], INDEX_KEYS, "exogenous.vol_annual", lo=0.0, hi=20.0)
    vol_ref = _keyed(
        e["vol_ref_annual"], INDEX_KEYS, "exogenous.vol_ref_annual", lo=0.0, hi=20.0, lo_open=True
    )
    shocks = e.get("shocks") or []
    if not isinstance(shocks, list) or len(shocks) > dims.n_shocks:
        raise ConfigError(
            f"exogenous.shocks must be a list of at most dims.n_shocks = {dims.n_shocks}"
        )
    srows = []
    for i, s in enumerate(shocks):
        f = f"exogenous.shocks[{i}]"
        allowed = {"start_s", "duration_s", "asset", "return_pct"}
        if not isinstance(s, dict) or set(s) - allowed or set(allowed) - set(s):
            raise ConfigError(f"{f} must have exactly the keys {sorted(allowed)}")
        if s["asset"] not in INDEX_KEYS:
            raise ConfigError(f"{f}.asset '{s['asset']}' not one of {list(INDEX_KEYS)}")
        start = _num(s["start_s"], f"{f}.start_s", 0.0)
        dur = _num(s["duration_s"], f"{f}.duration_s", 0.0)
        ret = _num(s["return_pct"], f"{f}.return_pct", -99.9, 1000.0)
        srows.append(
            (
                round(start / dt),
                max(1, round(dur / dt)),
                INDEX_KEYS.index(s["asset"]),
                math.log1p(ret / 100.0),
            )
        )
    pad = dims.n_shocks - len(srows)
    cols = list(zip(*srows, strict=True)) if srows else [[], [], [], []]
    lst_rate = _num(e["lst_rate"], "exogenous.lst_rate", 0.0, lo_open=True)
    exo = ExoParams(
        price0=np.array(price0),
        vol_per_sqrt_s=np.array(vol) / math.sqrt(SECONDS_PER_YEAR),
        vol_ref=np.array(vol_ref) / math.sqrt(SECONDS_PER_YEAR),
        venue_dispersion=np.asarray(
            _num(e["venue_dispersion"], "exogenous.venue_dispersion", 0.0, 0.5)
        ),
        stable_reversion_per_s=np.asarray(
            _num(e["stable_reversion_per_h"], "exogenous.stable_reversion_per_h", 0.0) / 3600.0
        ),
        lst_rate=np.asarray(lst_rate),
        shock_start_tick=np.array(list(cols[0]) + [0] * pad, np.int32),
        shock_ticks=np.array(list(cols[1]) + [1] * pad, np.int32),
        shock_asset=np.array(list(cols[2]) + [0] * pad, np.int32),
        shock_log_return=np.array(list(cols[3]) + [0.0] * pad),
        shock_active=np.array([True] * len(srows) + [False] * pad),
        vol_of_vol_per_sqrt_s=np.array(
            _keyed(
                e["vol_of_vol_per_h"], INDEX_KEYS, "exogenous.vol_of_vol_per_h", lo=0.0, hi=100.0
            )
        )
        / 60.0,
        sv_reversion_per_s=np.asarray(
            _num(e["sv_reversion_per_h"], "exogenous.sv_reversion_per_h", 0.0, 3600.0) / 3600.0
        ),
        jump_rate_per_s=np.array(
            _keyed(e["jumps_per_day"], INDEX_KEYS, "exogenous.jumps_per_day", lo=0.0, hi=1e5)
        )
        / 86400.0,
        jump_std=np.array(
            _keyed(e["jump_std_pct"], INDEX_KEYS, "exogenous.jump_std_pct", lo=0.0, hi=50.0)
        )
        / 100.0,
        venue_impact=np.asarray(
            _num(e["venue_impact_bps_per_musdt"], "exogenous.venue_impact_bps_per_musdt", 0.0, 1e3)
            * 1e-4
            / 1e6
        ),
        venue_impact_decay_per_s=np.asarray(
            math.log(2.0) / (3600.0 * hl) if (hl := _impact_halflife(e)) > 0 else 0.0
        ),
    )

    mk = cfg["markets"]
    allowed_m = set(MarketParams.__dataclass_fields__)
    extra = set(mk) - allowed_m
    if extra:
        raise ConfigError(f"unknown key 'markets.{sorted(extra)[0]}'; allowed: {sorted(allowed_m)}")
    ranges = {
        "tick_size": dict(lo=0.0, lo_open=True),
        "lp_depth": dict(lo=0.0),
        "lp_decay_bps": dict(lo=0.0, lo_open=True),
        "lp_half_spread_ticks": dict(lo=0.0, hi=1000.0),
        "lp_resilience_per_s": dict(lo=0.0),
        "lp_ref_weight": dict(lo=0.0, hi=1.0),
        "lp_vol_withdraw": dict(lo=0.0),
    }
    markets = MarketParams(
        **{k: np.array(_keyed(mk[k], MARKET_KEYS, f"markets.{k}", **ranges[k])) for k in ranges}
    )
    for m in range(N_MARKETS):
        top = price0[[0, 0, 1, 2][m]]
        if markets.tick_size[m] * dims.n_levels < 0.01 * top:
            raise ConfigError(
                f"markets.tick_size.{MARKET_KEYS[m]} = {markets.tick_size[m]} gives a grid of "
                f"{dims.n_levels} levels covering under 1% of price {top}; raise tick_size or dims.n_levels"
            )

    rules = _build_rules(cfg["rules"], dims)
    _RULES_TEMPLATE.clear()
    _RULES_TEMPLATE.update(cfg["rules"])
    schedule = _build_schedule(cfg.get("schedule") or [], rules, dims, dt)
    accounts = _build_accounts(cfg["accounts"], dims, price0, rules)
    pop = _build_population(
        cfg.get("population") or {}, cfg["accounts"].get("users") or [], dims, dt
    )
    # Maker slots: the LP's, one per cohort that rests limit bids (spot retail with a
    # threshold, bidding cross-venue arbs), and at least one left for a learning account.
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
    """Load, merge and validate a scenario. See module docstring."""
    return build_params(scenario_config(name_or_path, variant, overrides), dtype)


def rule_offset(field: str, index: int = 0, params: Params | None = None) -> int:
    """Offset of a rule field (and element) in the flattened ExchangeRules."""
    p = params or load_scenario("calm")
    off, shape = _rule_layout(p.rules)[field]
    return off + index
