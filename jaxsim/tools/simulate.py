"""Run a scenario batched over seeds: summary table, tick-event CSV, per-seed metrics, dashboard.

    python -m jaxsim.tools.simulate --scenario NAME [--variant V] [--seeds N] [--ticks T | --hours H]
                              [--out DIR] [--set key=value ...] [--plot-seed K]

Writes ``DIR/events.csv`` (one row per seed x tick, one column per scalar event field; vector
fields are expanded, e.g. ``index_px_base``, ``depth_1pct_perp_bid``,
``collateral_px_stable``), ``DIR/summary.csv`` (one row per seed, the metrics of
`jaxsim.metrics`, plus ``program<row>_traded``: what each scripted program traded) and
``DIR/dashboard.png``. DIR defaults to ``runs/simulate/<scenario>[__<variant>]``. A second
table compares each scripted program's traded quantity with its schedule, with a warning on
stderr where a seed traded less than 99% of it.

Horizon: ``--ticks`` or ``--hours``; otherwise the scenario's top-level ``horizon_s`` if it
has one, else 2000 ticks.

Python API (no CLI): `simulate`, `run_metrics`, `run_batch`, `load`, `horizon_ticks`,
`write_events_csv`, `write_summary_csv`, `dashboard`, `summary_table`, `program_delivery`,
`delivery_table`.
"""

from __future__ import annotations

import argparse
import csv
import functools
import math
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import yaml

from jaxsim import metrics as mt
from jaxsim.config import ConfigError, build_params, list_scenarios, list_variants, scenario_config
from jaxsim.engine import audit, reset, rollout
from jaxsim.types import MARKET_NAMES, N_MARKETS, REASON_NAMES, Params

DEFAULT_TICKS = 2000
LEDGER_ASSETS = ("usdt", "base", "stable", "lst")

# Names of the axes of the vector event fields (columns `<field>_<name>[_<name>]`).
_INDEX = ("base", "stable", "lst")
_MKT = ("spot", "perp", "stable", "lst")
_ASSET = ("usdt", "base", "stable", "lst")
_COLL = ("stable", "lst")
FIELD_AXES: dict[str, tuple[tuple[str, ...], ...]] = {
    "ext_px": (_INDEX,),
    "index_px": (_INDEX,),
    "depth_1pct": (_MKT, ("bid", "ask")),
    "best_bid": (_MKT,),
    "best_ask": (_MKT,),
    "volume": (_MKT,),
    "bg_volume": (_MKT,),
    "collateral_sold": (_ASSET,),
    "collateral_px": (_COLL,),
    "collateral_index": (_COLL,),
    "rejects": (REASON_NAMES,),
}
# Column prefix where `<field>_<name>` would collide with another field's column.
FIELD_PREFIX = {"collateral_sold": "collateral_sold_qty"}  # vs the scalar collateral_sold_usdt
assert len(_MKT) == N_MARKETS == len(MARKET_NAMES)


# ------------------------------------------------------------------ loading


def parse_overrides(items: list[str] | None) -> dict:
    """``["rules.fees.taker=0.0004", "exogenous.shocks=[]"]`` -> dotted-key dict (YAML values)."""
    out = {}
    for item in items or []:
        key, sep, val = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value (dotted key), got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(val)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {key}: value {val!r} is not valid YAML ({e})") from None
    return out


def load(
    scenario, variant: str | None = None, overrides: Mapping | None = None
) -> tuple[dict, Params]:
    """(merged config dict, validated Params). Raises ConfigError with the allowed choices."""
    cfg = scenario_config(scenario, variant, dict(overrides) if overrides else None)
    return cfg, build_params(cfg)


def horizon_ticks(
    cfg: Mapping, params: Params, n_ticks: int | None = None, hours: float | None = None
) -> int:
    """Ticks to run: `n_ticks`, else `hours`, else the config's `horizon_s`, else 2000."""
    dt = float(params.dt)
    if n_ticks is not None:
        n = int(n_ticks)
    elif hours is not None:
        n = round(float(hours) * 3600.0 / dt)
    elif cfg.get("horizon_s") is not None:
        n = round(float(cfg["horizon_s"]) / dt)
    else:
        n = DEFAULT_TICKS
    if n < 1:
        raise ConfigError(f"the horizon must be at least one tick (dt = {dt:g} s), got {n}")
    return n


# ------------------------------------------------------------------ running


