"""Sweep files: parsing and checking a sweep (`load_sweep`), the `max_leverage_cap` macro
(`cap_leverage`) and the grid of validated, stacked Params (`build_grid`).

See `jaxsim.tools.sweep` for the file format and the run.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import yaml

from jaxsim import metrics as mt
from jaxsim.config import ConfigError, build_params, scenario_config
from jaxsim.types import Params

# The metrics the sweep reduces inside its jitted scan and reports: definitions of
# `jaxsim.metrics.EPISODE_METRICS` (the same as `episode_metrics`; `lst_rate` from params).
METRICS = (
    "dd_spot",
    "dd_perp",
    "dd_ext",
    "dd_index",
    "dd_mark",
    "low_spot",
    "ret_spot",
    "liq_long",
    "liq_short",
    "liq_total",
    "liq_long_frac",
    "liq_accounts",
    "liq_peak_tick",
    "liq_peak_1h",
    "stable_low",
    "stable_index_low",
    "stable_ext_low",
    "lst_index_rel_low",
    "if_initial",
    "if_final",
    "if_draw",
    "if_draw_frac",
    "if_draw_total",
    "bad_debt",
    "adl_count",
    "adl_notional",
    "basis_max_abs",
    "mark_gap_max_abs",
    "oi_start",
    "oi_end",
    "oi_peak",
    "oi_change",
    "forced_reduce",
    "collateral_sold_usdt",
    "fees",
)
DEFAULT_HEATMAPS = ("stable_low", "liq_total", "if_draw", "dd_spot")

# First segments of config keys that cannot vary inside one batch.
STATIC_KEYS = {
    "dims": "dims.* fix array shapes",
    "dt_s": "dt_s changes the number of ticks of the horizon",
    "horizon_s": "the horizon is the sweep's own `horizon_s` / `ticks`",
    "name": "not a parameter",
    "description": "not a parameter",
    "variants": "pick a variant with the sweep's `variant:`",
    "extends": "not a parameter",
}
LABEL_KEY = "_label"


# ------------------------------------------------------------------ spec


@dataclasses.dataclass
class Axis:
    """One grid axis: a name, a label per value and the overrides each value applies."""

    name: str
    labels: list[str]
    overrides: list[dict[str, Any]]

    def __len__(self) -> int:
        return len(self.labels)


@dataclasses.dataclass
class SweepSpec:
    name: str
    scenario: str
    variant: str | None
    n_ticks: int | None  # None: from horizon_s or the scenario's horizon_s
    horizon_s: float | None
    seeds: int
    seed: int
    overrides: dict[str, Any]
    axes: list[Axis]
    heatmaps: tuple[str, ...] = DEFAULT_HEATMAPS
    baseline: dict[str, str] | None = None
    question: str = ""
    source: dict = dataclasses.field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(a) for a in self.axes)

    @property
    def n_points(self) -> int:
        return int(np.prod(self.shape)) if self.axes else 1


def _fmt_value(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return f"[{len(v)} rows]"
    return str(v)


def _check_key(key: str, where: str) -> None:
    head = str(key).split(".")[0]
    if head in STATIC_KEYS:
        raise ConfigError(
            f"{where}: '{key}' cannot be swept in one batch ({STATIC_KEYS[head]}); "
            "run one sweep per value instead"
        )


def _check_fixed_key(key: str, where: str) -> None:
    """Fixed overrides apply to every grid point alike, so they may set dims and dt_s."""
    head = str(key).split(".")[0]
    if head in STATIC_KEYS and head not in ("dims", "dt_s"):
        raise ConfigError(f"{where}: '{key}' cannot be overridden here ({STATIC_KEYS[head]})")


def _flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> dotted keys (leaves: anything that is not a mapping)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping) and k != "variants":
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out


def _parse_axis(name: str, values: Any) -> Axis:
    where = f"axes.{name}"
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{where} must be a non-empty list of values")
    labels, overrides = [], []
    for i, v in enumerate(values):
        if isinstance(v, Mapping):
            ov = {k: x for k, x in v.items() if k != LABEL_KEY}
            if not ov:
                raise ConfigError(f"{where}[{i}] sets no key")
            ov = _flatten(ov)
            label = v.get(LABEL_KEY) or ", ".join(
                f"{k.split('.')[-1]}={_fmt_value(x)}" for k, x in ov.items()
            )
        else:
            ov = {name: v}
            label = _fmt_value(v) if not isinstance(v, list) else f"#{i}"
        for k in ov:
            _check_key(k, f"{where}[{i}]")
        labels.append(str(label))
        overrides.append(ov)
    if len(set(labels)) != len(labels):
        raise ConfigError(f"{where}: values must have distinct labels (give `{LABEL_KEY}:`)")
    return Axis(name=str(name), labels=labels, overrides=overrides)


_SWEEP_KEYS = {
    "name",
    "question",
    "scenario",
    "variant",
    "horizon_s",
    "ticks",
    "seeds",
    "seed",
    "overrides",
    "axes",
    "heatmaps",
    "baseline",
}


def _read_source(source: str | Path | Mapping) -> tuple[dict, str]:
    """(the sweep mapping, its name: the file stem, or the mapping's `name`)."""
    if isinstance(source, Mapping):
        return dict(source), str(source.get("name", "sweep"))
    path = Path(source)
    if not path.exists():
        raise ConfigError(f"sweep file '{path}' does not exist")
    with open(path, encoding="utf-8") as f:
        raw = yaml.safe_load(f) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return raw, path.stem


def _check_top_level(raw: Mapping) -> None:
    """Keys, scenario, horizon, seeds and ticks of a sweep mapping."""
    bad = set(raw) - _SWEEP_KEYS
    if bad:
        raise ConfigError(f"unknown sweep key '{sorted(bad)[0]}'; allowed: {sorted(_SWEEP_KEYS)}")
    if "scenario" not in raw:
        raise ConfigError("a sweep needs `scenario:`")
    if "horizon_s" in raw and "ticks" in raw:
        raise ConfigError("give `horizon_s` or `ticks`, not both")
    seeds = raw.get("seeds", 4)
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ConfigError(f"seeds must be an integer >= 1, got {seeds!r}")
    ticks = raw.get("ticks")
    if ticks is not None and (not isinstance(ticks, int) or isinstance(ticks, bool) or ticks < 1):
        raise ConfigError(f"ticks must be an integer >= 1, got {ticks!r}")


def _parse_baseline(baseline: Any, axes: list[Axis]) -> dict[str, str] | None:
    if baseline is None:
        return None
    if not isinstance(baseline, Mapping) or set(baseline) != {a.name for a in axes}:
        raise ConfigError("baseline must give a value label for every axis")
    baseline = {str(k): _fmt_value(v) for k, v in baseline.items()}
    for a in axes:
        if baseline[a.name] not in a.labels:
            raise ConfigError(f"baseline.{a.name} = {baseline[a.name]!r} is not one of {a.labels}")
    return baseline


def load_sweep(source: str | Path | Mapping) -> SweepSpec:
    """Parse and check a sweep file (or an already loaded mapping). Raises ConfigError."""
    raw, name = _read_source(source)
    _check_top_level(raw)
    fixed = raw.get("overrides") or {}
    if not isinstance(fixed, Mapping):
        raise ConfigError("overrides must be a mapping of dotted keys to values")
    fixed = _flatten(fixed)
    for k in fixed:
        _check_fixed_key(k, "overrides")
    axes_raw = raw.get("axes")
    if not isinstance(axes_raw, Mapping) or not axes_raw:
        raise ConfigError("a sweep needs `axes:` (a mapping of axis name to a list of values)")
    axes = [_parse_axis(k, v) for k, v in axes_raw.items()]
    heat = tuple(raw.get("heatmaps") or DEFAULT_HEATMAPS)
    for m in heat:
        if m not in METRICS:
            raise ConfigError(f"heatmaps: unknown metric '{m}'; allowed: {list(METRICS)}")
    spec = SweepSpec(
        name=name,
        scenario=str(raw["scenario"]),
        variant=raw.get("variant"),
        n_ticks=raw.get("ticks"),
        horizon_s=float(raw["horizon_s"]) if raw.get("horizon_s") is not None else None,
        seeds=raw.get("seeds", 4),
        seed=int(raw.get("seed", 0)),
        overrides=fixed,
        axes=axes,
        heatmaps=heat,
        baseline=_parse_baseline(raw.get("baseline"), axes),
        question=str(raw.get("question", "")),
        source=copy.deepcopy(raw),
    )
    # Every axis value must name keys the scenario has (cheap: no Params built).
    for a in spec.axes:
        for i, ov in enumerate(a.overrides):
            ov = {k: v for k, v in ov.items() if k not in MACROS}
            try:
                scenario_config(spec.scenario, spec.variant, {**spec.overrides, **ov})
            except ConfigError as e:
                raise ConfigError(f"axes.{a.name}[{i}] ({a.labels[i]}): {e}") from None
    return spec


# ------------------------------------------------------------------ macros

CAP_HEADROOM = 0.95  # capped accounts are sized at 95% of the cap (as leverage_cap_10x)


def cap_leverage(cfg: Mapping, cap: float) -> dict[str, Any]:
    """Overrides that rewrite a merged scenario config as if max leverage were always `cap`.

    - every bracket's max leverage is capped at `cap` (`rules.tiers`, like the schedule's
      `max_leverage_cap`);
    - every user's leverage setting is capped at `cap`;
    - a user whose initial effective leverage (|position| x entry / equity at the start
      prices, no haircuts) exceeds ``CAP_HEADROOM * cap`` has the position scaled down to
      exactly that (same equity, smaller position: the `leverage_cap_10x` variant of
      leverage_accident, which sizes its 10x cohorts at 9.5x);
    - every background cohort's `lev_target` is capped at `cap`.

    A cap at or above the scenario's own leverage leaves it unchanged.
    """
    if isinstance(cap, bool) or not isinstance(cap, (int, float)) or not 1.0 <= cap <= 1000.0:
        raise ConfigError(f"max_leverage_cap = {cap!r} is outside the allowed range [1, 1000]")
    cap = float(cap)
    rules = cfg["rules"]
    tiers = [[row[0], min(float(row[1]), cap), row[2]] for row in rules["tiers"]]
    p0 = cfg["exogenous"]["price0"]
    px = {"usdt": 1.0, "base": p0["base"], "stable": p0["stable"], "lst": p0["lst"]}
    users = []
    for u in copy.deepcopy(cfg["accounts"].get("users") or []):
        u["leverage"] = min(float(u.get("leverage", 10.0)), cap)
        pos = float(u.get("position", 0.0))
        if pos:
            equity = sum(float(u.get(k, 0.0)) * p for k, p in px.items())
            equity -= sum(float(v) * px[k] for k, v in (u.get("debt") or {}).items())
            notional = abs(pos) * float(u.get("entry", p0["base"]))
            limit = CAP_HEADROOM * cap * max(equity, 0.0)
            if notional > limit:
                u["position"] = pos * limit / notional
        users.append(u)
    cohorts = []
    for c in copy.deepcopy((cfg.get("population") or {}).get("cohorts") or []):
        if "lev_target" in c:
            c["lev_target"] = min(float(c["lev_target"]), cap)
        cohorts.append(c)
    return {"rules.tiers": tiers, "accounts.users": users, "population.cohorts": cohorts}


MACROS = {"max_leverage_cap": cap_leverage}


# ------------------------------------------------------------------ grid


@dataclasses.dataclass
class Grid:
    spec: SweepSpec
    points: list[tuple[int, ...]]  # axis indices of each point, row-major over the axes
    params: Params  # stacked over points (leading axis = point)
    n_ticks: int
    window: int

    def label(self, p: int) -> str:
        return ", ".join(
            f"{a.name}={a.labels[i]}" for a, i in zip(self.spec.axes, self.points[p], strict=True)
        )


def point_overrides(spec: SweepSpec, idx: Sequence[int]) -> dict[str, Any]:
    """The dotted overrides of one grid point (fixed overrides, then each axis in order;
    macros expanded last, from the config the other overrides give)."""
    ov = dict(spec.overrides)
    for a, i in zip(spec.axes, idx, strict=True):
        ov.update(a.overrides[i])
    macros = {k: ov.pop(k) for k in list(ov) if k in MACROS}
    for k, v in macros.items():
        cfg = scenario_config(spec.scenario, spec.variant, ov)
        ov.update(MACROS[k](cfg, v))
    return ov


def _leaf_signature(params: Params):
    leaves, treedef = jax.tree_util.tree_flatten(params)
    return treedef, [(np.shape(x), np.asarray(x).dtype) for x in leaves]


def build_grid(spec: SweepSpec, n_ticks: int | None = None) -> Grid:
    """Validate and build every grid point's Params and stack them (leading axis = point)."""
    points = list(itertools.product(*(range(len(a)) for a in spec.axes)))
    plist, sig0, cfg0 = [], None, None
    for p in points:
        label = ", ".join(f"{a.name}={a.labels[i]}" for a, i in zip(spec.axes, p, strict=True))
        try:
            cfg = scenario_config(spec.scenario, spec.variant, point_overrides(spec, p))
            params = build_params(cfg)
        except ConfigError as e:
            raise ConfigError(f"grid point ({label}): {e}") from None
        sig = _leaf_signature(params)
        if sig0 is None:
            sig0, cfg0 = sig, cfg
        elif sig != sig0 or params.dims != plist[0].dims:
            raise ConfigError(
                f"grid point ({label}) changes static shapes or dims "
                f"({params.dims} vs {plist[0].dims}); a sweep batch must share its shapes"
            )
        plist.append(jax.tree_util.tree_map(np.asarray, params))
    dt = float(plist[0].dt)
    if n_ticks is None:
        n_ticks = spec.n_ticks
    if n_ticks is None:
        horizon = spec.horizon_s if spec.horizon_s is not None else cfg0.get("horizon_s")
        if horizon is None:
            raise ConfigError(
                f"scenario '{spec.scenario}' has no horizon_s: give the sweep `horizon_s` or `ticks`"
            )
        n_ticks = max(1, round(float(horizon) / dt))
    stacked = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *plist)
    window = max(1, min(round(mt.LIQ_WINDOW_S / dt), int(n_ticks)))
    return Grid(spec=spec, points=points, params=stacked, n_ticks=int(n_ticks), window=window)
