"""Rule sweeps: a grid of rule parameters x seeds run as one batched, sharded program.

    python -m jaxsim.tools.sweep configs/sweeps/NAME.yaml [--out DIR] [--seeds N] [--ticks T | --hours H]
                           [--chunk N] [--devices N] [--set key=value ...] [--x64]
                           [--cache DIR] [--no-plot] [--no-progress] [--replot]

A sweep file names a scenario (and optionally a variant), a horizon, the seeds and a grid:

```yaml
question: Which index weighting and floor stop the depeg cascade?
scenario: collateral_depeg
variant: null                    # optional
horizon_s: 10800                 # or `ticks: 360`; default: the scenario's horizon_s
seeds: 8                         # seeds per grid point (keys = split(PRNGKey(seed), seeds))
seed: 0
overrides: {rules.withdrawal_delay_s: 3600}   # optional, applied to every grid point
axes:                            # the grid is the product of the axes, in this order
  index_mix:                     # a paired axis: each value sets several keys at once
    - {_label: "internal 1.0", rules.index.stable.internal: 1.0, rules.index.stable.redemption: 0.0}
    - {_label: "redeem 0.8", rules.index.stable.internal: 0.2, rules.index.stable.redemption: 0.8}
  rules.index.stable.floor: [0.0, 0.9, 0.95]    # a plain axis: one dotted key, its values
heatmaps: [stable_low, liq_total, if_draw, dd_spot]   # optional (these are the default)
baseline: {index_mix: "internal 1.0", rules.index.stable.floor: 0.0}  # optional
```

Axis keys are the dotted override keys of `jaxsim.load_scenario` (any value a scenario file
may set, whole lists included, e.g. `rules.tiers` as a whole bracket table). Keys that fix
array shapes or the number of ticks (`dims.*`, `dt_s`, `horizon_s`) are refused as axes: a
batch shares its shapes (the fixed `overrides` may set `dims.*` and `dt_s`, which then hold
for every point). One convenience key, `max_leverage_cap: X`, rewrites the scenario as if
the exchange had always capped leverage at X (see `cap_leverage`).

Every grid point is validated and built into a `Params`; the points are stacked and
repeated over seeds into one batch (point-major: env = point * seeds + seed; every point
uses the same seed keys, so points differ only by their rules), padded to a multiple of the
device count, and run by ONE jitted, vmapped program — reset, the ticks, and the episode
metrics reduced on the fly inside the scan (no per-tick events leave the device) — sharded
over a 1-D mesh of `jax.devices()` (`NamedSharding` on the batch axis, `shard_map`: each
device runs the vmapped program on its slice). Large batches run in equal chunks of the
same compiled program. A tqdm progress bar is fed from inside the program (a host callback
every 2% of the ticks).

Reproducibility: a grid point's seed row uses the keys and metric definitions of
`python -m jaxsim.tools.simulate` for the same config and seed, and a run is deterministic for a
given device count and chunk size. Different programs (simulate's, or this one at another
per-device batch size or device count) fuse differently and so round float32 reductions
differently (~1e-7 relative); that stays invisible in a quiet market, but a liquidation
cascade amplifies it (single seeds' crash metrics can then differ by a few percent; seed
means much less). `--x64` narrows this to ~1e-14 (rare discrete flips remain, e.g. one
ADL count).

Writes ``DIR/sweep.csv`` (one row per grid point x seed), ``DIR/sweep_mean.csv`` (one row per
grid point, mean over seeds), ``DIR/sweep.npz`` (the raw arrays), ``DIR/sweep.json`` (config,
devices, timings) and ``DIR/heatmaps.png`` (crash severity over the first two axes, one
column of panels per combination of the further axes). DIR defaults to
``runs/sweep/<sweep file stem>``.
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import itertools
import json
import math
import sys
import textwrap
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import yaml
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxsim.config import ConfigError, build_params, scenario_config
from jaxsim.engine import no_orders, reset, step, tie_to_key
from jaxsim.tools.simulate import parse_overrides
from jaxsim.types import USDT, Params

Array = jax.Array

# ------------------------------------------------------------------ metrics

# Metrics reduced inside the jitted scan. Names and definitions follow
# `jaxsim.metrics.episode_metrics` (same names, same units; `lst_rate` from params).
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
# metric -> (panel title, format, higher is worse)
SEVERITY: dict[str, tuple[str, str, bool]] = {
    "stable_low": ("internal STABLE low (USDT)", "px", False),
    "stable_index_low": ("STABLE index low", "px", False),
    "lst_index_rel_low": ("LST index low / redemption", "px", False),
    "low_spot": ("spot low / start", "px", False),
    "liq_total": ("liquidated notional (USDT)", "usd", True),
    "liq_long": ("liquidated long (USDT)", "usd", True),
    "liq_peak_1h": ("max liquidations in 1 h (USDT)", "usd", True),
    "liq_accounts": ("accounts liquidated", "num", True),
    "if_draw": ("insurance fund draw (USDT)", "usd", True),
    "if_draw_frac": ("insurance fund draw / fund", "pct", True),
    "bad_debt": ("bad debt (USDT)", "usd", True),
    "adl_notional": ("ADL notional (USDT)", "usd", True),
    "dd_spot": ("spot max drawdown", "pct", True),
    "dd_perp": ("perp max drawdown", "pct", True),
    "dd_mark": ("mark max drawdown", "pct", True),
    "dd_index": ("index max drawdown", "pct", True),
    "basis_max_abs": ("max |basis|", "pct", True),
}
DEFAULT_HEATMAPS = ("stable_low", "liq_total", "if_draw", "dd_spot")
HOUR_S = 3600.0  # window of liq_peak_1h

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


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class _Acc:
    """Running reductions of the tick events of one env (all shape ())."""

    first_spot: Array
    last_spot: Array
    peaks: Array  # (5,) running max of spot, perp, ext, index, mark
    dds: Array  # (5,) running max drawdown of the same
    min_spot: Array
    liq_long: Array
    liq_short: Array
    liq_accounts: Array
    liq_peak_tick: Array
    liq_ring: Array  # (W,) last W ticks of liquidated notional (W = 1 h of ticks)
    liq_peak_1h: Array
    stable_low: Array
    stable_index_low: Array
    stable_ext_low: Array
    lst_rel_low: Array
    fund_min: Array
    fund_last: Array
    draw_pos: Array
    bad_debt: Array
    adl_count: Array
    adl_notional: Array
    basis_max_abs: Array
    mark_gap_max_abs: Array
    oi_start: Array
    oi_end: Array
    oi_peak: Array
    forced_reduce: Array
    collateral_sold_usdt: Array
    fees: Array


def _acc_init(dtype, window: int) -> _Acc:
    z = jnp.zeros((), dtype)
    inf = jnp.full((), jnp.inf, dtype)
    return _Acc(
        first_spot=z,
        last_spot=z,
        peaks=jnp.zeros((5,), dtype),
        dds=jnp.zeros((5,), dtype),
        min_spot=inf,
        liq_long=z,
        liq_short=z,
        liq_accounts=z,
        liq_peak_tick=z,
        liq_ring=jnp.zeros((window,), dtype),
        liq_peak_1h=z,
        stable_low=inf,
        stable_index_low=inf,
        stable_ext_low=inf,
        lst_rel_low=inf,
        fund_min=inf,
        fund_last=z,
        draw_pos=z,
        bad_debt=z,
        adl_count=z,
        adl_notional=z,
        basis_max_abs=z,
        mark_gap_max_abs=z,
        oi_start=z,
        oi_end=z,
        oi_peak=z,
        forced_reduce=z,
        collateral_sold_usdt=z,
        fees=z,
    )


def _acc_update(a: _Acc, ev, i: Array, lst_rate: Array) -> _Acc:
    """Fold one tick's `TickEvents` into the running reductions (tick index `i`)."""
    dtype = a.first_spot.dtype
    f = lambda x: jnp.asarray(x, dtype)
    prices = jnp.stack([ev.spot_px, ev.perp_px, ev.ext_px[0], ev.index_px[0], ev.mark_px])
    peaks = jnp.maximum(a.peaks, prices)
    dd = jnp.where(peaks > 0, 1.0 - prices / jnp.where(peaks > 0, peaks, 1.0), 0.0)
    liq = ev.liq_notional_long + ev.liq_notional_short
    w = a.liq_ring.shape[0]
    ring = a.liq_ring.at[i % w].set(liq)
    oi = 0.5 * (ev.oi_long + ev.oi_short)
    first = i == 0
    return _Acc(
        first_spot=jnp.where(first, ev.spot_px, a.first_spot),
        last_spot=ev.spot_px,
        peaks=peaks,
        dds=jnp.maximum(a.dds, dd),
        min_spot=jnp.minimum(a.min_spot, ev.spot_px),
        liq_long=a.liq_long + ev.liq_notional_long,
        liq_short=a.liq_short + ev.liq_notional_short,
        liq_accounts=a.liq_accounts + f(ev.liq_accounts),
        liq_peak_tick=jnp.maximum(a.liq_peak_tick, liq),
        liq_ring=ring,
        # Summing the ring every tick (not a running sum) keeps float32 drift out.
        liq_peak_1h=jnp.maximum(a.liq_peak_1h, ring.sum()),
        stable_low=jnp.minimum(a.stable_low, ev.collateral_px[0]),
        stable_index_low=jnp.minimum(a.stable_index_low, ev.collateral_index[0]),
        stable_ext_low=jnp.minimum(a.stable_ext_low, ev.ext_px[1]),
        lst_rel_low=jnp.minimum(
            a.lst_rel_low, ev.collateral_index[1] / ev.index_px[0] / lst_rate.astype(dtype)
        ),
        fund_min=jnp.minimum(a.fund_min, ev.insurance_fund),
        fund_last=ev.insurance_fund,
        draw_pos=a.draw_pos + jnp.maximum(ev.insurance_draw, 0.0),
        bad_debt=a.bad_debt + ev.bad_debt,
        adl_count=a.adl_count + f(ev.adl_count),
        adl_notional=a.adl_notional + ev.adl_notional,
        basis_max_abs=jnp.maximum(a.basis_max_abs, jnp.abs(ev.basis)),
        mark_gap_max_abs=jnp.maximum(a.mark_gap_max_abs, jnp.abs(ev.mark_index_gap)),
        oi_start=jnp.where(first, oi, a.oi_start),
        oi_end=oi,
        oi_peak=jnp.maximum(a.oi_peak, oi),
        forced_reduce=a.forced_reduce + ev.forced_reduce_notional,
        collateral_sold_usdt=a.collateral_sold_usdt + ev.collateral_sold_usdt,
        fees=a.fees + ev.fees,
    )


