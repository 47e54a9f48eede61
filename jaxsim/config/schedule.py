"""`schedule:` rows -> `Schedule`: announced rule changes, one row per rule element.

A row's value is checked against the range of its rule field (`RULE_RANGES`, derived from
the field table in Params units); after every effective time the rules in force must
still pass `check_rules_consistent`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from jaxsim.config.fields import ConfigError
from jaxsim.config.rules import RULE_RANGES, build_rules, check_rules_consistent, rule_layout
from jaxsim.config.table import FIELDS
from jaxsim.types import POLICY_NAMES, Dims, ExchangeRules, Schedule

_ROW_KEYS = ("announce_s", "effective_s", "field", "value", "policy", "index")


def _effective_s(row: dict) -> float:
    """A row's effective time for ordering (bad values are reported by `_expand`)."""
    try:
        return float(row.get("effective_s", 0.0))
    except (TypeError, ValueError):
        return 0.0


def _tier_lev_writes(row: dict) -> dict[int, float]:
    """Tier max-leverage elements a `tier_max_lev` row writes."""
    value = row.get("value")
    try:
        if "index" in row:
            return {int(row["index"]): float(value)}
        if isinstance(value, list):
            return {j: float(x) for j, x in enumerate(value)}
    except (TypeError, ValueError):
        pass
    return {}  # malformed: `_expand` reports it


def expand_table_rows(rows: Any, rules: ExchangeRules, dims: Dims, rules_cfg: dict) -> list:
    """Rewrite the convenience fields into per-field rows.

    - `field: tiers, value: [[floor, max_leverage, mmr], ...]` replaces the whole bracket
      table (as `rules.tiers` in YAML; the other rules from `rules_cfg`);
    - `field: max_leverage_cap, value: X` caps the max leverage of every tier in force at
      its effective time (after the earlier rows) at X: one row per tier it lowers; the
      others and the maintenance rates stay, and a cap that lowers no tier adds no row
      (so a leverage cut phased in several steps fits dims.n_schedule).
    """
    if not isinstance(rows, list):
        raise ConfigError("schedule must be a list of rule changes")
    out: list = [None] * len(rows)
    lev_writes = []  # (effective_s, {tier: max leverage}) of the rows that set tiers
    caps = []
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
                new = build_rules({**rules_cfg, "tiers": tbl}, dims)
            except ConfigError as e:
                raise ConfigError(f"schedule[{i}] (field: tiers): {e}") from None
            out[i] = [
                {**base, "field": name, "value": [float(x) for x in getattr(new, name)]}
                for name in ("tier_floor", "tier_max_lev", "tier_mmr")
            ]
            lev_writes.append((_effective_s(row), dict(enumerate(out[i][1]["value"]))))
        elif field == "max_leverage_cap":
            cap = FIELDS["schedule[].max_leverage_cap"].check(
                row.get("value"), f"schedule[{i}].value"
            )
            caps.append((_effective_s(row), i, cap, base))
        else:
            out[i] = [row]
            if field == "tier_max_lev":
                lev_writes.append((_effective_s(row), _tier_lev_writes(row)))
    # Caps in time order, each against the tiers in force just before it (an earlier cap
    # included); rows at one effective time that write one tier differently are refused
    # later (`check_one_value_per_element`).
    base_levs = np.asarray(rules.tier_max_lev, float)
    for eff, i, cap, base in sorted(caps, key=lambda c: (c[0], c[1])):
        levs = base_levs.copy()
        for _, writes in sorted((w for w in lev_writes if w[0] < eff), key=lambda w: w[0]):
            for j, v in writes.items():
                if 0 <= j < levs.size:
                    levs[j] = v
        lowered = [int(j) for j in np.flatnonzero(levs > cap)]
        out[i] = [
            {**base, "field": "tier_max_lev", "index": j, "value": float(cap)} for j in lowered
        ]
        lev_writes.append((eff, {j: float(cap) for j in lowered}))
    return [r for rs in out for r in rs]


def _row_values(row: dict, f: str, field: str, off: int, shape: tuple) -> dict[int, float]:
    """Flat index -> value set by one row (a scalar, one element, or a list of elements)."""
    size = int(np.prod(shape)) if shape else 1
    value = row.get("value")
    rng = RULE_RANGES[field]
    val = FIELDS["schedule[].value"]
    if not shape:
        return {off: val.check(value, f"{f}.value", **rng)}
    if "index" in row:
        ix = FIELDS["schedule[].index"].check(row["index"], f"{f}.index", hi=size - 1)
        return {off + ix: val.check(value, f"{f}.value", **rng)}
    if not isinstance(value, list) or len(value) > size:
        raise ConfigError(f"{f}.value must be a list of at most {size} numbers for '{field}'")
    return {off + j: val.check(x, f"{f}.value[{j}]", **rng) for j, x in enumerate(value)}


def _expand(rows: list, layout: dict, dt: float) -> list[tuple]:
    """(announce tick, effective tick, flat index, value, policy) per rule element."""
    expanded = []
    for i, row in enumerate(rows):
        f = f"schedule[{i}]"
        if not isinstance(row, dict) or set(row) - set(_ROW_KEYS):
            raise ConfigError(f"{f} must be a mapping with keys {sorted(_ROW_KEYS)}")
        eff_row = FIELDS["schedule[].effective_s"]
        ann = FIELDS["schedule[].announce_s"].read(row, f, default=row.get("effective_s", 0.0))
        eff = eff_row.read(row, f)
        if eff < ann:
            raise ConfigError(f"{f}.effective_s ({eff}) must not be before announce_s ({ann})")
        field = row.get("field")
        if field not in layout:
            raise ConfigError(f"{f}.field '{field}' is not a rule; allowed: {list(layout)}")
        policy = FIELDS["schedule[].policy"].read(row, f)
        off, shape = layout[field]
        for j, v in _row_values(row, f, field, off, shape).items():
            expanded.append((round(ann / dt), round(eff / dt), j, v, POLICY_NAMES.index(policy)))
    return expanded


def check_one_value_per_element(expanded: list, layout: dict, dt: float) -> None:
    """Two rows setting one rule element at one effective time would leave which one wins
    unspecified."""
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


def check_rules_in_force(expanded: list, rules: ExchangeRules, dt: float) -> None:
    """The rules in force after every effective time must still be consistent."""
    flat, unravel = ravel_pytree(
        jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), rules)
    )
    flat = np.asarray(flat, np.float64).copy()
    for tick in sorted({row[1] for row in expanded}):
        for row in expanded:
            if row[1] == tick:
                flat[row[2]] = row[3]
        check_rules_consistent(unravel(jnp.asarray(flat)), f"schedule at effective_s={tick * dt:g}")


def build_schedule(
    rows: Any, rules: ExchangeRules, dims: Dims, dt: float, rules_cfg: dict
) -> Schedule:
    """Schedule rows -> `Schedule` padded to dims.n_schedule."""
    if not isinstance(rows, list):
        raise ConfigError("schedule must be a list of rule changes")
    layout = rule_layout(rules)
    expanded = _expand(expand_table_rows(rows, rules, dims, rules_cfg), layout, dt)
    if len(expanded) > dims.n_schedule:
        raise ConfigError(
            f"schedule expands to {len(expanded)} rows; dims.n_schedule allows {dims.n_schedule}"
        )
    check_one_value_per_element(expanded, layout, dt)
    check_rules_in_force(expanded, rules, dt)
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
