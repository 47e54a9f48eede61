"""`python -m jaxsim.tools.simulate` (CLI and API) and the episode metrics of `jaxsim.metrics`.

The batched rollout (calm, 2 seeds x 60 ticks) compiles once for the module: the CLI run,
the API run and `python -m jaxsim.tools` share the jitted function and its shapes. The metric
tests use small hand-made arrays with known answers.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from jaxsim import metrics as mt
from jaxsim.config import ConfigError
from jaxsim.tools import cli
from jaxsim.tools import simulate as sim
from jaxsim.tools import simulate_report as rep

SEEDS, TICKS = 2, 60
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim_calm")
    rc = sim.main(
        ["--scenario", "calm", "--seeds", str(SEEDS), "--ticks", str(TICKS), "--out", str(out)]
    )
    return rc, out


@pytest.fixture(scope="module")
def api_run():
    return sim.simulate("calm", seeds=SEEDS, n_ticks=TICKS)


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


# ------------------------------------------------------------------ CLI and API


def test_cli_writes_events_summary_and_dashboard(cli_run):
    rc, out = cli_run
    assert rc == 0
    head, rows = _read_csv(out / "events.csv")
    assert len(rows) == SEEDS * TICKS
    assert len(head) == len(set(head)), "duplicate column names"
    for col in (
        "seed",
        "t",
        "time_s",
        "spot_px",
        "perp_px",
        "ext_px_base",
        "index_px_base",
        "index_px_lst",
        "mark_px",
        "basis",
        "funding_rate",
        "oi_long",
        "oi_short",
        "depth_1pct_perp_bid",
        "depth_1pct_stable_ask",
        "liq_notional_long",
        "liq_notional_short",
        "collateral_sold_usdt",
        "collateral_sold_qty_stable",
        "insurance_fund",
        "adl_count",
        "collateral_px_stable",
        "collateral_index_lst",
    ):
        assert col in head, col
    assert all(len(r) == len(head) for r in rows)
    seeds = [int(r[0]) for r in rows]
    assert seeds == [s for s in range(SEEDS) for _ in range(TICKS)]
    ti = head.index("t")
    assert [int(r[ti]) for r in rows[:TICKS]] == list(range(1, TICKS + 1))

    shead, srows = _read_csv(out / "summary.csv")
    assert len(srows) == SEEDS
    for col in ("seed", "dd_spot", "dd_perp", "liq_long", "liq_long_frac", "stable_low"):
        assert col in shead, col
    for col in ("if_draw", "adl_count", "kurt_1tick", "acf_absret_10", "ledger_usdt"):
        assert col in shead, col
    assert [r[0] for r in srows] == [str(i) for i in range(SEEDS)]

    png = (out / "dashboard.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000


def test_csv_matches_api_events(cli_run, api_run):
    """Same seeds through the API give the CSV's numbers, column by column."""
    _, out = cli_run
    params, ev = api_run
    assert params.name == "calm"
    assert ev["spot_px"].shape == (SEEDS, TICKS)
    assert ev["depth_1pct"].shape == (SEEDS, TICKS, 4, 2)
    head, rows = _read_csv(out / "events.csv")
    data = np.array(rows, dtype=np.float64)
    col = lambda name: data[:, head.index(name)].reshape(SEEDS, TICKS)
    np.testing.assert_allclose(col("index_px_base"), ev["index_px"][..., 0], rtol=1e-6)
    np.testing.assert_allclose(col("ext_px_stable"), ev["ext_px"][..., 1], rtol=1e-6)
    np.testing.assert_allclose(col("depth_1pct_perp_bid"), ev["depth_1pct"][..., 1, 0], rtol=1e-6)
    np.testing.assert_allclose(col("collateral_px_lst"), ev["collateral_px"][..., 1], rtol=1e-6)
    # the two seeds are different paths
    assert not np.allclose(ev["ext_px"][0, :, 0], ev["ext_px"][1, :, 0])