def _ratio(a: Array, b: Array) -> Array:
    return jnp.where(b != 0, a / jnp.where(b != 0, b, 1.0), jnp.nan)


def _acc_finish(a: _Acc, fund0: Array) -> dict[str, Array]:
    liq_total = a.liq_long + a.liq_short
    if_draw = fund0 - jnp.minimum(a.fund_min, fund0)
    out = {
        "dd_spot": a.dds[0],
        "dd_perp": a.dds[1],
        "dd_ext": a.dds[2],
        "dd_index": a.dds[3],
        "dd_mark": a.dds[4],
        "low_spot": _ratio(a.min_spot, a.first_spot),
        "ret_spot": _ratio(a.last_spot, a.first_spot) - 1.0,
        "liq_long": a.liq_long,
        "liq_short": a.liq_short,
        "liq_total": liq_total,
        "liq_long_frac": _ratio(a.liq_long, liq_total),
        "liq_accounts": a.liq_accounts,
        "liq_peak_tick": a.liq_peak_tick,
        "liq_peak_1h": a.liq_peak_1h,
        "stable_low": a.stable_low,
        "stable_index_low": a.stable_index_low,
        "stable_ext_low": a.stable_ext_low,
        "lst_index_rel_low": a.lst_rel_low,
        "if_initial": fund0,
        "if_final": a.fund_last,
        "if_draw": if_draw,
        "if_draw_frac": _ratio(if_draw, fund0),
        "if_draw_total": a.draw_pos,
        "bad_debt": a.bad_debt,
        "adl_count": a.adl_count,
        "adl_notional": a.adl_notional,
        "basis_max_abs": a.basis_max_abs,
        "mark_gap_max_abs": a.mark_gap_max_abs,
        "oi_start": a.oi_start,
        "oi_end": a.oi_end,
        "oi_peak": a.oi_peak,
        "oi_change": _ratio(a.oi_end, a.oi_start) - 1.0,
        "forced_reduce": a.forced_reduce,
        "collateral_sold_usdt": a.collateral_sold_usdt,
        "fees": a.fees,
    }
    assert tuple(out) == METRICS
    return out


