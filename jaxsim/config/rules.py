"""`rules:` section -> `ExchangeRules`: the bracket table, index weights and scalar rules.

Values are checked by the `rules.*` rows of the field table; the cross-field rules are the
`check_*` functions here (also applied to the rules in force after each schedule change).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from jaxsim.config.fields import ConfigError, check_keys, get_path
from jaxsim.config.table import FIELDS, INDEX_KEYS
from jaxsim.types import Dims, ExchangeRules

_PAD_FLOOR = 1e29  # tiers at or above this floor are padding
RULE_FIELDS = tuple(ExchangeRules.__dataclass_fields__)
# Rows of single values (not the tiers' or the index's per-element rows), in check order.
SCALAR_RULE_ROWS = [f for f in FIELDS.under("rules") if "[" not in f.path and "*" not in f.path]
_INDEX_KEYS_ALLOWED = ("venues", "internal", "redemption", "clip", "floor")


def _rule_rows(field: str):
    return [f for f in FIELDS.values() if f.target == f"rules.{field}"]


# Allowed values of each rule field (per element, in Params units), for schedule rows.
RULE_RANGES: dict[str, dict] = {name: _rule_rows(name)[0].schedule_range() for name in RULE_FIELDS}


def check_tier_table(floors: list, levs: list, mmrs: list) -> None:
    """The YAML bracket table: starts at 0, monotone, each MMR below 1 / max leverage."""
    if floors[0] != 0.0:
        raise ConfigError("rules.tiers[0].floor must be 0 (the first tier starts at zero notional)")
    for i in range(1, len(floors)):
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


def check_index_weights(weights: list[float], where: str) -> None:
    """An asset's index weights (venues, internal, redemption) sum to 1."""
    if abs(sum(weights) - 1.0) > 1e-6:
        raise ConfigError(f"{where}: weights must sum to 1, they sum to {sum(weights):.6g}")


def _tiers(tiers, dims: Dims) -> tuple[list, list, list]:
    """floors, max leverages, MMRs of the bracket table, padded to dims.n_tiers."""
    if not isinstance(tiers, list) or not tiers:
        raise ConfigError("rules.tiers must be a non-empty list of [floor, max_leverage, mmr]")
    if len(tiers) > dims.n_tiers:
        raise ConfigError(
            f"rules.tiers has {len(tiers)} rows; dims.n_tiers allows at most {dims.n_tiers}"
        )
    cols: dict[str, list] = {"floor": [], "max_leverage": [], "mmr": []}
    for i, row in enumerate(tiers):
        if not isinstance(row, (list, tuple)) or len(row) != 3:
            raise ConfigError(f"rules.tiers[{i}] must be [floor, max_leverage, mmr]")
        for (key, col), x in zip(cols.items(), row, strict=True):
            col.append(FIELDS[f"rules.tiers[].{key}"].check(x, f"rules.tiers[{i}].{key}"))
    floors, levs, mmrs = cols["floor"], cols["max_leverage"], cols["mmr"]
    check_tier_table(floors, levs, mmrs)
    pad = dims.n_tiers - len(tiers)
    # Padding tiers start at an unreachable notional and repeat the last row.
    floors += [_PAD_FLOOR * 10 * (k + 1) for k in range(pad)]
    levs += [levs[-1]] * pad
    mmrs += [mmrs[-1]] * pad
    return floors, levs, mmrs


def _index(idx, dims: Dims) -> tuple[list, list, list]:
    """Per index asset: weights over [venues..., internal, redemption], clip, price floor."""
    if not isinstance(idx, dict) or set(idx) != set(INDEX_KEYS):
        raise ConfigError(f"rules.index must have exactly the keys {list(INDEX_KEYS)}")
    weights, clips, floors = [], [], []
    for k in INDEX_KEYS:
        e = idx[k]
        f = f"rules.index.{k}"
        check_keys(e, f, _INDEX_KEYS_ALLOWED)
        ven = e.get("venues", [0.0] * dims.n_venues)
        if not isinstance(ven, list) or len(ven) != dims.n_venues:
            raise ConfigError(f"{f}.venues must list {dims.n_venues} weights (dims.n_venues)")
        row = FIELDS["rules.index.*.venues[]"]
        w = [row.check(x, f"{f}.venues[{i}]") for i, x in enumerate(ven)]
        w.append(FIELDS["rules.index.*.internal"].read(e, f))
        w.append(FIELDS["rules.index.*.redemption"].read(e, f))
        check_index_weights(w, f)
        weights.append(w)
        clips.append(FIELDS["rules.index.*.clip"].read(e, f))
        floors.append(FIELDS["rules.index.*.floor"].read(e, f))
    return weights, clips, floors


def _scalar_rules(r: dict) -> dict:
    """Every rule with a single table row, by ExchangeRules field (converted units)."""
    root = {"rules": r}
    dl = get_path(root, "rules.depth_limit")
    if not isinstance(dl, dict) or set(dl) != {"mult", "band", "floor"}:
        raise ConfigError("rules.depth_limit must be a mapping with keys ['band', 'floor', 'mult']")
    out = {}
    for row in SCALAR_RULE_ROWS:
        parent = row.path.rsplit(".", 1)[0]
        section = get_path(root, parent)
        name = row.target.split(".", 1)[1]
        if row.path == "rules.funding.cap" and section.get("cap") == "auto":
            # 0 = auto: computed from the tiers in force at each use (prices.funding_cap),
            # so a scheduled bracket change moves it.
            out[name] = 0.0
        else:
            v = row.read(section, parent)
            out[name] = float(v) if row.kind == "bool" else v
    return out


def build_rules(r: dict, dims: Dims) -> ExchangeRules:
    """The `rules:` section -> ExchangeRules (float64 numpy leaves)."""
    floors, levs, mmrs = _tiers(get_path({"rules": r}, "rules.tiers"), dims)
    weights, clips, floors_px = _index(get_path({"rules": r}, "rules.index"), dims)
    rules = dict(
        tier_floor=floors,
        tier_mmr=mmrs,
        tier_max_lev=levs,
        index_weights=weights,
        index_clip=clips,
        price_floor=floors_px,
        **_scalar_rules(r),
    )
    out = ExchangeRules(**{k: np.asarray(v, np.float64) for k, v in rules.items()})
    check_rules_consistent(out, "rules")
    return out


def rule_layout(rules: ExchangeRules) -> dict[str, tuple[int, tuple[int, ...]]]:
    """Field name -> (offset in the flattened rules, shape)."""
    flat, unravel = ravel_pytree(jax.tree_util.tree_map(jnp.asarray, rules))
    offsets = unravel(jnp.arange(flat.size, dtype=flat.dtype))
    out = {}
    for field in ExchangeRules.__dataclass_fields__:
        arr = np.asarray(getattr(offsets, field))
        out[field] = (int(arr.ravel()[0]) if arr.size else 0, tuple(arr.shape))
    return out


def check_rules_consistent(r: ExchangeRules, where: str) -> None:
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
