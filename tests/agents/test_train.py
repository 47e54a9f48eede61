"""train.py end to end on a tiny budget: train -> evaluate -> report, resume, CLI errors.

The first run on a machine compiles the exchange step and the evaluation scan (a minute
or two each on a small CPU); with the persistent compilation cache (the repository's
.jax_cache, see conftest.py and `agents.enable_compile_cache`) later runs load them in
seconds.
"""

from __future__ import annotations

import csv
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import jaxsim
import train
from agents.heuristics import ROLE_POLICIES
from agents.sb3_train import (
    TRAIN_CONFIG_DIR,
    TrainConfigError,
    checkpoints,
    load_hyperparams,
    parse_overrides,
    torch_threads_for,
)

N_ENVS = 4
TINY = [
    "--role", "market_maker", "--scenario", "calm", "--algo", "ppo",
    "--n-envs", str(N_ENVS), "--seed", "0", "--no-progress",
    "--eval-freq", "128", "--eval-episode-steps", "8",
    "-params", "n_steps:32", "batch_size:64", "n_epochs:1", "env_kwargs.max_episode_steps:16",
]  # fmt: skip
# The end-to-end run trains on a scenario distribution (each env draws its member at
# reset), so one compiled training program covers both paths.
TINY_DIST = [a if a != "calm" else "crashes" for a in TINY]


def _exit_code(argv, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as e:
        train.main(argv)
    return e.value.code, capsys.readouterr().err


# ============================================================== CLI errors


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--role", "banker"], "market_maker"),
        (["train", "--scenario", "moon"], "calm"),
        (["--algo", "dqn"], "ppo"),
        (["--variant", "nope"], "wide_fees"),
        (["evaluate", "--run-dir", "x", "--scenarios", "moon"], "calm"),
        (["evaluate", "--run-dir", "/nonexistent/run"], "--role"),
        (["-n", "0"], ">= 1"),
        (["-params", "no_colon"], "key:value"),
        (["--torch-threads", "0"], ">= 1"),
    ],
)
def test_bad_arguments_exit_2_with_choices(argv, needle, capsys):
    code, err = _exit_code(argv, capsys)
    assert code == 2
    assert needle in err


def test_resume_keeps_the_runs_scenario(tmp_path, capsys):
    """--resume continues the run's own training: its role, scenario, variant, algorithm
    and backend come from config.yaml, and a different one given explicitly is an error."""
    run = {"role": "market_maker", "scenario": "crashes", "variant": None, "algo": "ppo"}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({**run, "backend": "jax"}))
    code, err = _exit_code(["--resume", "--run-dir", str(tmp_path), "--scenario", "calm"], capsys)
    assert code == 2 and "--scenario crashes" in err
    code, err = _exit_code(["--resume", "--run-dir", str(tmp_path), "--backend", "sb3"], capsys)
    assert code == 2 and "--backend jax" in err


def test_evaluate_without_model_needs_baselines_only(tmp_path, capsys):
    code, err = _exit_code(
        ["evaluate", "--run-dir", str(tmp_path), "--role", "market_maker"], capsys
    )
    assert code == 2 and "baselines-only" in err


# ============================================================== hyperparameters


@pytest.mark.parametrize("algo", train.ALGOS)
def test_hyperparameter_files_cover_every_role(algo):
    with open(TRAIN_CONFIG_DIR / f"{algo}.yaml", encoding="utf-8") as f:
        data = yaml.safe_load(f)
    assert set(ROLE_POLICIES) <= set(data)
    for role in ROLE_POLICIES:
        hp = load_hyperparams(algo, role)
        assert hp["n_timesteps"] > 0 and hp["n_envs"] > 0
        assert hp["env_kwargs"]["max_episode_steps"] > 0


def test_overrides_merge_dotted_keys():
    ov = parse_overrides(["learning_rate:1e-4", "policy_kwargs.net_arch:[8, 8]", "n_steps:16"])
    hp = load_hyperparams("ppo", "market_maker", ov)
    assert hp["learning_rate"] == pytest.approx(1e-4)
    assert hp["policy_kwargs"]["net_arch"] == [8, 8]
    assert hp["policy_kwargs"]["activation_fn"] == "tanh"  # siblings kept
    assert hp["n_steps"] == 16


def test_torch_threads_rule():
    hp = load_hyperparams("ppo", "market_maker")
    assert torch_threads_for(hp, "cpu") == (1, "small MLP on CPU")
    assert torch_threads_for(hp, "cuda") == (None, "torch default")
    assert torch_threads_for(hp, "cuda", 3) == (3, "flag")
    wide = {**hp, "policy_kwargs": {"net_arch": {"pi": [512, 512], "vf": [64]}}}
    assert torch_threads_for(wide, "cpu") == (None, "torch default")
    with pytest.raises(TrainConfigError, match=">= 1"):
        torch_threads_for(hp, "cpu", 0)


# ============================================================== end to end


THREADS_BEFORE = torch.get_num_threads()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("run")
    assert train.main([*TINY_DIST, "-n", "128", "--run-dir", str(d), "--no-eval"]) == 0
    return d


