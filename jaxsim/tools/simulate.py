"""Run a scenario batched over seeds: summary table, tick-event CSV, per-seed metrics, dashboard.

    python -m jaxsim.tools.simulate --scenario NAME [--variant V] [--seeds N]
    python -m jaxsim.tools.simulate --scenario DISTRIBUTION [--seeds N]   # seed s runs
        a member drawn from configs/distributions/DISTRIBUTION.yaml
        [--ticks T | --hours H] [--out DIR] [--set key=value ...] [--plot-seed K]

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
`ledger_drift`; the files and tables are in `jaxsim.tools.simulate_report`, the dashboard
in `jaxsim.tools.plots`.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import jax
import numpy as np

from jaxsim import metrics as mt
from jaxsim.config import ConfigError, build_params, list_scenarios, list_variants, scenario_config
from jaxsim.engine import audit, reset, rollout, run_ticks
from jaxsim.tools import cli
from jaxsim.tools import simulate_report as rep
from jaxsim.types import Params

DEFAULT_TICKS = 2000
LEDGER_ASSETS = ("usdt", "base", "stable", "lst")
FACTS_PRICES = ("spot_px", "spot_mid", "perp_px", "perp_mid", "mark_px")


# ------------------------------------------------------------------ loading


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


@functools.partial(jax.jit, static_argnames=("n_ticks",))
def _start(keys, params: Params, n_ticks: int):
    """A run's start: the reset states, their audits and every tick's key as `rollout`
    splits them, (seeds, n_ticks, 2)."""

    def one(key):
        s0 = reset(key, params)
        _, k_run = jax.random.split(key)
        return s0, audit(s0, params), jax.random.split(k_run, n_ticks)

    return jax.vmap(one)(keys)


@functools.partial(jax.jit, static_argnames=("policy",))
def _advance(states, tick_keys, params: Params, policy: Callable | None = None):
    """Run the batch on from `states` over `tick_keys` (seeds, T, 2): the ticks of
    `rollout`, one chunk of them."""

    return jax.vmap(lambda s, k: run_ticks(s, k, params, policy))(states, tick_keys)


_audit_batch = jax.jit(jax.vmap(audit, in_axes=(0, None)))


def _run_chunked(keys, params: Params, n_ticks: int, chunk: int, policy: Callable | None):
    """The batch's rollout in chunks of `chunk` ticks: every full chunk runs the same
    compiled program, so runs whose horizons are multiples of it share it. The tick keys are
    `rollout`'s (a partitionable threefry split: the first k of n keys are the k keys), and
    each chunk goes on from the last one's states, so the events do not depend on `chunk`."""
    states, a0, tick_keys = _start(keys, params, n_ticks)
    evs = []
    for t0 in range(0, n_ticks, chunk):
        states, ev = _advance(states, tick_keys[:, t0 : t0 + chunk], params, policy)
        evs.append(jax.device_get(ev))
    ev = jax.tree_util.tree_map(lambda *xs: np.concatenate(xs, axis=1), *evs)
    return a0, _audit_batch(states, params), ev


@functools.partial(jax.jit, static_argnames=("n_ticks",))
def _batch_members(keys, params: Params, n_ticks: int):
    """One vmapped rollout with per-seed params (leading axis = seeds): (audit0, audit1,
    events), as `run_batch` returns them."""

    def one(key, p):
        s0 = reset(key, p)
        s1, ev = rollout(key, p, n_ticks, state=s0)
        return audit(s0, p), audit(s1, p), ev

    return jax.vmap(one)(keys, params)


def load_members(name, seeds: int, seed: int = 0, overrides: Mapping | None = None):
    """A distribution's members drawn for `seeds` seeds (seed s runs member idx[s]):
    (distribution, idx, [(cfg, Params)] per seed)."""
    from jaxsim.config.distribution import load_distribution

    dist = load_distribution(name)
    probs = dist.probs / dist.probs.sum()
    idx = np.random.default_rng(seed).choice(len(dist.members), size=seeds, p=probs)
    out = []
    for i in idx:
        m = dist.members[i]
        cfg, p = load(m.scenario, m.variant, {**m.overrides, **dict(overrides or {})})
        out.append((cfg, p.replace(name=dist.name)))
    return dist, idx, out


def run_distribution(args) -> int:
    """`--scenario <distribution>`: each seed runs a member drawn with the file's weights."""
    if args.variant is not None:
        print(f"error: '{args.scenario}' is a distribution: it takes no --variant", file=sys.stderr)
        return 2
    try:
        dist, idx, loaded = load_members(
            args.scenario, args.seeds, args.seed, cli.parse_overrides(args.sets)
        )
        n_ticks = max(horizon_ticks(c, p, args.ticks, args.hours) for c, p in loaded)
    except ConfigError as e:
        return cli.config_error(e)
    rows = [
        [str(s), dist.members[i].label, str(dist.members[i].overrides)] for s, i in enumerate(idx)
    ]
    cli.print_table(
        f"distribution {dist.name}: member per seed", ["seed", "member", "overrides"], rows
    )
    stacked = jax.tree_util.tree_map(lambda *xs: jax.numpy.stack(xs), *[p for _, p in loaded])
    t0 = time.perf_counter()
    a0, a1, ev = jax.block_until_ready(
        _batch_members(cli.seed_keys(args.seeds, args.seed), stacked, int(n_ticks))
    )
    wall = time.perf_counter() - t0
    ev, a0, a1 = (mt.as_dict(x) for x in jax.device_get((ev, a0, a1)))
    params = loaded[0][1]
    m = mt.episode_metrics(ev, lst_rate=lst_rate(params), facts_price=args.facts_price)
    per_seed = {**m, **ledger_drift(a0, a1)}
    _print_summary(args, params, n_ticks, wall, per_seed)
    print("wrote " + ", ".join(_write_outputs(args, params, ev, per_seed)))
    return 0