def test_api_metrics_shapes_and_ledger(api_run):
    params, ev = api_run
    m = mt.episode_metrics(ev, lst_rate=sim.lst_rate(params))
    for k, v in m.items():
        assert np.shape(v) == (SEEDS,), k
    assert np.all((m["dd_ext"] > 0) & (m["dd_ext"] < 0.2))
    fund0 = float(params.accounts.bal[params.dims.insurance, 0])
    np.testing.assert_allclose(m["if_initial"], fund0, rtol=1e-6)
    s = mt.summarize(m)
    assert s["dd_ext"]["min"] <= s["dd_ext"]["mean"] <= s["dd_ext"]["max"]
    assert s["dd_ext"]["n"] == SEEDS


def test_chunked_run_equals_one_rollout(api_run):
    """`run_batch(chunk=...)` continues each chunk from the last one's states with the
    rollout's own tick keys, in one compiled program for every full chunk: the events and
    both audits are those of the run in one piece, bit for bit (the scenario tests run their
    48 h calm day as chunks of the 6 h program)."""
    params, ev = api_run
    ev1, a0, a1 = sim.run_batch(params, TICKS, SEEDS, 0)  # the API run's program
    ev2, b0, b1 = sim.run_batch(params, TICKS, SEEDS, 0, chunk=TICKS // 2)
    assert set(ev2) == set(ev1)
    for k in ev1:
        np.testing.assert_array_equal(ev2[k], ev1[k], err_msg=k)
        np.testing.assert_array_equal(ev1[k], ev[k], err_msg=k)
    for k in a1:
        np.testing.assert_array_equal(b0[k], a0[k], err_msg=k)
        np.testing.assert_array_equal(b1[k], a1[k], err_msg=k)
    with pytest.raises(ValueError, match="chunk"):
        sim.run_batch(params, TICKS, SEEDS, 0, chunk=0)


def test_python_m_jaxsim_tools_runs(capsys, cli_run):
    from jaxsim.tools.__main__ import main

    main(["--scenario", "calm", "--ticks", str(TICKS), "--seeds", str(SEEDS)])
    out = capsys.readouterr().out
    assert "spot DD %" in out and "ledger   usdt" in out


# The agent (100k USDT in calm) buys 0.5 BASE over the run, which it can pay for, and then
# 1000 BASE, which it cannot (~1e8 USDT at 100k).
_PROGRAMS = (
    "[{account: agent, market: spot, side: buy, start_s: 0.0, duration_s: 1800.0, qty: 0.5},"
    " {account: agent, market: spot, side: buy, start_s: 900.0, duration_s: 3600.0,"
    " qty: 1000.0},"
    " {account: agent, market: spot, side: sell, start_s: 0.0, duration_s: 1800.0,"
    " qty: 5.0, limit_pct: 1.0, carry: true}]"
)


def test_program_delivery_reports_what_each_program_traded(capsys, tmp_path):
    """Scheduled quantity within the horizon (60 ticks of 30 s), traded quantity per seed
    (the events' prog_filled summed), and the CLI's warning for the program that fell short."""
    ov = {"population.programs": yaml.safe_load(_PROGRAMS)}
    cfg, params = sim.load("calm", overrides=ov)
    _, ev = sim.simulate("calm", seeds=SEEDS, n_ticks=TICKS, overrides=ov)
    assert ev["prog_filled"].shape == (SEEDS, TICKS, params.dims.n_programs)
    rows = rep.program_delivery(cfg, params, ev)
    assert [(r["row"], r["account"], r["market"], r["side"]) for r in rows] == [
        (0, "agent", "BASE/USDT", "buy"),
        (1, "agent", "BASE/USDT", "buy"),
        (2, "agent", "BASE/USDT", "sell"),
    ]
    # 0.5 over its 60 ticks; 1000 over 120 ticks of which ticks 30-59 are in the horizon.
    assert rows[0]["scheduled"] == pytest.approx(0.5, rel=1e-5)
    assert rows[1]["scheduled"] == pytest.approx(250.0, rel=1e-5)
    np.testing.assert_allclose(rows[0]["delivered"], 0.5, rtol=1e-4)
    # Each slice of the second (1000 / 120 = 8.3 BASE, ~833k USDT) costs more than the
    # agent holds: every one is rejected whole.
    np.testing.assert_array_equal(rows[1]["delivered"], 0.0)
    # The third sells BASE the agent does not hold: rejected every tick, carried and
    # rejected again (the whole schedule due by then).
    np.testing.assert_array_equal(rows[2]["delivered"], 0.0)
    assert rows[2]["carry"] and rows[2]["limit_pct"] == pytest.approx(1.0)
    assert not rows[0]["carry"] and rows[0]["limit_pct"] == 0.0
    np.testing.assert_allclose(
        ev["prog_filled"][:, :, 3:], 0.0, err_msg="inactive rows trade nothing"
    )
    header, body = rep.delivery_table(rows)
    assert header[0] == "scripted flow" and body[0][0] == "agent buy BASE/USDT"
    assert body[0][3] == "100.00%" and body[1][3] == "0.00%"

    rc = sim.main(
        [
            "--scenario",
            "calm",
            "--seeds",
            str(SEEDS),
            "--ticks",
            str(TICKS),
            "--out",
            str(tmp_path),
            "--no-csv",
            "--set",
            f"population.programs={_PROGRAMS}",
        ]
    )
    assert rc == 0
    cap = capsys.readouterr()
    assert "scripted flows" in cap.out and "agent buy BASE/USDT" in cap.out
    assert "warning: agent's buy program on BASE/USDT traded" in cap.err
    assert cap.err.count(" program on ") == 2  # the first program traded all of its schedule
    assert "warning: agent's sell program on BASE/USDT traded 0 of its 5" in cap.err
    assert "its 1% limit" in cap.err and "carried to the next tick" in cap.err
    assert cap.err.count("the rest is not carried over") == 1
    head, rows_csv = _read_csv(tmp_path / "summary.csv")
    traded = np.array([float(r[head.index("program0_traded")]) for r in rows_csv])
    np.testing.assert_allclose(traded, rows[0]["delivered"], rtol=1e-6)
    assert "program1_traded" in head
    assert (tmp_path / "dashboard.png").stat().st_size > 0  # panel (4) draws the flows


def test_bad_scenario_and_variant_exit_2(capsys):
    assert sim.main(["--scenario", "no_such_scenario", "--ticks", "5"]) == 2
    err = capsys.readouterr().err
    assert "no_such_scenario" in err and "calm" in err
    assert sim.main(["--scenario", "calm", "--variant", "no_such_variant"]) == 2
    err = capsys.readouterr().err
    assert "no_such_variant" in err and "allowed" in err
    assert sim.main(["--scenario", "calm", "--set", "rules.fees.taker=abc"]) == 2
    assert "taker" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="calm"):
        sim.simulate("no_such_scenario", seeds=1, n_ticks=5)


