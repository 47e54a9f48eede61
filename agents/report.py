"""Evaluation report: `report.md`, `results.csv`, `episodes.csv` and PNG plots.

`write_report(out_dir, traj, ...)` takes the `Trajectories` of one evaluation (every
policy on every scenario / variant / seed) and writes:

- `results.csv`: one row per (policy, scenario, variant) with mean / std / min / max over
  seeds of every metric of `agents.evaluate.METRICS`;
- `episodes.csv`: one row per episode;
- `plots/equity_<scenario>.png`: per variant, each policy's equity curve (mean over seeds,
  band = min..max) above the perp mark price of the same episodes;
- `plots/dashboard_<scenario>.png`: the scenario's eight-panel dashboard
  (`jaxsim.tools.plots.dashboard`) when `dashboards` gives the events;
- `report.md`: headline, metric definitions and one table per scenario.
"""

from __future__ import annotations

import csv
import datetime as _dt
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agents.evaluate import METRICS, EvalConfig, Trajectories, episode_table, summarize

PLOTS = "plots"
TABLE_COLS = (
    ("PnL %", "pnl", 100.0, "{:+.2f}"),
    ("Sharpe (daily)", "sharpe", 1.0, "{:+.2f}"),
    ("max DD %", "max_drawdown", 100.0, "{:.2f}"),
    ("survival", "survived", 100.0, "{:.0f}%"),
    ("liquidated", "liquidated", 100.0, "{:.0f}%"),
    ("fees (USDT)", "fees", 1.0, "{:.0f}"),
    ("funding paid (USDT)", "funding_paid", 1.0, "{:.1f}"),
    ("funding recv. (USDT)", "funding_received", 1.0, "{:.1f}"),
)
METRIC_NOTES = """\
Per episode (one seed), over the steps it lasted:

- **PnL %**: final marked equity / initial equity - 1 (marked equity = wallet at index
  prices + perp uPnL at mark; fees and funding are inside it). Cells: mean ± std over
  seeds, [min, max] below in results.csv.
- **Sharpe (daily)**: mean / std of per-step equity changes, scaled to one day with the
  scenario's step length (sqrt(steps per day); x sqrt(365) annualizes it); 0 for a policy
  whose equity never moved. Episodes are hours long, so this is a noisy, scale-free
  comparison, not an investable Sharpe.
- **max DD %**: largest fall of the equity curve from its running peak.
- **survival**: share of episodes that reached the horizon without being liquidated or
  reaching the env's equity floor; **liquidated**: share liquidated by the engine.
- **fees (USDT)**: trading fees the agent paid, taker and maker (a maker rebate counts
  negative), from the engine's per-account record; already inside PnL.
- **funding paid / received (USDT)**: sum of the agent's funding cash flows at each
  settlement (-position x mark x settled rate), reconstructed from the state.
"""


def _fmt(x: float, scale: float, fmt: str) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    return fmt.format(x * scale)


def _cell(row: Mapping[str, Any], key: str, scale: float, fmt: str) -> str:
    m, s = row[f"{key}_mean"], row[f"{key}_std"]
    if not math.isfinite(m):
        return "n/a"
    if row["n"] > 1 and math.isfinite(s) and s > 0 and key not in ("survived", "liquidated"):
        return f"{_fmt(m, scale, fmt)} ± {_fmt(s, scale, fmt.replace('+', ''))}"
    return _fmt(m, scale, fmt)


def _safe(name: str) -> str:
    return name.replace("/", "__")


# ============================================================== CSV


