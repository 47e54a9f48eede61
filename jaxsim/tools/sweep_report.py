"""Sweep results: the record of a run (`SweepResult`), seed means, the printed table and the
files (sweep.csv, sweep_mean.csv, sweep.npz, sweep.json, heatmaps.png), and reloading them."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np

from jaxsim.tools.cli import fmt
from jaxsim.tools.sweep_spec import METRICS, Grid

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
            row.append(fmt(float(mean[m][p]), kind))
            if base is not None:
                b = float(mean[m][base])
                row.append(f"{float(mean[m][p]) / b:.2f}" if b else "-")
        rows.append(row)
    return header, rows


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
        from jaxsim.tools.plots import heatmaps

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