def test_bad_scenario_process_exit_code():
    r = subprocess.run(
        [sys.executable, "-m", "jaxsim.tools.simulate", "--scenario", "no_such_scenario"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    assert "unknown scenario" in r.stderr and "calm" in r.stderr


def test_overrides_and_horizon():
    ov = cli.parse_overrides(["rules.fees.taker=0.001", "exogenous.shocks=[]"])
    assert ov == {"rules.fees.taker": 0.001, "exogenous.shocks": []}
    with pytest.raises(ConfigError):
        cli.parse_overrides(["no_equals_sign"])
    cfg, params = sim.load("calm", None, ov)
    assert float(params.rules.taker_fee) == pytest.approx(0.001)
    dt = float(params.dt)
    bare = {k: v for k, v in cfg.items() if k != "horizon_s"}
    assert sim.horizon_ticks(bare, params) == sim.DEFAULT_TICKS
    if cfg.get("horizon_s") is not None:  # the scenario's own episode length
        assert sim.horizon_ticks(cfg, params) == round(cfg["horizon_s"] / dt)
    assert sim.horizon_ticks({**cfg, "horizon_s": 7200.0}, params) == round(7200 / dt)
    assert sim.horizon_ticks({**cfg, "horizon_s": 7200.0}, params, hours=1.0) == round(3600 / dt)
    assert sim.horizon_ticks({**cfg, "horizon_s": 7200.0}, params, n_ticks=7) == 7
    with pytest.raises(ConfigError):
        sim.horizon_ticks(cfg, params, n_ticks=0)


def test_summary_table_prints_brackets_and_values(capsys):
    per_seed = {"dd_spot": np.array([0.1, 0.3]), "liq_long": np.array([2e6, 4e6])}
    _, params = sim.load("calm")
    header, rows = rep.summary_table(per_seed, params)
    assert rows == [
        ["spot max drawdown", "20.00%", "10.00%", "30.00%"],
        ["liquidated long (USDT)", "3M", "2M", "4M"],
    ]
    cli.print_table("calm: mean [min, max] over seeds", header, rows)
    out = capsys.readouterr().out
    assert "[min, max]" in out and "20.00%" in out and "4M" in out


# ------------------------------------------------------------------ metrics on known arrays


def _events(s: int = 2, t: int = 5, **fields) -> dict[str, np.ndarray]:
    """A quiet synthetic event log (S seeds x T ticks); `fields` replace columns."""
    ones = np.ones((s, t))
    ev = {
        "time_s": np.broadcast_to(10.0 * np.arange(1, t + 1), (s, t)).copy(),
        "spot_px": 100 * ones,
        "perp_px": 100 * ones,
        "mark_px": 100 * ones,
        "ext_px": np.stack([100 * ones, ones, 105 * ones], -1),
        "index_px": np.stack([100 * ones, ones, 105 * ones], -1),
        "basis": 0 * ones,
        "mark_index_gap": 0 * ones,
        "funding_rate": 1e-4 * ones,
        "oi_long": 10 * ones,
        "oi_short": 10 * ones,
        "liq_notional_long": 0 * ones,
        "liq_notional_short": 0 * ones,
        "liq_accounts": 0 * ones,
        "collateral_px": np.stack([ones, 105 * ones], -1),
        "collateral_index": np.stack([ones, 105 * ones], -1),
        "collateral_sold": np.zeros((s, t, 4)),
        "collateral_sold_usdt": 0 * ones,
        "insurance_fund": 1000 * ones,
        "insurance_draw": 0 * ones,
        "bad_debt": 0 * ones,
        "adl_count": 0 * ones,
        "adl_notional": 0 * ones,
        "forced_reduce_notional": 0 * ones,
        "fees": 0 * ones,
        "rules_changed": 0 * ones,
    }
    ev.update({k: np.asarray(v, np.float64) for k, v in fields.items()})
    return ev


def test_max_drawdown():
    assert mt.max_drawdown([100, 120, 90, 110]) == pytest.approx(0.25)
    np.testing.assert_allclose(
        mt.max_drawdown([[100, 120, 90, 110], [1, 2, 3, 4], [4, 3, 2, 1]]), [0.25, 0.0, 0.75]
    )
    m = mt.episode_metrics(_events(t=4, spot_px=[[100, 120, 90, 110], [100, 100, 100, 50]]))
    np.testing.assert_allclose(m["dd_spot"], [0.25, 0.5])
    np.testing.assert_allclose(m["dd_perp"], [0.0, 0.0])
    np.testing.assert_allclose(m["low_spot"], [0.9, 0.5])
    np.testing.assert_allclose(m["ret_spot"], [0.1, -0.5])


def test_liquidation_insurance_and_collateral_metrics():
    ev = _events(
        t=4,
        liq_notional_long=[[0, 300, 600, 0], [0, 0, 0, 0]],
        liq_notional_short=[[100, 0, 200, 0], [0, 0, 0, 0]],
        # seed 0: fund 1000 -> 900 -> 700 -> 950 -> 1000 (draws net of fees)
        insurance_fund=[[900, 700, 950, 1000], [1000, 1000, 1010, 1020]],
        insurance_draw=[[100, 200, -250, -50], [0, 0, -10, -10]],
        insurance_equity=[[900, 650, 950, 1000], [1000, 1000, 1010, 1020]],
        adl_count=[[0, 2, 1, 0], [0, 0, 0, 0]],
        collateral_px=np.stack([[[1, 0.97, 0.9, 0.95]] * 2, np.full((2, 4), 100.8)], -1),
        oi_long=[[10, 12, 6, 6], [10, 10, 10, 10]],
        oi_short=[[10, 12, 6, 6], [10, 10, 10, 10]],
    )
    m = mt.episode_metrics(ev, lst_rate=1.05)
    np.testing.assert_allclose(m["liq_long"], [900, 0])
    np.testing.assert_allclose(m["liq_short"], [300, 0])
    assert m["liq_long_frac"][0] == pytest.approx(0.75)
    assert np.isnan(m["liq_long_frac"][1])  # nothing liquidated: undefined, not 0
    np.testing.assert_allclose(m["liq_peak_tick"], [800, 0])
    np.testing.assert_allclose(m["if_initial"], [1000, 1000])
    np.testing.assert_allclose(m["if_draw"], [300, 0])
    np.testing.assert_allclose(m["if_draw_total"], [300, 0])
    np.testing.assert_allclose(m["if_equity_low"], [650, 1000])
    np.testing.assert_allclose(m["adl_count"], [3, 0])
    np.testing.assert_allclose(m["stable_low"], [0.9, 0.9])
    np.testing.assert_allclose(m["lst_px_rel_low"], [0.96, 0.96])
    np.testing.assert_allclose(m["lst_index_rel_low"], [1.0, 1.0])
    np.testing.assert_allclose(m["oi_change"], [-0.4, 0.0])
    np.testing.assert_allclose(m["oi_from_peak"], [-0.5, 0.0])
    s = mt.summarize(m)
    assert s["liq_long_frac"] == {"mean": 0.75, "min": 0.75, "max": 0.75, "n": 1}


def test_grid_edge_fractions():
    """edge_<book> = share of ticks flagged by the engine's grid_edge, per seed; absent
    from events without the field."""
    edge = np.zeros((2, 5, 4), bool)
    edge[0, 1:3, 0] = True  # seed 0: spot on the grid's edge in 2 of 5 ticks
    edge[1, :, 1] = True  # seed 1: perp in every tick
    m = mt.episode_metrics(_events(grid_edge=edge))
    np.testing.assert_allclose(m["edge_spot"], [0.4, 0.0])
    np.testing.assert_allclose(m["edge_perp"], [0.0, 1.0])
    np.testing.assert_allclose(m["edge_stable"] + m["edge_lst"], [0.0, 0.0])
    assert "edge_spot" not in mt.episode_metrics(_events())


def test_venue_impact_metrics():
    """venue_impact_low / _end: the venues' move caused by the flow here, exp(offset) - 1
    at its lowest and at the end; absent from events without the field."""
    imp = np.zeros((2, 4))
    imp[0] = [0.0, -0.02, -0.05, -0.03]
    imp[1] = [0.0, 0.01, 0.02, 0.0]
    m = mt.episode_metrics(_events(t=4, venue_impact=imp))
    np.testing.assert_allclose(m["venue_impact_low"], [np.expm1(-0.05), 0.0])
    np.testing.assert_allclose(m["venue_impact_end"], [np.expm1(-0.03), 0.0])
    assert "venue_impact_low" not in mt.episode_metrics(_events())


def test_liq_backlog_max():
    """liq_backlog_max: the most accounts left queued for liquidation at a tick's end;
    absent from events without the field."""
    m = mt.episode_metrics(_events(t=4, liq_backlog=[[0, 3, 1, 0], [0, 0, 0, 0]]))
    np.testing.assert_allclose(m["liq_backlog_max"], [3, 0])
    assert "liq_backlog_max" not in mt.episode_metrics(_events())


def test_excess_kurtosis_known_samples():
    assert mt.excess_kurtosis([-1, -1, 1, 1]) == pytest.approx(-2.0)
    assert mt.excess_kurtosis([0, 0, 0, 0, 0, 0, 0, 0, 1, -1]) == pytest.approx(2.0)
    assert np.isnan(mt.excess_kurtosis([3.0, 3.0, 3.0]))
    rng = np.random.default_rng(0)
    assert abs(mt.excess_kurtosis(rng.standard_normal(200_000))) < 0.05
    assert mt.excess_kurtosis(rng.standard_t(5, 200_000)) > 2.0  # theory: 6


def _ar1(phi: float, n: int, rng) -> np.ndarray:
    e = rng.standard_normal(n)
    x = np.zeros(n)
    for i in range(1, n):
        x[i] = phi * x[i - 1] + e[i]
    return x


def test_autocorrelation_signs():
    np.testing.assert_allclose(mt.autocorr([1, -1, 1, -1], [1]), [-0.75])
    rng = np.random.default_rng(1)
    pos, neg, iid = _ar1(0.7, 20_000, rng), _ar1(-0.7, 20_000, rng), rng.standard_normal(20_000)
    ac = mt.autocorr(np.stack([pos, neg, iid]), [1, 2])
    assert ac.shape == (3, 2)
    assert 0.65 < ac[0, 0] < 0.75 and 0.44 < ac[0, 1] < 0.54
    assert -0.75 < ac[1, 0] < -0.65 and ac[1, 1] > 0.4
    assert np.all(np.abs(ac[2]) < 0.03)


def test_stylized_facts_from_prices():
    """Volatility clustering in a price path shows as acf(|r|) > 0 with acf(r) ~ 0."""
    rng = np.random.default_rng(2)
    n = 20_000
    vol = np.exp(_ar1(0.99, n, rng) * 0.1)  # slowly varying volatility
    r = 1e-3 * vol * rng.standard_normal(n)
    px = 100 * np.exp(np.concatenate([[0.0], np.cumsum(r)]))
    m = mt.episode_metrics(_events(s=1, t=n + 1, spot_px=px[None]), dt=10.0, agg_s=300.0)
    assert m["kurt_1tick"][0] > 0.2
    assert abs(m["acf_ret_1"][0]) < 0.03
    assert m["acf_absret_1"][0] > 0.05 and m["acf_absret_mean"][0] > 0.05
    assert m["frac_zero_ret"][0] == 0.0
    assert np.isnan(mt.episode_metrics(_events())["kurt_1tick"]).all()  # flat price


def test_facts_series_mid_price():
    bid = np.zeros((1, 3, 4))
    ask = np.zeros((1, 3, 4))
    bid[0, :, 0] = [99, 0, 101]  # tick 1: empty bid side -> falls back to the last price
    ask[0, :, 0] = [101, 103, 103]
    ev = _events(s=1, t=3, spot_px=[[100, 100, 100]], best_bid=bid, best_ask=ask)
    np.testing.assert_allclose(mt.facts_series(ev, "spot_mid"), [[100, 100, 102]])
    np.testing.assert_allclose(mt.facts_series(ev, "spot_px"), [[100, 100, 100]])
    m = mt.episode_metrics(ev, facts_price="spot_mid")
    np.testing.assert_allclose(m["frac_zero_ret"], [0.5])


def test_first_crossing_and_lead_lag():
    x = np.array([100, 99, 96, 94, 90.0])
    assert mt.first_crossing(x, 0.95) == 3
    assert mt.first_crossing(x, 0.5) == -1
    assert mt.first_crossing(x, 97, relative=False) == 2
    assert mt.first_crossing(np.cumsum([0, 0, 5, 0]), 0, relative=False, below=False) == 2
    np.testing.assert_array_equal(mt.first_crossing(np.stack([x, x[::-1]]), 0.95), [3, -1])
    perp = np.array([100, 97, 94, 90, 88.0])
    spot = np.array([100, 100, 98, 94, 90.0])
    assert mt.lead_lag(perp, spot, 0.95) == 1  # perp below 95 at tick 2, spot at tick 3
    assert mt.lead_lag(spot, perp, 0.95) == -1
    assert mt.lead_lag(perp, np.full(5, 100.0), 0.95) == 3  # y never crosses: counts as T = 5
    sold = np.array([0, 1, 1, 1, 1.0])
    assert (
        mt.lead_lag(
            sold,
            spot,
            0.0,
            y_kw=dict(threshold=0.99, relative=True, below=True),
            relative=False,
            below=False,
        )
        == 1
    )