def write_csv(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Rows of dicts to CSV (columns from the first row; floats with 9 digits)."""
    if not rows:
        Path(path).write_text("", encoding="utf-8")
        return
    cols = list(rows[0])
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in rows:
            w.writerow(
                [
                    ""
                    if r.get(c) is None
                    else (f"{r[c]:.9g}" if isinstance(r.get(c), float) else r[c])
                    for c in cols
                ]
            )


# ============================================================== plots


def plot_equity(
    path: str | Path, traj: Trajectories, scenario: str, policies: Sequence[str]
) -> None:
    """Equity curves of every policy through one scenario (a column per variant) above the
    perp mark price of the same episodes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg_ids = [i for i, c in enumerate(traj.configs) if c.scenario == scenario]
    act = traj.active()
    ncol = len(cfg_ids)
    fig, axs = plt.subplots(
        2,
        ncol,
        figsize=(5.5 * ncol + 1, 7.5),
        sharex="col",
        squeeze=False,
        gridspec_kw={"height_ratios": [2, 1]},
    )
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for col, c_i in enumerate(cfg_ids):
        cfg: EvalConfig = traj.configs[c_i]
        hours = np.arange(1, cfg.steps + 1) * cfg.dt / 3600.0
        ax, axp = axs[0, col], axs[1, col]
        for p_i, pol in enumerate(policies):
            rows = [i for i, r in enumerate(traj.rows) if r["config"] == c_i and r["policy"] == pol]
            if not rows:
                continue
            eq = traj.equity[rows, : cfg.steps] / traj.equity0[rows, None] - 1.0
            # After an episode ends its equity stays where it ended.
            a = act[rows, : cfg.steps]
            last = np.maximum(a.sum(1) - 1, 0)
            for j in range(len(rows)):
                eq[j, last[j] + 1 :] = eq[j, last[j]]
            color = colors[p_i % len(colors)]
            ax.plot(hours, 100 * eq.mean(0), color=color, lw=1.3, label=pol)
            if len(rows) > 1:
                ax.fill_between(
                    hours, 100 * eq.min(0), 100 * eq.max(0), color=color, alpha=0.15, lw=0
                )
            dead = ~a[:, -1] & (a.sum(1) < cfg.steps)
            for j in np.flatnonzero(dead):
                ax.plot(hours[last[j]], 100 * eq[j, last[j]], "x", color=color, ms=7)
        ax.axhline(0, color="k", lw=0.5)
        ax.set_title(cfg.label)
        ax.set_ylabel("equity change, % of initial")
        ax.grid(alpha=0.25)
        ax.legend(fontsize=7, loc="best")
        # Price path: the episodes of the first policy (the market paths of one seed are
        # shared by every policy up to the agent's own impact).
        rows = [i for i, r in enumerate(traj.rows) if r["config"] == c_i]
        first = traj.rows[rows[0]]["policy"]
        seeds = [i for i in rows if traj.rows[i]["policy"] == first]
        for k, i in enumerate(seeds):
            axp.plot(
                hours,
                traj.mark[i, : cfg.steps],
                color="0.2" if k == 0 else "0.6",
                lw=1.0 if k == 0 else 0.6,
                label="perp mark, seed 0" if k == 0 else None,
            )
        axp.set_ylabel("perp mark (USDT)")
        axp.set_xlabel("time (hours)")
        axp.grid(alpha=0.25)
        axp.legend(fontsize=7, loc="best")
    fig.suptitle(
        f"{scenario}: equity curves (mean over seeds, band = min..max, x = terminated)",
        fontsize=12,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ============================================================== markdown


def _ranked(summary: list[dict], scenario: str, variant: str | None) -> list[dict]:
    rows = [r for r in summary if r["scenario"] == scenario and r["variant"] == variant]
    return sorted(rows, key=lambda r: -r["pnl_mean"])


def headline(summary: list[dict], trained: str | None, calm: str = "calm") -> list[str]:
    """Bullet lines: calm comparison and, per crash scenario, the best policy."""
    lines = []
    base = [r for r in summary if r["scenario"] == calm and r["variant"] is None]
    by = {r["policy"]: r for r in base}
    if base:
        order = ", ".join(
            f"{r['policy']} {100 * r['pnl_mean']:+.2f}%" for r in _ranked(summary, calm, None)
        )
        lines.append(f"**{calm}** (mean PnL over seeds, best first): {order}.")
        if trained and trained in by:
            t = by[trained]["pnl_mean"]
            verdicts = []
            for ref in ("random", "flat", "avellaneda_stoikov"):
                if ref in by:
                    r = by[ref]["pnl_mean"]
                    verdicts.append(
                        f"{'beats' if t > r else 'does not beat'} {ref} "
                        f"({100 * t:+.2f}% vs {100 * r:+.2f}%)"
                    )
            if verdicts:
                lines.append(f"The trained policy `{trained}` " + "; ".join(verdicts) + ".")
    scenarios = []
    for r in summary:
        if r["scenario"] != calm and r["scenario"] not in scenarios:
            scenarios.append(r["scenario"])
    for s in scenarios:
        ranked = _ranked(summary, s, None)
        if not ranked:
            continue
        best = ranked[0]
        surv = ", ".join(
            f"{r['policy']} {100 * r['pnl_mean']:+.2f}% (survival {100 * r['survived_mean']:.0f}%)"
            for r in ranked
        )
        lines.append(f"**{s}**: best `{best['policy']}`; {surv}.")
    return lines


def markdown(
    summary: list[dict],
    configs: Sequence[EvalConfig],
    policies: Sequence[str],
    *,
    title: str,
    intro: Sequence[str] = (),
    trained: str | None = None,
    descriptions: Mapping[str, str] | None = None,
    equity_plots: Mapping[str, str] | None = None,
    dashboard_plots: Mapping[str, str] | None = None,
    seeds: int | None = None,
    splits: Mapping[tuple, str] | None = None,
    episodes: Sequence[Mapping[str, Any]] | None = None,
) -> str:
    """The report text (`splits`: (scenario, variant) -> split label, e.g. in-distribution
    / held-out, summarised over `episodes` in a section of its own)."""
    descriptions = descriptions or {}
    equity_plots = equity_plots or {}
    dashboard_plots = dashboard_plots or {}
    out = [f"# {title}", ""]
    out += list(intro)
    out += ["", "## Headline", ""]
    out += [f"- {line}" for line in headline(summary, trained)]
    if splits and episodes:
        out += split_section(episodes, policies, splits)
    out += ["", "## Metrics", "", METRIC_NOTES]
    scen_order = []
    for c in configs:
        if c.scenario not in scen_order:
            scen_order.append(c.scenario)
    header = "| variant | policy | " + " | ".join(c[0] for c in TABLE_COLS) + " |"
    sep = "|" + "---|" * (len(TABLE_COLS) + 2)
    for s in scen_order:
        cfgs = [c for c in configs if c.scenario == s]
        out += ["", f"## {s}", ""]
        if descriptions.get(s):
            out += [f"{descriptions[s]}", ""]
        steps = ", ".join(
            f"{c.variant or 'base'}: {c.steps} steps x {c.dt:g} s = {c.steps * c.dt / 3600:.1f} h"
            for c in cfgs
        )
        n = f"{seeds} seeds per row; " if seeds else ""
        out += [f"Horizon ({n}{steps}).", ""]
        out += [header, sep]
        for c in cfgs:
            rows = [r for r in summary if r["scenario"] == s and r["variant"] == c.variant]
            rows.sort(key=lambda r: policies.index(r["policy"]) if r["policy"] in policies else 99)
            for r in rows:
                name = f"**{r['policy']}**" if r["policy"] == trained else r["policy"]
                cells = [_cell(r, key, scale, fmt) for _, key, scale, fmt in TABLE_COLS]
                label = c.variant or "base"
                if splits and (s, c.variant) in splits:
                    label += f" ({splits[(s, c.variant)]})"
                out.append(f"| {label} | {name} | " + " | ".join(cells) + " |")
        if s in equity_plots:
            out += ["", f"![equity curves through {s}]({equity_plots[s]})"]
        if s in dashboard_plots:
            out += ["", "Scenario dashboard (the market without the agent, seed 0):", ""]
            out += [f"![{s} dashboard]({dashboard_plots[s]})"]
    out.append("")
    return "\n".join(out)


SPLIT_COLS = (
    ("PnL %", "pnl", 100.0, "{:+.2f}"),
    ("survival", "survived", 100.0, "{:.0f}%"),
    ("liquidated", "liquidated", 100.0, "{:.0f}%"),
    ("max DD %", "max_drawdown", 100.0, "{:.2f}"),
    ("funding paid", "funding_paid", 1.0, "{:.1f}"),
    ("funding received", "funding_received", 1.0, "{:.1f}"),
)


def split_rows(
    episodes: Sequence[Mapping[str, Any]], splits: Mapping[tuple, str]
) -> list[dict[str, Any]]:
    """Mean of each metric per (split, policy) over the episodes of the split."""
    groups: dict[tuple, list] = {}
    for e in episodes:
        sp = splits.get((e["scenario"], e["variant"]))
        if sp is not None:
            groups.setdefault((sp, e["policy"]), []).append(e)
    out = []
    for (sp, pol), es in groups.items():
        row: dict[str, Any] = {"split": sp, "policy": pol, "n": len(es)}
        for _, k, _, _ in SPLIT_COLS:
            v = np.asarray([e[k] for e in es], np.float64)
            v = v[np.isfinite(v)]
            row[k] = float(v.mean()) if v.size else float("nan")
        out.append(row)
    return out


def split_section(
    episodes: Sequence[Mapping[str, Any]], policies: Sequence[str], splits: Mapping[tuple, str]
) -> list[str]:
    """Markdown: one table per split (in-distribution, held-out, ...) of per-policy means."""
    rows = split_rows(episodes, splits)
    order = list(dict.fromkeys(splits.values()))
    out = ["", "## In-distribution vs held-out", ""]
    for sp in order:
        members = sorted(f"{s}/{v or 'base'}" for (s, v), x in splits.items() if x == sp)
        out += [f"**{sp}** ({', '.join(members)}), mean over episodes:", ""]
        out += ["| policy | episodes | " + " | ".join(c[0] for c in SPLIT_COLS) + " |"]
        out += ["|" + "---|" * (len(SPLIT_COLS) + 2)]
        sel = [r for r in rows if r["split"] == sp]
        sel.sort(key=lambda r: policies.index(r["policy"]) if r["policy"] in policies else 99)
        for r in sel:
            cells = [_fmt(r[k], scale, fmt) for _, k, scale, fmt in SPLIT_COLS]
            out.append(f"| {r['policy']} | {r['n']} | " + " | ".join(cells) + " |")
        out.append("")
    return out


def write_report(
    out_dir: str | Path,
    traj: Trajectories,
    *,
    role: str,
    trained: str | None = None,
    intro: Sequence[str] = (),
    dashboards: Mapping[str, tuple[Any, Any]] | None = None,
    seeds: int | None = None,
    plots: bool = True,
    splits: Mapping[tuple, str] | None = None,
) -> dict[str, Any]:
    """Write report.md, results.csv, episodes.csv and plots/ into `out_dir`.

    Args:
        traj: the evaluation's trajectories.
        role: role name (title).
        trained: name of the trained policy (highlighted, compared in the headline).
        intro: markdown lines after the title (run description).
        dashboards: scenario -> (events dict (S, T, ...), jaxsim Params) for
            `jaxsim.tools.plots.dashboard`.
        plots: write PNG plots (needs matplotlib).
        splits: (scenario, variant) -> split label (in-distribution, held-out, ...): a
            `split` column in results.csv / episodes.csv and a section comparing splits.

    Returns:
        {"report": path, "results": path, "episodes": path, "summary": rows, "plots": [...]}.
    """
    import jaxsim

    out_dir = Path(out_dir)
    (out_dir / PLOTS).mkdir(parents=True, exist_ok=True)
    episodes = episode_table(traj)
    summary = summarize(episodes)
    if splits:
        for r in [*episodes, *summary]:
            r["split"] = splits.get((r["scenario"], r["variant"]), "")
        write_csv(out_dir / "splits.csv", split_rows(episodes, splits))
    write_csv(out_dir / "results.csv", summary)
    write_csv(out_dir / "episodes.csv", episodes)
    policies: list[str] = []
    for r in traj.rows:
        if r["policy"] not in policies:
            policies.append(r["policy"])
    scenarios: list[str] = []
    for c in traj.configs:
        if c.scenario not in scenarios:
            scenarios.append(c.scenario)
    written: list[str] = []
    equity_plots: dict[str, str] = {}
    dashboard_plots: dict[str, str] = {}
    if plots:
        from jaxsim.tools.plots import dashboard

        for s in scenarios:
            rel = f"{PLOTS}/equity_{_safe(s)}.png"
            plot_equity(out_dir / rel, traj, s, policies)
            equity_plots[s] = rel
            written.append(str(out_dir / rel))
        for s, (events, params) in (dashboards or {}).items():
            rel = f"{PLOTS}/dashboard_{_safe(s)}.png"
            dashboard(out_dir / rel, events, params, title=f"{s} (no agent)")
            dashboard_plots[s] = rel
            written.append(str(out_dir / rel))
    descriptions = {}
    for s in scenarios:
        try:
            descriptions[s] = str(jaxsim.scenario_config(s).get("description") or "")
        except Exception:  # pragma: no cover - a description is decoration
            descriptions[s] = ""
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    text = markdown(
        summary,
        traj.configs,
        policies,
        title=f"Evaluation: {role}",
        intro=[f"Generated {stamp}.", "", *intro],
        trained=trained,
        descriptions=descriptions,
        equity_plots=equity_plots,
        dashboard_plots=dashboard_plots,
        seeds=seeds,
        splits=splits,
        episodes=episodes,
    )
    (out_dir / "report.md").write_text(text, encoding="utf-8")
    return {
        "report": str(out_dir / "report.md"),
        "results": str(out_dir / "results.csv"),
        "episodes": str(out_dir / "episodes.csv"),
        "summary": summary,
        "plots": written,
    }


__all__ = ["METRICS", "headline", "markdown", "plot_equity", "write_csv", "write_report"]