@functools.partial(jax.jit, static_argnames=("n_ticks", "policy"))
def _batch(keys, params: Params, n_ticks: int, policy: Callable | None = None):
    def one(key):
        s0 = reset(key, params)
        s1, ev = rollout(key, params, n_ticks, policy=policy, state=s0)
        return audit(s0, params), audit(s1, params), ev

    return jax.vmap(one)(keys)


def seed_keys(seeds: int, seed: int = 0):
    """The per-seed keys: ``jax.random.split(PRNGKey(seed), seeds)``."""
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    return jax.random.split(jax.random.PRNGKey(seed), seeds)


def run_batch(
    params: Params, n_ticks: int, seeds: int = 16, seed: int = 0, policy: Callable | None = None
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """One jitted, vmapped rollout over `seeds` keys.

    Returns (events, audit0, audit1): events = {TickEvents field: array (seeds, n_ticks, ...)};
    audit0 / audit1 = `jaxsim.audit` of the initial / final states, arrays (seeds, ...).
    `policy(key, state, params) -> Orders` must be hashable (a module-level function).
    """
    a0, a1, ev = jax.block_until_ready(_batch(seed_keys(seeds, seed), params, int(n_ticks), policy))
    ev, a0, a1 = jax.device_get((ev, a0, a1))
    return mt.as_dict(ev), mt.as_dict(a0), mt.as_dict(a1)


def simulate(
    scenario,
    variant: str | None = None,
    seeds: int = 16,
    n_ticks: int | None = None,
    overrides: Mapping | None = None,
    seed: int = 0,
    *,
    hours: float | None = None,
    policy: Callable | None = None,
) -> tuple[Params, dict[str, np.ndarray]]:
    """Run `scenario` (name or YAML path) over `seeds` seeds; (params, events as NumPy dict).

    Horizon: n_ticks, else hours, else the scenario's `horizon_s`, else 2000 ticks.
    Events have shape (seeds, n_ticks, ...) per TickEvents field.
    """
    cfg, params = load(scenario, variant, overrides)
    n = horizon_ticks(cfg, params, n_ticks, hours)
    ev, _, _ = run_batch(params, n, seeds, seed, policy)
    return params, ev


def lst_rate(params: Params) -> float:
    return float(params.exo.lst_rate)


def run_metrics(
    scenario,
    variant: str | None = None,
    seeds: int = 16,
    n_ticks: int | None = None,
    overrides: Mapping | None = None,
    seed: int = 0,
    *,
    hours: float | None = None,
    policy: Callable | None = None,
    **metric_kw,
) -> tuple[Params, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """`simulate` + `jaxsim.metrics.episode_metrics`: (params, events, metrics per seed)."""
    params, ev = simulate(
        scenario, variant, seeds, n_ticks, overrides, seed, hours=hours, policy=policy
    )
    metric_kw.setdefault("lst_rate", lst_rate(params))
    return params, ev, mt.episode_metrics(ev, **metric_kw)


def ledger_drift(audit0: Mapping, audit1: Mapping) -> dict[str, np.ndarray]:
    """Per seed, |total_1 - total_0| / |total_0| of each asset's ledger total."""
    out = {}
    for k in LEDGER_ASSETS:
        x0, x1 = np.asarray(audit0[k], np.float64), np.asarray(audit1[k], np.float64)
        out[f"ledger_{k}"] = np.abs(x1 - x0) / np.maximum(np.abs(x0), 1e-30)
    return out


# ------------------------------------------------------------------ CSV


def event_columns(events: Mapping[str, np.ndarray]) -> tuple[list[str], list[np.ndarray]]:
    """Column names and (seeds, ticks) arrays, one per scalar event (vector fields expanded)."""
    names, cols = [], []
    for field, arr in events.items():
        arr = np.asarray(arr)
        inner = arr.shape[2:]
        if not inner:
            names.append(field)
            cols.append(arr)
            continue
        axes = FIELD_AXES.get(field)
        if axes is None or tuple(len(a) for a in axes) != inner:
            axes = tuple(tuple(str(i) for i in range(n)) for n in inner)
        for idx in np.ndindex(*inner):
            prefix = FIELD_PREFIX.get(field, field)
            names.append("_".join([prefix] + [axes[d][i] for d, i in enumerate(idx)]))
            cols.append(arr[(slice(None), slice(None)) + idx])
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"event columns are not unique: {dup}; extend FIELD_PREFIX")
    return names, cols


def write_events_csv(path, events: Mapping[str, np.ndarray], stride: int = 1) -> int:
    """``seed, <event columns>`` for every seed x tick (every `stride`-th tick). Returns rows."""
    names, cols = event_columns(events)
    n_seeds, n_ticks = np.shape(cols[0])[:2]
    ticks = np.arange(0, n_ticks, max(int(stride), 1))
    seed_col = np.repeat(np.arange(n_seeds), len(ticks))
    data = np.column_stack(
        [seed_col] + [np.asarray(c, np.float64)[:, ticks].reshape(-1) for c in cols]
    )
    ints = [True] + [np.asarray(c).dtype.kind in "biu" for c in cols]
    fmt = ["%d" if i else "%.9g" for i in ints]
    np.savetxt(path, data, fmt=fmt, delimiter=",", header=",".join(["seed"] + names), comments="")
    return data.shape[0]


def write_summary_csv(path, per_seed: Mapping[str, np.ndarray]) -> None:
    """One row per seed: ``seed, <metric>...``."""
    keys = list(per_seed)
    n = int(np.size(per_seed[keys[0]])) if keys else 0
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["seed"] + keys)
        for i in range(n):
            w.writerow([i] + [f"{float(np.ravel(per_seed[k])[i]):.9g}" for k in keys])