def _report_rows(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_train_writes_model_stats_checkpoints_and_logs(run_dir):
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert cfg["trained_timesteps"] == 128 and cfg["role"] == "market_maker"
    assert cfg["scenario"] == "crashes" and cfg["distribution"]["name"] == "crashes"
    # The default 64x64 MLP on the CPU trains with one torch thread, restored afterwards.
    assert cfg["torch_threads"] == 1 and cfg["torch_threads_rule"] == "small MLP on CPU"
    assert torch.get_num_threads() == THREADS_BEFORE
    assert (run_dir / "model.zip").exists() and (run_dir / "vecnormalize.pkl").exists()
    assert [s for s, _ in checkpoints(run_dir)] == [32, 64, 96, 128]
    assert list((run_dir / "tb").glob("ppo_1/events.out.tfevents*"))
    # The evaluation callback ran on the held-out scenario.
    assert cfg["eval_scenario"] != "calm"
    ev = np.load(run_dir / "eval" / "evaluations.npz")
    assert ev["timesteps"].tolist() == [128]


def test_evaluate_reports_every_scenario_and_policy(run_dir):
    argv = ["evaluate", "--run-dir", str(run_dir), "--seeds", "1", "--max-steps", "4"]
    assert train.main([*argv, "--no-dashboard"]) == 0
    report = (run_dir / "report.md").read_text()
    policies = ["ppo", *ROLE_POLICIES["market_maker"]]
    scenarios = jaxsim.list_scenarios()
    for s in scenarios:
        assert f"\n## {s}\n" in report
        section = report.split(f"\n## {s}\n")[1].split("\n## ")[0]
        # Each row's variant carries its split: trained on `crashes`, calm is "not trained on".
        for p in policies:
            pat = rf"\| base \([a-z -]+\) \| (\*\*)?{p}(\*\*)? \|"
            assert re.search(pat, section), (s, p)
        for v in jaxsim.list_variants(s):
            assert re.search(rf"\| {v} \([a-z -]+\) \| random \|", section), (s, v)
        assert (run_dir / "plots" / f"equity_{s}.png").exists()
    rows = _report_rows(run_dir / "results.csv")
    n_cfg = sum(1 + len(jaxsim.list_variants(s)) for s in scenarios)
    assert len(rows) == len(policies) * n_cfg
    assert {r["policy"] for r in rows} == set(policies)
    assert all(r["steps_mean"] == "4" for r in rows)
    assert "The trained policy `ppo`" in report
    # Trained on `crashes`: its members are in-distribution, its held-out list held out.
    assert "In-distribution vs held-out" in report
    split = {(r["scenario"], r["variant"] or None): r["split"] for r in rows}
    assert split[("leverage_accident", None)] == "in-distribution"
    assert split[("leverage_accident", "leverage_cap_10x")] == "held-out"
    assert "| base (not trained on) | random |" in report.split("\n## calm\n")[1]


def test_resume_continues_from_the_checkpoint(run_dir):
    before = {s for s, _ in checkpoints(run_dir)}
    with open(run_dir / "vecnormalize.pkl", "rb") as f:
        count0 = pickle.load(f).obs_rms.count
    # PPO collects whole rollouts (n_steps x n_envs = 128 steps): 128 more reach 256.
    argv = [*TINY_DIST, "-n", "256", "--run-dir", str(run_dir), "--resume", "--no-eval"]
    assert train.main(argv) == 0
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert cfg["trained_timesteps"] == 256
    assert [h["timesteps"] for h in cfg["history"]] == [128, 256]
    new = {s for s, _ in checkpoints(run_dir)} - before
    assert new and min(new) > 128  # timesteps continued from 128, not from 0
    with open(run_dir / "vecnormalize.pkl", "rb") as f:
        count1 = pickle.load(f).obs_rms.count
    # Statistics carried over: 32 more steps (+ one reset) of N_ENVS observations each.
    assert count0 + 128 <= count1 <= count0 + 128 + 2 * N_ENVS
    # One TensorBoard run, continued.
    assert not (run_dir / "tb" / "ppo_2").exists()


def test_time_limit_stops_training_early(tmp_path):
    argv = [*TINY, "-n", "100000", "--run-dir", str(tmp_path), "--no-eval", "--time-limit", "0"]
    assert train.main([*argv, "--eval-scenario", "none"]) == 0
    cfg = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert cfg["history"][-1]["time_limited"] is True
    assert 0 < cfg["trained_timesteps"] < 100000
    assert (tmp_path / "model.zip").exists()


def test_resume_without_checkpoint_fails(tmp_path, capsys):
    rc = train.main([*TINY, "-n", "64", "--run-dir", str(tmp_path), "--resume", "--no-eval"])
    assert rc == 2 and "no checkpoint" in capsys.readouterr().err


def test_loop_engine_runs_the_sb3_model(run_dir):
    """The NumPy-loop path: SB3 predict on the batched env (the training batch size)."""
    from agents import evaluate as E
    from agents.sb3_policy import load_run, numpy_actor

    model, vecnorm = load_run(run_dir, "ppo")
    cfgs = E.scenario_configs(["calm", "collateral_depeg"], variants=False, max_steps=3)
    tr = E.run_loop("market_maker", numpy_actor(model, vecnorm), cfgs, seeds=2, num_envs=N_ENVS)
    e = E.episode_table(tr)
    assert len(e) == 4 and all(x["steps"] == 3 for x in e)
    assert np.all(tr.equity0 > 0) and np.all(np.isfinite(tr.equity))
