"""The matplotlib figures of the scenario tools: the simulate dashboard (eight panels over
time for one seed) and the sweep heatmaps (mean crash severity over the grid).

matplotlib is imported inside the figure functions (it is optional) with the Agg backend.
"""

from __future__ import annotations

import dataclasses
import itertools
import textwrap
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from jaxsim import metrics as mt
from jaxsim.tools.cli import fmt
from jaxsim.tools.sweep_report import SEVERITY, SweepResult, mean_over_seeds
from jaxsim.tools.sweep_spec import Axis
from jaxsim.types import MARKET_NAMES, N_MARKETS, Params


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ------------------------------------------------------------------ dashboard


@dataclasses.dataclass
class _Dash:
    """What the dashboard panels draw from: one seed's series and the run's constants."""

    ev: dict[str, np.ndarray]
    params: Params
    h: np.ndarray  # time of each tick, hours
    g: Callable  # g(field, seed=plot_seed) -> float64 series
    others: list[int]  # seeds drawn faint
    faint: dict
    dt_h: float
    rate: float  # LST redemption rate in BASE
    to_8h: float  # funding rate per interval -> per 8 h


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
    plt = _pyplot()
    ev = {k: np.asarray(v) for k, v in events.items()}
    n_seeds = ev["spot_px"].shape[0]
    if not 0 <= plot_seed < n_seeds:
        raise ValueError(f"plot_seed {plot_seed} not in [0, {n_seeds})")
    rate = float(params.exo.lst_rate)
    per_seed = per_seed or mt.episode_metrics(ev, lst_rate=rate)
    s = plot_seed
    d = _Dash(
        ev=ev,
        params=params,
        h=ev["time_s"][s].astype(np.float64) / 3600.0,
        g=lambda k, i=s: np.asarray(ev[k][i], np.float64),
        others=[i for i in range(n_seeds) if i != s][:max_faint],
        faint=dict(color="0.6", lw=0.5, alpha=0.35),
        dt_h=float(params.dt) / 3600.0,
        rate=rate,
        to_8h=8 * 3600.0 / float(params.rules.funding_interval_s),
    )
    fig, axs = plt.subplots(4, 2, figsize=(17, 17), sharex=True)
    ax = axs.ravel()
    for a, panel in zip(ax, _PANELS, strict=True):
        panel(a, d)
    _mark_rule_changes(ax, d)
    for a in axs[-1]:
        a.set_xlabel("time (hours)")
    fig.suptitle(f"{title or params.name}\n{_headline(d, per_seed, s, n_seeds)}", fontsize=13)
    fig.tight_layout(rect=(0, 0, 1, 0.965))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _mark_rule_changes(ax, d: _Dash) -> None:
    """Rule changes (effective: solid, announced: dotted) on every panel; legends, grids."""
    h, g = d.h, d.g
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


def _headline(d: _Dash, per_seed: Mapping[str, np.ndarray], s: int, n_seeds: int) -> str:
    """The dashboard's second title line: the seed's crash figures."""
    h, dt_h = d.h, d.dt_h
    ms = {k: float(np.ravel(v)[s]) for k, v in per_seed.items()}
    return (
        f"seed {s} of {n_seeds}, {len(h)} ticks ({len(h) * dt_h:.1f} h):  "
        f"spot DD {100 * ms['dd_spot']:.1f}%, perp DD {100 * ms['dd_perp']:.1f}%, "
        f"external DD {100 * ms['dd_ext']:.1f}%  |  liquidated long {fmt(ms['liq_long'], 'usd')}"
        f" / short {fmt(ms['liq_short'], 'usd')} USDT  |  STABLE low {ms['stable_low']:.4f}  |  "
        f"IF draw {fmt(ms['if_draw'], 'usd')}  |  ADL {ms['adl_count']:.0f}"
    )


def _panel_prices(a, d: _Dash) -> None:
    """Panel (1) prices of BASE."""
    h, g, others, faint = d.h, d.g, d.others, d.faint
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


def _panel_basis(a, d: _Dash) -> None:
    """Panel (2) basis and mark-index gap."""
    h, g, others, faint = d.h, d.g, d.others, d.faint
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


def _panel_funding(a, d: _Dash) -> None:
    """Panel (3) funding."""
    h, g, others, faint, params, to_8h = d.h, d.g, d.others, d.faint, d.params, d.to_8h
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


def _panel_open_interest(a, d: _Dash) -> None:
    """Panel (4) open interest."""
    h, g, others, faint, ev, params = d.h, d.g, d.others, d.faint, d.ev, d.params
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


def _panel_liquidations(a, d: _Dash) -> None:
    """Panel (5) liquidations per tick (binned when long), forced reduce, cumulative."""
    h, g, dt_h = d.h, d.g, d.dt_h
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


def _panel_collateral(a, d: _Dash) -> None:
    """Panel (6) collateral."""
    h, g, others, faint, rate = d.h, d.g, d.others, d.faint, d.rate
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


def _panel_insurance(a, d: _Dash) -> None:
    """Panel (7) insurance fund and ADL."""
    h, g, others, faint = d.h, d.g, d.others, d.faint
    for i in others:
        a.plot(h, g("insurance_fund", i), **faint)
    a.plot(h, g("insurance_fund"), color="tab:blue", lw=1.2, label="insurance fund")
    if "insurance_equity" in d.ev:
        eq = g("insurance_equity")
        a.plot(h, eq, color="tab:blue", lw=0.9, ls=":", label="fund marked equity")
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


def _panel_depth(a, d: _Dash) -> None:
    """Panel (8) depth within 1% per book, USDT notional."""
    h, g = d.h, d.g
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


_PANELS = (
    _panel_prices,
    _panel_basis,
    _panel_funding,
    _panel_open_interest,
    _panel_liquidations,
    _panel_collateral,
    _panel_insurance,
    _panel_depth,
)


# ------------------------------------------------------------------ sweep heatmaps


def _annotate(ax, z: np.ndarray, lo: float, hi: float, kind: str, worse_high: bool) -> None:
    """Write each cell's value on a heatmap panel, white on its darkest cells."""
    for i in range(z.shape[0]):
        for j in range(z.shape[1]):
            frac = (z[i, j] - lo) / (hi - lo) if hi > lo else 0.0
            dark = frac > 0.6 if worse_high else frac < 0.4
            ax.text(
                j,
                i,
                fmt(float(z[i, j]), kind),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if dark else "black",
            )


def heatmaps(result: SweepResult, path: Path) -> None:
    """Mean crash severity over seeds: rows = metrics, columns = combinations of the axes
    after the first two; each panel is axis 0 (rows) x axis 1 (columns)."""
    plt = _pyplot()
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
            _annotate(ax, z, lo, hi, kind, worse_high)
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