# ------------------------------------------------------------------ scripted flows

# A program counts as delivered when it traded at least this share of its scheduled quantity.
DELIVERED_SHARE = 0.99


def program_delivery(
    cfg: Mapping, params: Params, events: Mapping[str, np.ndarray]
) -> list[dict[str, Any]]:
    """What each scripted program (`population.programs` row) traded against its schedule.

    Each tick a program sends one market order, its slice of the schedule. The order trades
    what the book holds within the price band, if the account can pay for it or margin it;
    the remainder is not carried to the next tick. One dict per program row:
    ``row, account, market, side, scheduled`` (base units due within the horizon run) and
    ``delivered`` (base units traded, one value per seed).
    """
    pp = params.pop
    filled = np.asarray(events["prog_filled"], np.float64)  # (seeds, ticks, P)
    n_ticks = filled.shape[1]
    users = (cfg.get("accounts") or {}).get("users") or []
    names = [u.get("name", str(i)) if isinstance(u, dict) else str(i) for i, u in enumerate(users)]
    out = []
    for i in np.flatnonzero(np.asarray(pp.prog_active)):
        start = int(pp.prog_start[i])
        end = min(int(pp.prog_end[i]), n_ticks)
        a = int(pp.prog_account[i])
        out.append(
            {
                "row": int(i),
                "account": names[a] if a < len(names) else str(a),
                "market": MARKET_NAMES[int(pp.prog_market[i])],
                "side": "buy" if float(pp.prog_side[i]) > 0 else "sell",
                "scheduled": float(pp.prog_qty[i]) * max(end - start, 0),
                "delivered": filled[:, :, i].sum(1),
                "limit_pct": 100.0 * float(pp.prog_limit[i]),
                "carry": bool(pp.prog_carry[i]),
            }
        )
    return out


