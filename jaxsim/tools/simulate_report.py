"""What `python -m jaxsim.tools.simulate` writes and prints: the tick-event and summary CSVs,
the metrics table and the scripted flows' delivery table (with their warnings)."""

from __future__ import annotations

import csv
import math
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxsim import metrics as mt
from jaxsim.tools.cli import fmt
from jaxsim.types import MARKET_NAMES, N_MARKETS, REASON_NAMES, Params

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
                fmt(share, "pct"),
            ]
        )
    return ["scripted flow", "scheduled", "traded: mean [min, max]", "share"], body


# ------------------------------------------------------------------ summary table

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
    ("accounts left queued for liquidation, max per tick", "liq_backlog_max", "int"),
    ("STABLE low, internal (USDT)", "stable_low", "px"),
    ("STABLE index low", "stable_index_low", "px"),
    ("LST index low / redemption", "lst_index_rel_low", "px"),
    ("insurance fund draw (USDT)", "if_draw", "usd"),
    ("insurance fund marked equity, low (USDT)", "if_equity_low", "usd"),
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
            cells = [fmt(v, kind) for v in vals]
        rows.append([label] + cells)
    return ["metric", "mean", "min", "max"], rows


# ------------------------------------------------------------------ warnings


def warn_grid_edges(per_seed: Mapping[str, np.ndarray]) -> None:
    """On stderr: each book whose last trade sat at its price grid's edge in some tick."""
    for k, name in enumerate(MARKET_NAMES):
        key = f"edge_{_MKT[k]}"
        if key in per_seed and np.max(per_seed[key]) > 0:
            print(
                f"warning: {name} traded at its price grid's outermost level in "
                f"{100 * np.max(per_seed[key]):.1f}% of the ticks (the most of any seed): orders "
                "could not trade past it there, so the grid bounded that book's price",
                file=sys.stderr,
            )


def warn_shortfalls(flows: list[dict[str, Any]]) -> None:
    """On stderr: each scripted program that traded under `DELIVERED_SHARE` of its schedule
    in at least one seed, and why it can fall short."""
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