def run_batch(
    params: Params,
    n_ticks: int,
    seeds: int = 16,
    seed: int = 0,
    policy: Callable | None = None,
    chunk: int | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """One jitted, vmapped rollout over `seeds` keys.

    Returns (events, audit0, audit1): events = {TickEvents field: array (seeds, n_ticks, ...)};
    audit0 / audit1 = `jaxsim.audit` of the initial / final states, arrays (seeds, ...).
    `policy(key, state, params) -> Orders` must be hashable (a module-level function).
    `chunk`: run the ticks in chunks of this many (a last, shorter chunk compiles a program
    of its own), so that runs whose horizons are multiples of it share one compiled
    program; the events are the same, bit for bit. None: the whole horizon in one chunk.
    """
    n_ticks = int(n_ticks)
    chunk = n_ticks if chunk is None else int(chunk)
    if chunk < 1:
        raise ValueError(f"chunk must be at least one tick, got {chunk}")
    a0, a1, ev = jax.block_until_ready(
        _run_chunked(cli.seed_keys(seeds, seed), params, n_ticks, chunk, policy)
    )
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
    cli.add_scenario_args(ap)
    ap.add_argument("--seeds", type=int, default=16, help="seeds run in one batch (default 16)")
    ap.add_argument(
        "--seed", type=int, default=0, help="first PRNG seed (keys = split(PRNGKey(seed), seeds))"
    )
    cli.add_horizon_args(ap, "ticks to run", "hours of market time to run")
    ap.add_argument("--out", default=None, help="output folder (default runs/simulate/<scenario>)")
    cli.add_set_arg(
        ap,
        "override a config value by dotted key, YAML value (repeatable), "
        "e.g. rules.fees.taker=0.0004",
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


def _print_summary(args, params: Params, n_ticks: int, wall: float, per_seed: dict) -> None:
    """The metrics table (mean [min, max] over seeds) and the grid-edge warnings."""
    hours = n_ticks * float(params.dt) / 3600
    title = (
        f"{params.name}: {args.seeds} seeds x {n_ticks} ticks ({hours:.2f} h of market time, "
        f"dt {float(params.dt):g} s), {wall:.1f} s incl. compile — mean [min, max] over seeds"
    )
    if args.facts_price != "spot_px":
        title += f"; return stylized facts of {args.facts_price}"
    header, rows = rep.summary_table(per_seed, params)
    drift = max(float(np.max(per_seed[f"ledger_{k}"])) for k in LEDGER_ASSETS)
    rows.append(["ledger max |change| / total", f"{drift:.2e}", "", ""])
    cli.print_table(title, header, rows)
    rep.warn_grid_edges(per_seed)


def _write_outputs(args, params: Params, ev: dict, per_seed: dict) -> list[str]:
    """events.csv, summary.csv and dashboard.png in the output folder; what was written."""
    from jaxsim.tools.plots import dashboard

    out = Path(args.out) if args.out else _out_dir(params.name)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if not args.no_csv:
        n_rows = rep.write_events_csv(out / "events.csv", ev, args.csv_stride)
        written.append(f"{out / 'events.csv'} ({n_rows} rows)")
    rep.write_summary_csv(out / "summary.csv", per_seed)
    written.append(str(out / "summary.csv"))
    if not args.no_plot and cli.have_matplotlib("dashboard"):
        dashboard(out / "dashboard.png", ev, params, per_seed, args.plot_seed)
        written.append(str(out / "dashboard.png"))
    return written


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.list:
        print(_choices_text())
        return 0
    if args.seeds < 1:
        ap.error("--seeds must be >= 1")
    if args.facts_price not in FACTS_PRICES:
        ap.error(f"--facts-price {args.facts_price!r} is not one of the listed prices")
    if not 0 <= args.plot_seed < args.seeds:
        ap.error(f"--plot-seed must be in [0, {args.seeds})")
    from jaxsim.config.distribution import is_distribution

    if is_distribution(args.scenario):
        return run_distribution(args)
    try:
        cfg, params = load(args.scenario, args.variant, cli.parse_overrides(args.sets))
        n_ticks = horizon_ticks(cfg, params, args.ticks, args.hours)
    except ConfigError as e:
        return cli.config_error(e)

    t0 = time.perf_counter()
    ev, a0, a1 = run_batch(params, n_ticks, args.seeds, args.seed)
    wall = time.perf_counter() - t0
    m = mt.episode_metrics(ev, lst_rate=lst_rate(params), facts_price=args.facts_price)
    per_seed = {**m, **ledger_drift(a0, a1)}
    _print_summary(args, params, n_ticks, wall, per_seed)
    flows = rep.program_delivery(cfg, params, ev)
    if flows:
        cli.print_table("scripted flows (base units)", *rep.delivery_table(flows))
        rep.warn_shortfalls(flows)
        for r in flows:
            per_seed[f"program{r['row']}_traded"] = r["delivered"]
    print("wrote " + ", ".join(_write_outputs(args, params, ev, per_seed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
