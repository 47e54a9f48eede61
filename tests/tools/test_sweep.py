"""`python -m jaxsim.tools.sweep`: grid building, the sharded batched run, outputs, bad configs.

One tiny sweep (collateral_depeg, a 2 x 2 grid (paired maker/taker fees x BASE
volatility) x 3 seeds, 30 ticks) runs twice: in this
process on one device, and in a subprocess with four virtual CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=4`` must be set before jax starts,
hence the subprocess), through the CLI, in two chunks of 8 envs (2 per device) with 4
padding envs. The subprocess starts first and compiles while this process does, so the two
compilations overlap.

Tolerance of "sharded = single device": each device runs the same vmapped program, but XLA
compiles a batch of 12 on one device and a batch of 2 per device on four partitions into
differently fused code, so float32 results differ by reduction order (~1e-7 relative;
`test_properties` documents the same for batched vs one-by-one). In a quiet market those
differences stay at that size; a liquidation cascade amplifies them (measured: 1.7% on one
seed's STABLE low over the whole 3-hour depeg, and even float64 flips one ADL count), so
the test window ends before collateral_depeg's shock (tick 60) and asserts rtol 2e-6. The
grid points differ visibly (fees x volatility) and so do the seeds, so an env
landing in the wrong row, a bad pad or a chunk mix-up would fail by orders of magnitude.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

from jaxsim import metrics as mt
from jaxsim.config import ConfigError, scenario_config
from jaxsim.tools import sweep as sw
from jaxsim.tools import sweep_report, sweep_spec
from jaxsim.tools.simulate import run_batch

REPO = Path(__file__).resolve().parents[2]
TICKS, SEEDS = 30, 3
TINY = {
    "question": "tiny test sweep",
    "scenario": "collateral_depeg",
    "ticks": TICKS,
    "seeds": SEEDS,
    "axes": {
        "fees": [
            {"_label": "low", "rules.fees.maker": 0.0, "rules.fees.taker": 0.0002},
            {"_label": "high", "rules.fees.maker": 0.0004, "rules.fees.taker": 0.001},
        ],
        "exogenous.vol_annual.base": [0.3, 1.5],
    },
    "baseline": {"fees": "low", "exogenous.vol_annual.base": 0.3},
}
# Metrics that move in a quiet 30-tick window (the others are 0 or constant there).
MOVING = ("dd_spot", "dd_perp", "dd_mark", "ret_spot", "low_spot", "fees", "basis_max_abs")


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sweep_cfg") / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def runs(tiny_file, tmp_path_factory):
    """(in-process 1-device result, its output dir, subprocess 4-device output dir, log)."""
    out4 = tmp_path_factory.mktemp("sweep4")
    # Appended to the inherited flags, so the subprocess compiles as this process does.
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4"
    env = {**os.environ, "XLA_FLAGS": flags.strip()}
    env["JAX_PLATFORMS"] = "cpu"
    cmd = [sys.executable, "-m", "jaxsim.tools.sweep", str(tiny_file), "--out", str(out4)]
    cmd += ["--chunk", "8", "--no-progress"]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        spec = sw.load_sweep(tiny_file)
        grid = sw.build_grid(spec)
        res = sw.run_sweep(grid, devices=1, progress=False)
        out1 = tmp_path_factory.mktemp("sweep1")
        sweep_report.write_outputs(res, out1)
    finally:
        log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log
    return res, out1, out4, log


def test_sharded_equals_single_device(runs):
    res, _, out4, log = runs
    assert "on 4 device(s)" in log and "2 chunk(s) of 8" in log, log
    meta = yaml.safe_load((out4 / "sweep.json").read_text())
    assert len(meta["devices"]) == 4
    sharded = np.load(out4 / "sweep.npz")
    for k in sw.METRICS:
        a, b = res.metrics[k], sharded[k]
        assert a.shape == b.shape == (4, SEEDS), k
        # atol: drawdowns and returns are 1 - p / p_ref of float32 prices, so one rounding
        # step of the price ratio (2^-24 ~ 6e-8) is an absolute difference, whatever the
        # metric's size; 4 such steps are allowed.
        np.testing.assert_allclose(b, a, rtol=2e-6, atol=4 * 2.0**-24, equal_nan=True, err_msg=k)
    # The comparison has teeth: every env (point x seed) differs from every other one in
    # some metric by far more than the tolerance, so a misplaced env would fail.
    table = np.stack([res.metrics[k].ravel() for k in MOVING], 1)
    for i in range(len(table)):
        for j in range(i):
            assert np.max(np.abs(table[i] - table[j]) / (np.abs(table[j]) + 1e-12)) > 1e-4
    for k in MOVING:
        assert np.all(np.isfinite(res.metrics[k])), k


def test_outputs_written(runs):
    res, out1, _, _ = runs
    with open(out1 / "sweep.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    head = rows[0]
    assert head[:4] == ["point", "fees", "exogenous.vol_annual.base", "seed"]
    assert set(sw.METRICS) <= set(head)
    assert len(rows) == 1 + 4 * SEEDS
    # Point-major, axes in order, the first axis slowest.
    assert [r[1] for r in rows[1:]] == ["low"] * 6 + ["high"] * 6
    assert [r[2] for r in rows[1:4]] == ["0.3"] * 3
    col = head.index("dd_spot")
    got = np.array([float(r[col]) for r in rows[1:]]).reshape(4, SEEDS)
    np.testing.assert_allclose(got, res.metrics["dd_spot"], rtol=1e-7)
    with open(out1 / "sweep_mean.csv", newline="", encoding="utf-8") as f:
        mrows = list(csv.reader(f))
    assert len(mrows) == 1 + 4
    mcol = mrows[0].index("dd_spot")
    np.testing.assert_allclose(
        [float(r[mcol]) for r in mrows[1:]], res.metrics["dd_spot"].mean(1), rtol=1e-6
    )
    png = out1 / "heatmaps.png"
    assert png.exists() and png.stat().st_size > 10_000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    header, trows = sweep_report.table_rows(res)
    assert "dd_spot/base" in header and trows[0][0].endswith("(base)")


# ------------------------------------------------------------------ specs and errors


def _spec(**changes) -> dict:
    out = {**TINY, **changes}
    if "axes" in changes and "baseline" not in changes:
        out.pop("baseline")
    return out


def test_grid_shape_and_paired_axis():
    spec = sw.load_sweep(_spec())
    assert spec.shape == (2, 2) and spec.n_points == 4
    grid = sw.build_grid(spec)
    assert grid.n_ticks == TICKS
    # Paired axis: maker and taker fees move together.
    np.testing.assert_allclose(grid.params.rules.maker_fee, [0.0, 0.0, 0.0004, 0.0004])
    np.testing.assert_allclose(grid.params.rules.taker_fee, [0.0002, 0.0002, 0.001, 0.001])
    np.testing.assert_allclose(
        grid.params.exo.vol_per_sqrt_s[:, 0] / grid.params.exo.vol_per_sqrt_s[0, 0],
        [1, 5, 1, 5],
        rtol=1e-6,
    )
    assert grid.label(3) == "fees=high, exogenous.vol_annual.base=1.5"


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"axes": {"rules.fees.nonsense": [0.1, 0.2]}}, "unknown key"),
        ({"axes": {"dims.n_levels": [32, 64]}}, "cannot be swept.*dims"),
        ({"axes": {"x": [{"dims.n_accounts": 30}]}}, "cannot be swept.*dims"),
        ({"axes": {"dt_s": [10.0, 30.0]}}, "cannot be swept.*dt_s"),
        ({"overrides": {"horizon_s": 60.0}}, "horizon_s"),
        ({"axes": {"rules.fees.taker": [0.0005, 0.5]}}, r"rules\.fees\.taker = 0\.5"),
        ({"axes": {"rules.index.stable.internal": [0.5]}}, "must sum to 1"),
        ({"axes": {"rules.fees.taker": []}}, "non-empty list"),
        ({"axes": {}}, "needs `axes:`"),
        ({"seeds": 0}, "seeds must be"),
        ({"bogus": 1}, "unknown sweep key 'bogus'"),
        ({"heatmaps": ["nope"]}, "unknown metric 'nope'"),
        ({"baseline": {"fees": "nope", "exogenous.vol_annual.base": 0.3}}, "baseline"),
        ({"axes": {"max_leverage_cap": [10, 0.5]}}, r"max_leverage_cap = 0\.5"),
    ],
)
def test_bad_sweep_configs(changes, match):
    with pytest.raises(ConfigError, match=match):
        sw.build_grid(sw.load_sweep(_spec(**changes)))


def test_cli_bad_config_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(_spec(axes={"dims.n_accounts": [24, 32]})), encoding="utf-8")
    assert sw.main([str(bad), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "dims.n_accounts" in err and "cannot be swept" in err
    assert sw.main([str(tmp_path / "missing.yaml")]) == 2


def test_shipped_sweeps_build():
    for path in sorted((REPO / "configs" / "sweeps").glob("*.yaml")):
        spec = sw.load_sweep(path)
        grid = sw.build_grid(spec)
        assert spec.n_points >= 4 and grid.n_ticks > 100, path.name
        assert spec.question, path.name


def test_cap_leverage_matches_the_scenario_variant():
    """cap 50 leaves leverage_accident as written; cap 10 sizes the cohorts like its
    leverage_cap_10x variant (positions within 2%)."""
    cfg = scenario_config("leverage_accident")
    users = {u["name"]: u for u in cfg["accounts"]["users"]}
    same = sweep_spec.cap_leverage(cfg, 50)
    for u in same["accounts.users"]:
        assert u.get("position", 0.0) == users[u["name"]].get("position", 0.0)
    var = {
        u["name"]: u
        for u in scenario_config("leverage_accident", "leverage_cap_10x")["accounts"]["users"]
    }
    capped = sweep_spec.cap_leverage(cfg, 10)
    for u in capped["accounts.users"]:
        assert u["leverage"] <= 10
        want = var[u["name"]].get("position", 0.0)
        assert u.get("position", 0.0) == pytest.approx(want, rel=0.02), u["name"]
    assert max(float(r[1]) for r in capped["rules.tiers"]) == 10
    assert all(c.get("lev_target", 0) <= 10 for c in capped["population.cohorts"])


# ------------------------------------------------------------------ one metric definition


@pytest.fixture(scope="module")
def point0_events(runs):
    """Grid point 0 run through `jaxsim.tools.simulate.run_batch` (same keys): its events."""
    res = runs[0]
    params = jax.tree_util.tree_map(lambda x: x[0], res.grid.params)
    ev, _, _ = run_batch(params, res.grid.n_ticks, SEEDS, seed=res.grid.spec.seed)
    return params, ev


def test_sweep_figures_equal_episode_metrics(runs, point0_events):
    """The sweep's in-scan reductions of point 0 equal `episode_metrics` of the events the
    simulate program gives for the same keys (two programs: float32 rounding apart)."""
    res = runs[0]
    params, ev = point0_events
    m = mt.episode_metrics(ev, lst_rate=float(params.exo.lst_rate))
    for k in sw.METRICS:
        np.testing.assert_allclose(
            res.metrics[k][0], m[k], rtol=1e-4, atol=1e-6, equal_nan=True, err_msg=k
        )


def test_stream_reducers_equal_episode_metrics_on_same_events(point0_events):
    """Every metric the sweep reports, folded tick by tick in JAX (float32) from the same
    events, equals `episode_metrics` (NumPy float64). The events are made eventful
    (liquidations, insurance draws, ADL, a price fall) so that no metric is trivially 0."""
    params, ev = point0_events
    rng = np.random.default_rng(0)
    ev = {k: np.array(v) for k, v in ev.items()}
    shape = ev["spot_px"].shape
    fall = np.linspace(1.0, 0.7, shape[1]) * np.exp(rng.normal(0, 0.01, shape))
    for k in ("spot_px", "perp_px", "mark_px"):
        ev[k] = (ev[k] * fall).astype(np.float32)
    ev["index_px"][..., 0] *= fall.astype(np.float32)
    for k in ("liq_notional_long", "liq_notional_short", "adl_notional", "bad_debt"):
        ev[k] = (rng.exponential(1e5, shape) * (rng.random(shape) < 0.3)).astype(np.float32)
    ev["insurance_draw"] = rng.normal(0, 1e3, shape).astype(np.float32)
    ev["insurance_fund"] = (2e6 - np.cumsum(ev["insurance_draw"], 1)).astype(np.float32)
    ev["liq_accounts"] = rng.integers(0, 3, shape).astype(ev["liq_accounts"].dtype)
    ev["adl_count"] = rng.integers(0, 2, shape).astype(ev["adl_count"].dtype)
    window = 7  # a window shorter than the episode, so liq_peak_1h is a true rolling max

    def fold(one):
        def body(state, xs):
            tick, i = xs
            return sw.stream_update(state, tick, i, params.exo.lst_rate), None

        state = sw.stream_init(sw.METRICS, jnp.float32, window)
        state, _ = jax.lax.scan(body, state, (one, jnp.arange(shape[1])))
        return sw.stream_finish(state, sw.METRICS)

    streamed = jax.jit(jax.vmap(fold))({k: jnp.asarray(v) for k, v in ev.items()})
    window_dt = 3600.0 / window
    ev["time_s"] = np.broadcast_to(window_dt * np.arange(1, shape[1] + 1), shape).copy()
    m = mt.episode_metrics(ev, lst_rate=float(params.exo.lst_rate), dt=window_dt)
    for k in sw.METRICS:
        assert np.all(np.isfinite(m[k])) or k == "liq_long_frac", k
        np.testing.assert_allclose(
            np.asarray(streamed[k]), m[k], rtol=2e-5, atol=1e-6, equal_nan=True, err_msg=k
        )
    assert m["liq_peak_1h"].min() > m["liq_peak_tick"].max() > 0