def episode_reduce(
    key: Array, params: Params, n_ticks: int, window: int, progress=None
) -> dict[str, Array]:
    """Reset, run `n_ticks` ticks with no external orders and return the episode metrics.

    The same keys as `jaxsim.rollout(key, params, n_ticks)` (so the same market path as
    `jaxsim.tools.simulate` for that key), but the tick events are folded into running
    reductions inside the scan instead of being stacked. `window`: ticks in one hour (for
    ``liq_peak_1h``), a static int. `progress(i)`: optional host callback, called with the
    tick index every ``max(1, n_ticks // 50)`` ticks.
    """
    k_reset, k_run = jax.random.split(key)
    state = tie_to_key(reset(k_reset, params), k_run)  # one batching pass of the scan
    fund0 = state.acct.bal[params.dims.insurance, USDT]
    every = max(1, n_ticks // 50)

    def body(carry, xs):
        state, acc = carry
        k, i = xs
        _, k_step = jax.random.split(k)  # the policy's key in `rollout`
        state, ev = step(k_step, state, no_orders(params), params)
        acc = _acc_update(acc, ev, i, params.exo.lst_rate)
        if progress is not None:
            # `i` is not batched, so this stays a real branch under vmap.
            jax.lax.cond(
                (i + 1) % every == 0,
                lambda: jax.debug.callback(progress, i + 1),
                lambda: None,
            )
        return (state, acc), None

    keys = jax.random.split(k_run, n_ticks)
    acc0 = _acc_init(state.acct.bal.dtype, window)
    (_, acc), _ = jax.lax.scan(body, (state, acc0), (keys, jnp.arange(n_ticks)))
    return _acc_finish(acc, fund0)


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


def load_sweep(source: str | Path | Mapping) -> SweepSpec:
    """Parse and check a sweep file (or an already loaded mapping). Raises ConfigError."""
    if isinstance(source, Mapping):
        raw, name = dict(source), str(source.get("name", "sweep"))
    else:
        path = Path(source)
        if not path.exists():
            raise ConfigError(f"sweep file '{path}' does not exist")
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
        name = path.stem
    allowed = {
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
    bad = set(raw) - allowed
    if bad:
        raise ConfigError(f"unknown sweep key '{sorted(bad)[0]}'; allowed: {sorted(allowed)}")
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
    baseline = raw.get("baseline")
    if baseline is not None:
        if not isinstance(baseline, Mapping) or set(baseline) != {a.name for a in axes}:
            raise ConfigError("baseline must give a value label for every axis")
        baseline = {str(k): _fmt_value(v) for k, v in baseline.items()}
        for a in axes:
            if baseline[a.name] not in a.labels:
                raise ConfigError(
                    f"baseline.{a.name} = {baseline[a.name]!r} is not one of {a.labels}"
                )
    spec = SweepSpec(
        name=name,
        scenario=str(raw["scenario"]),
        variant=raw.get("variant"),
        n_ticks=ticks,
        horizon_s=float(raw["horizon_s"]) if raw.get("horizon_s") is not None else None,
        seeds=seeds,
        seed=int(raw.get("seed", 0)),
        overrides=fixed,
        axes=axes,
        heatmaps=heat,
        baseline=baseline,
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
    window = max(1, min(round(HOUR_S / dt), int(n_ticks)))
    return Grid(spec=spec, points=points, params=stacked, n_ticks=int(n_ticks), window=window)


# ------------------------------------------------------------------ running


@dataclasses.dataclass
class SweepResult:
    grid: Grid
    metrics: dict[str, np.ndarray]  # name -> (n_points, seeds)
    devices: list[str]
    compile_s: float
    run_s: float
    chunk: int
    n_chunks: int

    @property
    def env_steps_per_s(self) -> float:
        n = self.grid.spec.n_points * self.grid.spec.seeds * self.grid.n_ticks
        return n / self.run_s if self.run_s > 0 else float("nan")


def seed_keys(seeds: int, seed: int = 0) -> np.ndarray:
    """Per-seed keys, the same as `jaxsim.tools.simulate.seed_keys`."""
    return np.asarray(jax.random.split(jax.random.PRNGKey(seed), seeds))


class _Progress:
    """Thread-safe progress over (chunks x ticks), fed by the in-program callback."""

    def __init__(self, total: int, enabled: bool, desc: str):
        self.total, self.base, self.done = total, 0, 0
        self.enabled, self.desc = enabled, desc
        self.lock = threading.Lock()
        self.bar = None

    def start(self) -> None:
        """Show the bar (after compilation, so that it times the run only)."""
        if self.enabled:
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=self.total, desc=self.desc, unit="tick", leave=False)
            except ImportError:  # pragma: no cover - tqdm is optional
                self.bar = None

    def tick(self, i) -> None:
        # With several devices each shard calls back; keep the largest tick seen.
        with self.lock:
            n = self.base + int(np.max(np.asarray(i)))
            if n > self.done:
                if self.bar is not None:
                    self.bar.update(n - self.done)
                self.done = n

    def next_chunk(self, n_ticks: int) -> None:
        with self.lock:
            self.base += n_ticks
            if self.done < self.base:
                if self.bar is not None:
                    self.bar.update(self.base - self.done)
                self.done = self.base

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_sweep(
    grid: Grid,
    *,
    devices: int | Sequence | None = None,
    chunk: int | None = None,
    progress: bool = True,
    max_chunk_per_device: int = 1024,
) -> SweepResult:
    """Run the grid x seeds as one jitted, vmapped program sharded over devices.

    Args:
        grid: from `build_grid`.
        devices: the devices of the 1-D mesh: None = all of `jax.devices()`, an int = the
            first that many, or a list of devices.
        chunk: envs per call (rounded up to a multiple of the device count); default: the
            whole padded batch, at most `max_chunk_per_device` per device. Every chunk has
            the same shape, so the program compiles once.
        progress: show a progress bar (tqdm) fed from inside the program.
    """
    spec = grid.spec
    if devices is None:
        devs = jax.devices()
    elif isinstance(devices, int):
        all_devs = jax.devices()
        if not 1 <= devices <= len(all_devs):
            raise ValueError(f"devices must be in [1, {len(all_devs)}], got {devices}")
        devs = all_devs[:devices]
    else:
        devs = list(devices)
    n_dev = len(devs)
    n_env = spec.n_points * spec.seeds
    per_dev = math.ceil(n_env / n_dev)
    if chunk is None:
        chunk = n_dev * min(per_dev, max_chunk_per_device)
    else:
        chunk = n_dev * max(1, math.ceil(int(chunk) / n_dev))
    n_chunks = math.ceil(n_env / chunk)
    padded = n_chunks * chunk

    # env b -> grid point b // seeds, seed b % seeds; padding repeats the last env.
    env_idx = np.minimum(np.arange(padded), n_env - 1)
    point_of = env_idx // spec.seeds
    keys = seed_keys(spec.seeds, spec.seed)[env_idx % spec.seeds]

    mesh = Mesh(np.asarray(devs), ("batch",))
    shard = NamedSharding(mesh, P("batch"))
    bar = _Progress(n_chunks * grid.n_ticks, progress, f"sweep {spec.name}")

    def one(key, params):
        return episode_reduce(key, params, grid.n_ticks, grid.window, bar.tick)

    # shard_map: every device runs exactly the vmapped single-device program on its slice
    # (no SPMD partitioner rewriting the body), so a device's results depend only on its
    # slice and the per-device batch size, never on how many devices there are.
    # check_vma=False: the engine's scans start from constants (unvarying over the mesh)
    # and carry per-env values; every value here is per device anyway.
    body = jax.shard_map(
        jax.vmap(one),
        mesh=mesh,
        in_specs=(P("batch"), P("batch")),
        out_specs=P("batch"),
        check_vma=False,
    )
    fn = jax.jit(body, in_shardings=(shard, shard), out_shardings=shard)

    def chunk_args(c):
        sl = slice(c * chunk, (c + 1) * chunk)
        p = jax.tree_util.tree_map(lambda x: x[point_of[sl]], grid.params)
        return jax.device_put((keys[sl], p), shard)

    t0 = time.perf_counter()
    args = chunk_args(0)
    compiled = fn.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    outs = []
    bar.start()
    t0 = time.perf_counter()
    try:
        for c in range(n_chunks):
            if c:
                args = chunk_args(c)
            out = jax.block_until_ready(compiled(*args))
            outs.append(jax.device_get(out))
            bar.next_chunk(grid.n_ticks)
    finally:
        bar.close()
    run_s = time.perf_counter() - t0
    metrics = {}
    for k in METRICS:
        v = np.concatenate([np.asarray(o[k]) for o in outs])[:n_env]
        metrics[k] = v.reshape(spec.n_points, spec.seeds)
    return SweepResult(
        grid=grid,
        metrics=metrics,
        devices=[f"{d.platform}:{d.id} ({d.device_kind})" for d in devs],
        compile_s=compile_s,
        run_s=run_s,
        chunk=chunk,
        n_chunks=n_chunks,
    )


# ------------------------------------------------------------------ output


def _fmt(x: float, kind: str) -> str:
    if not math.isfinite(x):
        return "-"
    if kind == "pct":
        return f"{100 * x:.2f}%"
    if kind == "px":
        return f"{x:.4f}"
    if kind == "usd":
        a = abs(x)
        for div, suf in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
            if a >= div:
                return f"{x / div:.3g}{suf}"
        return f"{x:.3g}"
    return f"{x:.4g}"


def mean_over_seeds(result: SweepResult) -> dict[str, np.ndarray]:
    """name -> (n_points,) NaN-aware mean over seeds."""
    out = {}
    for k, v in result.metrics.items():
        v = np.asarray(v, np.float64)
        ok = np.isfinite(v)
        n = ok.sum(1)
        s = np.where(ok, v, 0.0).sum(1)
        out[k] = np.where(n > 0, s / np.maximum(n, 1), np.nan)
    return out


def baseline_point(grid: Grid) -> int | None:
    b = grid.spec.baseline
    if not b:
        return None
    idx = tuple(a.labels.index(b[a.name]) for a in grid.spec.axes)
    return grid.points.index(idx)


def write_csvs(result: SweepResult, out: Path) -> tuple[Path, Path]:
    """DIR/sweep.csv (point x seed rows) and DIR/sweep_mean.csv (point rows, seed means)."""
    grid, spec = result.grid, result.grid.spec
    names = [a.name for a in spec.axes]
    per = out / "sweep.csv"
    with open(per, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["point", *names, "seed", *METRICS])
        for p, idx in enumerate(grid.points):
            labels = [a.labels[i] for a, i in zip(spec.axes, idx, strict=True)]
            for s in range(spec.seeds):
                vals = [f"{float(result.metrics[k][p, s]):.9g}" for k in METRICS]
                w.writerow([p, *labels, s, *vals])
    mean = mean_over_seeds(result)
    mpath = out / "sweep_mean.csv"
    with open(mpath, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["point", *names, "seeds", *METRICS])
        for p, idx in enumerate(grid.points):
            labels = [a.labels[i] for a, i in zip(spec.axes, idx, strict=True)]
            w.writerow([p, *labels, spec.seeds, *(f"{float(mean[k][p]):.9g}" for k in METRICS)])
    return per, mpath


def table_rows(result: SweepResult) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the printed mean table (heatmap metrics, ratio to the baseline)."""
    grid, spec = result.grid, result.grid.spec
    mean = mean_over_seeds(result)
    base = baseline_point(grid)
    header = [a.name for a in spec.axes]
    for m in spec.heatmaps:
        header.append(m)
        if base is not None:
            header.append(f"{m}/base")
    rows = []
    for p, idx in enumerate(grid.points):
        row = [a.labels[i] for a, i in zip(spec.axes, idx, strict=True)]
        if base == p:
            row[0] += " (base)"
        for m in spec.heatmaps:
            kind = SEVERITY.get(m, ("", "num", True))[1]
            row.append(_fmt(float(mean[m][p]), kind))
            if base is not None:
                b = float(mean[m][base])
                row.append(f"{float(mean[m][p]) / b:.2f}" if b else "-")
        rows.append(row)
    return header, rows


def heatmaps(result: SweepResult, path: Path) -> None:
    """Mean crash severity over seeds: rows = metrics, columns = combinations of the axes
    after the first two; each panel is axis 0 (rows) x axis 1 (columns)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid, spec = result.grid, result.grid.spec
    mean = mean_over_seeds(result)
    shape = spec.shape
    ax0 = spec.axes[0]
    ax1 = spec.axes[1] if len(spec.axes) > 1 else Axis("", [""], [{}])
    rest = spec.axes[2:]
    facets = list(itertools.product(*(range(len(a)) for a in rest)))
    cube = {m: mean[m].reshape(shape) for m in spec.heatmaps}
    n_r, n_c = len(spec.heatmaps), len(facets)
    fig, axs = plt.subplots(
        n_r,
        n_c,
        figsize=(1.2 + max(3.2, 0.9 * len(ax1)) * n_c, 0.6 + max(2.6, 0.45 * len(ax0)) * n_r),
        squeeze=False,
    )
    for r, m in enumerate(spec.heatmaps):
        title, kind, worse_high = SEVERITY.get(m, (m, "num", True))
        vals = cube[m].reshape(len(ax0), len(ax1), -1)
        finite = vals[np.isfinite(vals)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        cmap = "Reds" if worse_high else "Reds_r"
        for c, fidx in enumerate(facets):
            ax = axs[r, c]
            z = vals[:, :, c]
            top = hi if hi > lo else lo + (abs(lo) or 1.0)  # a constant panel: palest colour
            im = ax.imshow(z, cmap=cmap, vmin=lo, vmax=top, aspect="auto")
            for i in range(z.shape[0]):
                for j in range(z.shape[1]):
                    frac = (z[i, j] - lo) / (hi - lo) if hi > lo else 0.0
                    dark = frac > 0.6 if worse_high else frac < 0.4
                    ax.text(
                        j,
                        i,
                        _fmt(float(z[i, j]), kind),
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="white" if dark else "black",
                    )
            ax.set_yticks(range(len(ax0)), ax0.labels, fontsize=8)
            ax.set_xticks(range(len(ax1)), ax1.labels, fontsize=8, rotation=20)
            ax.set_ylabel(ax0.name, fontsize=8)
            ax.set_xlabel(ax1.name, fontsize=8)
            sub = ", ".join(f"{a.name}={a.labels[i]}" for a, i in zip(rest, fidx, strict=True))
            ax.set_title(f"{title}" + (f"\n{sub}" if sub else ""), fontsize=9)
            if c == n_c - 1:
                fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    width_chars = int(fig.get_figwidth() * 11)  # ~11 characters per inch at fontsize 10
    head = textwrap.fill(spec.question or spec.name, max(width_chars, 30))
    fig.suptitle(
        f"{head}\n{spec.scenario}{'/' + spec.variant if spec.variant else ''}: mean of "
        f"{spec.seeds} seeds x {grid.n_ticks} ticks per cell",
        fontsize=10,
    )
    title_in = 0.2 * (head.count("\n") + 2) + 0.1  # inches the suptitle takes
    fig.tight_layout(rect=(0, 0, 1, 1 - title_in / fig.get_figheight()))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_outputs(result: SweepResult, out: Path, plot: bool = True) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    grid, spec = result.grid, result.grid.spec
    written = list(write_csvs(result, out))
    np.savez(
        out / "sweep.npz",
        **result.metrics,
        point_index=np.asarray(grid.points, np.int32).reshape(spec.n_points, len(spec.axes)),
    )
    written.append(out / "sweep.npz")
    meta = dict(
        name=spec.name,
        question=spec.question,
        scenario=spec.scenario,
        variant=spec.variant,
        n_ticks=grid.n_ticks,
        seeds=spec.seeds,
        seed=spec.seed,
        axes={a.name: a.labels for a in spec.axes},
        points=[grid.label(p) for p in range(spec.n_points)],
        devices=result.devices,
        chunk=result.chunk,
        n_chunks=result.n_chunks,
        compile_s=result.compile_s,
        run_s=result.run_s,
        env_steps_per_s=result.env_steps_per_s,
        config=spec.source,
    )
    with open(out / "sweep.json", "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1, default=str)
    written.append(out / "sweep.json")
    if plot:
        heatmaps(result, out / "heatmaps.png")
        written.append(out / "heatmaps.png")
    return written


def load_result(grid: Grid, out: Path) -> SweepResult:
    """A `SweepResult` from a finished run's DIR/sweep.npz and DIR/sweep.json."""
    spec = grid.spec
    data = np.load(out / "sweep.npz")
    with open(out / "sweep.json", encoding="utf-8") as f:
        meta = json.load(f)
    metrics = {k: np.asarray(data[k]) for k in METRICS}
    want = (spec.n_points, spec.seeds)
    if metrics[METRICS[0]].shape != want or meta.get("n_ticks") != grid.n_ticks:
        raise ValueError(
            f"it holds {metrics[METRICS[0]].shape} x {meta.get('n_ticks')} ticks, "
            f"this sweep is {want} x {grid.n_ticks} ticks"
        )
    return SweepResult(
        grid=grid,
        metrics=metrics,
        devices=list(meta.get("devices", [])),
        compile_s=float(meta.get("compile_s", float("nan"))),
        run_s=float(meta.get("run_s", float("nan"))),
        chunk=int(meta.get("chunk", 0)),
        n_chunks=int(meta.get("n_chunks", 0)),
    )


# ------------------------------------------------------------------ CLI


def _print_table(title: str, header: list[str], rows: list[list[str]], file=None) -> None:
    """A rich table as wide as its content (plain aligned text without rich)."""
    file = file or sys.stdout
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    try:
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table
    except ImportError:  # pragma: no cover - rich is optional
        print(title, file=file)
        for r in [header] + rows:
            print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)), file=file)
        return
    table = Table(title=escape(title), title_justify="left")
    for i, h in enumerate(header):
        table.add_column(escape(h), justify="left" if i == 0 else "right", no_wrap=True)
    for r in rows:
        table.add_row(*(escape(c) for c in r))
    width = max(sum(widths) + 3 * len(widths) + 1, 80)
    Console(file=file, width=width, soft_wrap=True).print(table)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m jaxsim.tools.sweep",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("config", help="sweep YAML (e.g. configs/sweeps/depeg_index_fix.yaml)")
    ap.add_argument("--out", default=None, help="output folder (default runs/sweep/<name>)")
    ap.add_argument("--seeds", type=int, default=None, help="override the file's seeds")
    ap.add_argument("--seed", type=int, default=None, help="override the file's first seed")
    hz = ap.add_mutually_exclusive_group()
    hz.add_argument("--ticks", type=int, default=None, help="override the horizon (ticks)")
    hz.add_argument("--hours", type=float, default=None, help="override the horizon (hours)")
    ap.add_argument("--chunk", type=int, default=None, help="envs per call (default: all)")
    ap.add_argument("--devices", type=int, default=None, help="use the first N devices")
    ap.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra fixed override for every grid point (dotted key, YAML value; repeatable)",
    )
    ap.add_argument(
        "--x64",
        action="store_true",
        help="run in float64 (audits: float32 rounding differences between programs, "
        "~1e-7, are amplified by liquidation cascades; float64 shrinks them to ~1e-14)",
    )
    ap.add_argument(
        "--cache",
        default=None,
        metavar="DIR",
        help="JAX persistent compilation cache folder (a rerun of the same sweep shape then "
        "skips the ~1 min compile)",
    )
    ap.add_argument("--no-plot", action="store_true", help="skip heatmaps.png")
    ap.add_argument(
        "--replot",
        action="store_true",
        help="do not run: reload DIR/sweep.npz and sweep.json, rewrite the table, CSVs and plots",
    )
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.x64:
        jax.config.update("jax_enable_x64", True)  # Params are then built in float64
    if args.cache:
        jax.config.update("jax_compilation_cache_dir", args.cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    try:
        spec = load_sweep(args.config)
        if args.seeds is not None:
            if args.seeds < 1:
                raise ConfigError("--seeds must be >= 1")
            spec.seeds = args.seeds
        if args.seed is not None:
            spec.seed = args.seed
        if args.sets:
            extra = _flatten(parse_overrides(args.sets))
            for k in extra:
                _check_fixed_key(k, "--set")
            spec.overrides.update(extra)
        if args.hours is not None:
            spec.n_ticks, spec.horizon_s = None, args.hours * 3600.0
        grid = build_grid(spec, args.ticks)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    devs = jax.devices()[: args.devices] if args.devices else jax.devices()
    print(
        f"sweep {spec.name}: {spec.scenario}{'/' + spec.variant if spec.variant else ''}, "
        f"{spec.n_points} grid points ({' x '.join(str(n) for n in spec.shape)}) x "
        f"{spec.seeds} seeds x {grid.n_ticks} ticks on {len(devs)} device(s) "
        f"[{devs[0].platform}: {devs[0].device_kind}]"
    )
    if spec.question:
        print(f"question: {spec.question}")
    out = Path(args.out) if args.out else Path("runs") / "sweep" / spec.name
    if args.replot:
        try:
            result = load_result(grid, out)
        except (OSError, KeyError, ValueError) as e:
            print(f"error: cannot reload {out}: {e}", file=sys.stderr)
            return 2
    else:
        result = run_sweep(grid, devices=len(devs), chunk=args.chunk, progress=not args.no_progress)
    header, rows = table_rows(result)
    _print_table(
        f"mean over {spec.seeds} seeds (compile {result.compile_s:.1f} s, run {result.run_s:.1f} s, "
        f"{result.env_steps_per_s:,.0f} env-steps/s, {result.n_chunks} chunk(s) of {result.chunk})",
        header,
        rows,
    )
    plot = not args.no_plot
    if plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("matplotlib is not installed: no heatmaps", file=sys.stderr)
            plot = False
    written = write_outputs(result, out, plot)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