def delivery_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and rows (program, scheduled, delivered mean [min, max], share of schedule)."""
    body = []
    for r in rows:
        d, q = r["delivered"], r["scheduled"]
        share = float(np.mean(d)) / q if q > 0 else float("nan")
        body.append(
            [
                f"{r['account']} {r['side']} {r['market']}",
                f"{q:.4g}",
                f"{np.mean(d):.4g} [{np.min(d):.4g}, {np.max(d):.4g}]",
                _fmt(share, "pct"),
            ]
        )
    return ["scripted flow", "scheduled", "traded: mean [min, max]", "share"], body


# ------------------------------------------------------------------ summary table


def _fmt(x: float, kind: str) -> str:
    if not math.isfinite(x):
        return "-"
    if kind == "pct":
        return f"{100 * x:.2f}%"
    if kind == "bp":
        return f"{1e4 * x:.1f}bp"
    if kind == "f3":
        return f"{x:+.3f}"
    if kind == "px":
        return f"{x:.4f}"
    if kind == "int":
        return f"{x:.0f}" if float(x).is_integer() else f"{x:.1f}"
    if kind == "usd":
        a = abs(x)
        for div, suf in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
            if a >= div:
                return f"{x / div:.3g}{suf}"
        return f"{x:.3g}"
    return f"{x:.4g}"


# (label, metric, format); funding rows are converted to % per 8 h by `summary_table`.
TABLE_ROWS = (
    ("spot max drawdown", "dd_spot", "pct"),
    ("perp max drawdown", "dd_perp", "pct"),
    ("external BASE max drawdown", "dd_ext", "pct"),
    ("liquidated long (USDT)", "liq_long", "usd"),
    ("liquidated short (USDT)", "liq_short", "usd"),
    ("long share of liquidations", "liq_long_frac", "pct"),
    ("accounts liquidated", "liq_accounts", "int"),
    ("max liquidations in 1 h (USDT)", "liq_peak_1h", "usd"),
    ("STABLE low, internal (USDT)", "stable_low", "px"),
    ("STABLE index low", "stable_index_low", "px"),
    ("LST index low / redemption", "lst_index_rel_low", "px"),
    ("insurance fund draw (USDT)", "if_draw", "usd"),
    ("bad debt (USDT)", "bad_debt", "usd"),
    ("ADL count", "adl_count", "int"),
    ("ADL notional (USDT)", "adl_notional", "usd"),
    ("max |basis|", "basis_max_abs", "bp"),
    ("min basis", "basis_min", "bp"),
    ("funding mean (per 8 h)", "funding_mean", "pct8h"),
    ("funding min (per 8 h)", "funding_min", "pct8h"),
    ("funding max (per 8 h)", "funding_max", "pct8h"),
    ("OI end vs start", "oi_change", "pct"),
    ("OI end vs peak", "oi_from_peak", "pct"),
    ("forced-reduce notional (USDT)", "forced_reduce", "usd"),
    ("collateral sold by engine (USDT)", "collateral_sold_usdt", "usd"),
    ("excess kurtosis, 1-tick returns", "kurt_1tick", "num"),
    ("excess kurtosis, 5-min returns", "kurt_agg", "num"),
    ("acf(returns), lag 1", "acf_ret_1", "f3"),
    ("acf(|returns|), mean lags 1-10", "acf_absret_mean", "f3"),
    ("ticks with no spot trade", "frac_zero_ret", "pct"),
    ("ticks with spot last at its grid's edge", "edge_spot", "pct"),
    ("ticks with perp last at its grid's edge", "edge_perp", "pct"),
    ("ticks with STABLE last at its grid's edge", "edge_stable", "pct"),
    ("ticks with LST last at its grid's edge", "edge_lst", "pct"),
    ("venues moved by the flow here, low", "venue_impact_low", "pct"),
)


def summary_table(
    per_seed: Mapping[str, np.ndarray], params: Params
) -> tuple[list[str], list[list[str]]]:
    """Header and rows (label, mean, min, max) of the printed table."""
    to_8h = 8 * 3600.0 / float(params.rules.funding_interval_s)
    s = mt.summarize(per_seed)
    rows = []
    for label, key, kind in TABLE_ROWS:
        if key not in s:
            continue
        vals = [s[key][c] for c in ("mean", "min", "max")]
        if kind == "pct8h":
            cells = ["-" if not math.isfinite(v) else f"{100 * to_8h * v:.4f}%" for v in vals]
        else:
            cells = [_fmt(v, kind) for v in vals]
        rows.append([label] + cells)
    return ["metric", "mean", "min", "max"], rows


def print_table(title: str, header: list[str], rows: list[list[str]], file=None) -> None:
    """A rich table when rich is installed, else plain aligned text."""
    file = file or sys.stdout
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # pragma: no cover - rich is optional
        widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
        print(title, file=file)
        line = lambda r: "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        print(line(header), file=file)
        print("  ".join("-" * w for w in widths), file=file)
        for r in rows:
            print(line(r), file=file)
        return
    from rich.markup import escape

    table = Table(title=escape(title), title_justify="left")
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i == 0 else "right", no_wrap=True)
    for r in rows:
        table.add_row(*(escape(c) for c in r))
    Console(file=file, width=max(100, len(title) + 4), soft_wrap=True).print(table)


# ------------------------------------------------------------------ dashboard


def _bin(x: np.ndarray, k: int) -> np.ndarray:
    n = len(x) // k * k
    head = x[:n].reshape(-1, k).sum(1)
    return np.concatenate([head, [x[n:].sum()]]) if n < len(x) else head


def dashboard(
    path,
    events: Mapping[str, np.ndarray],
    params: Params,
    per_seed: Mapping[str, np.ndarray] | None = None,
    plot_seed: int = 0,
    title: str | None = None,
    max_faint: int = 15,
) -> None:
    """Eight-panel PNG over time (hours) for `plot_seed`, other seeds faint where useful."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ev = {k: np.asarray(v) for k, v in events.items()}
    n_seeds = ev["spot_px"].shape[0]
    if not 0 <= plot_seed < n_seeds:
        raise ValueError(f"plot_seed {plot_seed} not in [0, {n_seeds})")
    per_seed = per_seed or mt.episode_metrics(ev, lst_rate=lst_rate(params))
    s = plot_seed
    others = [i for i in range(n_seeds) if i != s][:max_faint]
    h = ev["time_s"][s].astype(np.float64) / 3600.0
    dt_h = float(params.dt) / 3600.0
    rate = lst_rate(params)
    to_8h = 8 * 3600.0 / float(params.rules.funding_interval_s)
    faint = dict(color="0.6", lw=0.5, alpha=0.35)
    g = lambda k, i=s: np.asarray(ev[k][i], np.float64)

    fig, axs = plt.subplots(4, 2, figsize=(17, 17), sharex=True)
    ax = axs.ravel()

    # (1) prices of BASE
    a = ax[0]
    for i in others:
        a.plot(h, g("spot_px", i), **faint)
    a.plot(h, g("ext_px")[:, 0], color="0.35", lw=1.2, label="external (venue mean)")
    a.plot(h, g("index_px")[:, 0], color="tab:green", lw=1.0, ls="--", label="index")
    a.plot(h, g("mark_px"), color="tab:red", lw=1.0, ls=":", label="mark")
    a.plot(h, g("spot_px"), color="tab:blue", lw=1.1, label="spot last")
    a.plot(h, g("perp_px"), color="tab:orange", lw=1.1, label="perp last")
    a.set_ylabel("BASE price (USDT)")
    a.set_title(
        "(1) BASE prices" + (f"  (grey: spot of {len(others)} other seeds)" if others else "")
    )

    # (2) basis and mark-index gap
    a = ax[1]
    for i in others:
        a.plot(h, 1e4 * g("basis", i), **faint)
    a.plot(
        h,
        1e4 * g("basis"),
        color="tab:purple",
        lw=1.0,
        label="basis (perp mid - spot mid) / spot mid",
    )
    a.plot(h, 1e4 * g("mark_index_gap"), color="tab:red", lw=1.0, label="(mark - index) / index")
    a.axhline(0, color="k", lw=0.5)
    a.set_ylabel("basis points")
    a.set_title("(2) basis and mark - index gap")

    # (3) funding
    a = ax[2]
    for i in others:
        a.plot(h, 100 * to_8h * g("funding_rate", i), **faint)
    a.plot(h, 100 * to_8h * g("funding_rate"), color="tab:brown", lw=1.1, label="predicted rate")
    settled = g("funding_settled") > 0
    if settled.any():
        a.plot(
            h[settled],
            100 * to_8h * g("funding_paid")[settled],
            "o",
            color="k",
            ms=3,
            label="settled",
        )
    a.axhline(
        100 * float(params.rules.funding_interest),
        color="0.5",
        lw=0.6,
        ls="--",
        label="interest (baseline)",
    )
    a.set_ylabel("% per 8 h")
    sec = a.secondary_yaxis("right", functions=(lambda y: y * 1095, lambda y: y / 1095))
    sec.set_ylabel("% annualised")
    a.set_title("(3) funding rate")

    # (4) open interest
    a = ax[3]
    for i in others:
        a.plot(h, g("oi_long", i), **faint)
    a.plot(h, g("oi_long"), color="tab:red", lw=1.1, label="OI long")
    a.plot(h, g("oi_short"), color="tab:green", lw=1.1, ls="--", label="OI short")
    a.set_ylabel("BASE")
    a.set_title("(4) open interest")
    # Scripted flows (right axis): what each program traded against its schedule.
    pp = params.pop
    progs = np.flatnonzero(np.asarray(pp.prog_active))
    if len(progs) and "prog_filled" in ev:
        ac = a.twinx()
        tick = np.arange(1, len(h) + 1)
        for c, i in enumerate(progs):
            col = f"C{(c + 4) % 10}"
            start, end = int(pp.prog_start[i]), int(pp.prog_end[i])
            due = float(pp.prog_qty[i]) * np.clip(tick - start, 0, end - start)
            side = "buy" if float(pp.prog_side[i]) > 0 else "sell"
            name = f"flow {i} ({side} {MARKET_NAMES[int(pp.prog_market[i])]})"
            ac.plot(h, np.cumsum(g("prog_filled")[:, i]), color=col, lw=1.0, label=f"{name} traded")
            ac.plot(h, due, color=col, lw=0.8, ls=":", label=f"{name} scheduled")
        ac.set_ylabel("scripted flows, cumulative base units")
        ac.legend(loc="lower right", fontsize=7, framealpha=0.8)
        a.set_title("(4) open interest; scripted flows traded / scheduled (right)")

    # (5) liquidations per tick (binned when long), forced reduce, cumulative
    a = ax[4]
    k = max(1, -(-len(h) // 300))  # at most ~300 bars so each stays visible
    ll, ls = _bin(g("liq_notional_long"), k), _bin(g("liq_notional_short"), k)
    fr = _bin(g("forced_reduce_notional"), k)
    hb = h[0] - dt_h + k * dt_h * np.arange(len(ll))  # bin start times
    w = k * dt_h
    a.bar(hb, ll, width=w, align="edge", color="tab:red", lw=0, label="long liquidated")
    a.bar(hb, -ls, width=w, align="edge", color="tab:green", lw=0, label="short liquidated (down)")
    if fr.any():
        a.step(hb, fr, where="post", color="k", lw=0.9, label="forced reduce (rule change)")
    a.axhline(0, color="k", lw=0.5)
    unit = "tick" if k == 1 else f"{k} ticks"
    a.set_ylabel(f"USDT per {unit}")
    ac = a.twinx()
    ac.plot(
        h,
        np.cumsum(g("liq_notional_long") + g("liq_notional_short")),
        color="tab:purple",
        lw=1.0,
        ls="--",
        label="cumulative liquidated",
    )
    ac.set_ylabel("cumulative USDT", color="tab:purple")
    ac.legend(loc="upper right", fontsize=7, framealpha=0.8)
    a.set_title("(5) liquidated notional: long (red, up) / short (green, down)")

    # (6) collateral
    a = ax[5]
    for i in others:
        a.plot(h, g("collateral_px", i)[:, 0], **faint)
    a.plot(h, g("ext_px")[:, 1], color="0.35", lw=1.0, label="STABLE external")
    a.plot(h, g("collateral_px")[:, 0], color="tab:blue", lw=1.1, label="STABLE internal last")
    a.plot(h, g("collateral_index")[:, 0], color="tab:cyan", lw=1.0, ls="--", label="STABLE index")
    red = rate * g("index_px")[:, 0]
    a.plot(
        h,
        g("collateral_px")[:, 1] / red,
        color="tab:olive",
        lw=1.1,
        label="LST internal / redemption",
    )
    a.plot(
        h,
        g("collateral_index")[:, 1] / red,
        color="tab:green",
        lw=1.0,
        ls="--",
        label="LST index / redemption",
    )
    a.plot(
        h, g("ext_px")[:, 2] / red, color="0.6", lw=0.8, ls=":", label="LST external / redemption"
    )
    a.set_ylabel(f"STABLE in USDT; LST / ({rate:g} x BASE index)")
    ac = a.twinx()
    cs = np.cumsum(g("collateral_sold_usdt"))
    ac.fill_between(h, cs, color="tab:orange", alpha=0.15, step="post")
    ac.plot(h, cs, color="tab:orange", lw=0.8, label="collateral sold by engine (cum. USDT)")
    ac.set_ylabel("cumulative USDT", color="tab:orange")
    ac.legend(loc="upper right", fontsize=7, framealpha=0.8)
    a.set_title("(6) collateral: internal prices and indexes")

    # (7) insurance fund and ADL
    a = ax[6]
    for i in others:
        a.plot(h, g("insurance_fund", i), **faint)
    a.plot(h, g("insurance_fund"), color="tab:blue", lw=1.2, label="insurance fund")
    bd = np.cumsum(g("bad_debt"))
    if bd.any():
        a.plot(h, bd, color="k", lw=1.0, ls="--", label="cumulative bad debt")
    a.set_ylabel("USDT")
    ac = a.twinx()
    ac.step(
        h,
        np.cumsum(g("adl_count")),
        where="post",
        color="tab:red",
        lw=1.1,
        label="cumulative ADL count",
    )
    ac.set_ylabel("ADL count", color="tab:red")
    ac.legend(loc="upper right", fontsize=7, framealpha=0.8)
    a.set_title("(7) insurance fund and auto-deleveraging")

    # (8) depth within 1% per book, USDT notional
    a = ax[7]
    px = np.stack(
        [g("spot_px"), g("perp_px"), g("collateral_px")[:, 0], g("collateral_px")[:, 1]], 1
    )
    depth = g("depth_1pct") * px[:, :, None]
    colors = ("tab:blue", "tab:orange", "tab:cyan", "tab:olive")
    pos = depth[depth > 0]
    floor = pos.min() / 2 if pos.size else 1.0
    for m in range(N_MARKETS):
        a.plot(
            h,
            np.maximum(depth[:, m, 0], floor),
            color=colors[m],
            lw=1.0,
            label=f"{MARKET_NAMES[m]} bid",
        )
        a.plot(
            h,
            np.maximum(depth[:, m, 1], floor),
            color=colors[m],
            lw=1.0,
            ls="--",
            label=f"{MARKET_NAMES[m]} ask",
        )
    a.set_yscale("log")
    a.set_ylabel("USDT within 1% of mid")
    a.set_title("(8) book depth within 1% (solid bid, dashed ask)")

    # rule changes (effective: solid, announced: dotted) on every panel
    eff = h[g("rules_changed") > 0]
    nc = g("next_change_s")
    ann = h[1:][(nc[1:] >= 0) & (nc[:-1] < 0)] if len(nc) > 1 else h[:0]
    if len(nc) and nc[0] >= 0:
        ann = np.concatenate([h[:1], ann])
    for a in ax:
        for x in eff:
            a.axvline(x, color="m", lw=0.9, alpha=0.7)
        for x in ann:
            a.axvline(x, color="m", lw=0.8, ls=":", alpha=0.7)
        a.grid(alpha=0.25)
        a.legend(loc="upper left", fontsize=7, framealpha=0.8)
    if len(eff) or len(ann):
        ax[0].plot([], [], color="m", lw=0.9, label="rule change (dotted: announced)")
        ax[0].legend(loc="upper left", fontsize=7, framealpha=0.8)
    for a in axs[-1]:
        a.set_xlabel("time (hours)")

    ms = {k: float(np.ravel(v)[s]) for k, v in per_seed.items()}
    head = (
        f"seed {s} of {n_seeds}, {len(h)} ticks ({len(h) * dt_h:.1f} h):  "
        f"spot DD {100 * ms['dd_spot']:.1f}%, perp DD {100 * ms['dd_perp']:.1f}%, "
        f"external DD {100 * ms['dd_ext']:.1f}%  |  liquidated long {_fmt(ms['liq_long'], 'usd')}"
        f" / short {_fmt(ms['liq_short'], 'usd')} USDT  |  STABLE low {ms['stable_low']:.4f}  |  "
        f"IF draw {_fmt(ms['if_draw'], 'usd')}  |  ADL {ms['adl_count']:.0f}"
    )
    fig.suptitle(f"{title or params.name}\n{head}", fontsize=13)
    fig.tight_layout(rect=(0, 0, 1, 0.965))
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ------------------------------------------------------------------ CLI


def _out_dir(name: str) -> Path:
    return Path("runs") / "simulate" / name.replace("/", "__")


def _choices_text() -> str:
    lines = []
    for s in list_scenarios():
        try:
            v = list_variants(s)
        except ConfigError as e:  # pragma: no cover - a broken file still gets listed
            v = [f"<error: {e}>"]
        lines.append(f"  {s}: variants {v if v else '(none)'}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m jaxsim.tools.simulate",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--scenario", default="calm", help=f"one of {list_scenarios()} or a YAML path")
    ap.add_argument("--variant", default=None, help="a variant of the scenario (see --list)")
    ap.add_argument("--seeds", type=int, default=16, help="seeds run in one batch (default 16)")
    ap.add_argument(
        "--seed", type=int, default=0, help="first PRNG seed (keys = split(PRNGKey(seed), seeds))"
    )
    hz = ap.add_mutually_exclusive_group()
    hz.add_argument("--ticks", type=int, default=None, help="ticks to run")
    hz.add_argument("--hours", type=float, default=None, help="hours of market time to run")
    ap.add_argument("--out", default=None, help="output folder (default runs/simulate/<scenario>)")
    ap.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value by dotted key, YAML value (repeatable), e.g. rules.fees.taker=0.0004",
    )
    ap.add_argument(
        "--facts-price",
        default="spot_px",
        help="price of the return stylized facts: spot_px (default), spot_mid, perp_px, "
        "perp_mid, mark_px",
    )
    ap.add_argument("--plot-seed", type=int, default=0, help="seed drawn in the dashboard")
    ap.add_argument("--csv-stride", type=int, default=1, help="write every k-th tick to events.csv")
    ap.add_argument("--no-csv", action="store_true", help="skip events.csv")
    ap.add_argument("--no-plot", action="store_true", help="skip dashboard.png")
    ap.add_argument("--list", action="store_true", help="list scenarios and variants, then exit")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.list:
        print(_choices_text())
        return 0
    if args.seeds < 1:
        ap.error("--seeds must be >= 1")
    if args.facts_price not in ("spot_px", "spot_mid", "perp_px", "perp_mid", "mark_px"):
        ap.error(f"--facts-price {args.facts_price!r} is not one of the listed prices")
    if not 0 <= args.plot_seed < args.seeds:
        ap.error(f"--plot-seed must be in [0, {args.seeds})")
    try:
        cfg, params = load(args.scenario, args.variant, parse_overrides(args.sets))
        n_ticks = horizon_ticks(cfg, params, args.ticks, args.hours)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    t0 = time.perf_counter()
    ev, a0, a1 = run_batch(params, n_ticks, args.seeds, args.seed)
    wall = time.perf_counter() - t0
    m = mt.episode_metrics(ev, lst_rate=lst_rate(params), facts_price=args.facts_price)
    per_seed = {**m, **ledger_drift(a0, a1)}

    hours = n_ticks * float(params.dt) / 3600
    title = (
        f"{params.name}: {args.seeds} seeds x {n_ticks} ticks ({hours:.2f} h of market time, "
        f"dt {float(params.dt):g} s), {wall:.1f} s incl. compile — mean [min, max] over seeds"
    )
    if args.facts_price != "spot_px":
        title += f"; return stylized facts of {args.facts_price}"
    header, rows = summary_table(per_seed, params)
    rows = [[r[0], f"{r[1]}", f"{r[2]}", f"{r[3]}"] for r in rows]
    drift = max(float(np.max(per_seed[f"ledger_{k}"])) for k in LEDGER_ASSETS)
    rows.append(["ledger max |change| / total", f"{drift:.2e}", "", ""])
    print_table(title, header, rows)
    for k, name in enumerate(MARKET_NAMES):
        key = f"edge_{_MKT[k]}"
        if key in per_seed and np.max(per_seed[key]) > 0:
            print(
                f"warning: {name} traded at its price grid's outermost level in "
                f"{100 * np.max(per_seed[key]):.1f}% of the ticks (the most of any seed): orders "
                "could not trade past it there, so the grid bounded that book's price",
                file=sys.stderr,
            )
    flows = program_delivery(cfg, params, ev)
    if flows:
        print_table("scripted flows (base units)", *delivery_table(flows))
        for r in flows:
            if np.min(r["delivered"]) < DELIVERED_SHARE * r["scheduled"]:
                why = "within the price band"
                if r["limit_pct"] > 0:
                    why += f" and its {r['limit_pct']:.4g}% limit"
                rest = (
                    "what did not fill was carried to the next tick until the window ended"
                    if r["carry"]
                    else "the rest is not carried over"
                )
                print(
                    f"warning: {r['account']}'s {r['side']} program on {r['market']} traded "
                    f"{np.min(r['delivered']):.4g} of its {r['scheduled']:.4g} in at least one "
                    f"seed: each tick's slice trades what the book holds {why} and what the "
                    f"account can pay or margin, and {rest}",
                    file=sys.stderr,
                )
            per_seed[f"program{r['row']}_traded"] = r["delivered"]

    out = Path(args.out) if args.out else _out_dir(params.name)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if not args.no_csv:
        n_rows = write_events_csv(out / "events.csv", ev, args.csv_stride)
        written.append(f"{out / 'events.csv'} ({n_rows} rows)")
    write_summary_csv(out / "summary.csv", per_seed)
    written.append(str(out / "summary.csv"))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print(
            "matplotlib is not installed (pip install -e '.[dev]'): no dashboard", file=sys.stderr
        )
        args.no_plot = True
    if not args.no_plot:
        dashboard(out / "dashboard.png", ev, params, per_seed, args.plot_seed)
        written.append(str(out / "dashboard.png"))
    print("wrote " + ", ".join(written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
