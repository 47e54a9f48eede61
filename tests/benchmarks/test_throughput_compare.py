"""`python -m benchmarks.throughput --compare REV` without a real benchmark run.

Argument parsing, the rounds' summary and table from made-up results, the children's
environment, the temporary worktree's removal (also on KeyboardInterrupt), and the whole
`run_compare` flow on a throwaway git repository with a stand-in child process that
writes made-up numbers (alternating order, JSON output).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # `benchmarks` is no installed package; CI runs python -m pytest
    sys.path.insert(0, str(REPO))

from benchmarks import compare  # noqa: E402
from benchmarks.throughput import parse_args  # noqa: E402

# ------------------------------------------------------------------ arguments


def test_parse_compare_arguments():
    a = parse_args(
        "--compare 195766a --rounds 2 --batches 16,128 --ticks 10 --json out.json".split()
    )
    assert (a.compare, a.rounds, a.batches, a.ticks, a.json) == (
        "195766a",
        2,
        [16, 128],
        10,
        "out.json",
    )
    assert a.stat == "best" and a.child_xla_flags is None
    d = parse_args(["--compare", "HEAD~1"])
    assert (d.rounds, d.batches, d.ticks, d.scenario) == (3, [1, 16, 128, 1024], 20, "calm")
    assert parse_args([]).compare is None
    assert parse_args(["--compare", "x", "--stat", "median"]).stat == "median"


@pytest.mark.parametrize(
    "argv",
    [
        ["--compare", "x", "--rounds", "0"],
        ["--compare", " "],
        ["--compare", "x", "--batches", "0,16"],
        ["--compare", "x", "--stat", "mean"],
        ["--compare", "x", "--ticks", "0"],
    ],
)
def test_parse_compare_rejects(argv, capsys):
    with pytest.raises(SystemExit):
        parse_args(argv)


# ------------------------------------------------------------------ summary and table


def _result(rates: dict[int, float | None], compile_s: float, nbytes: int, gym_us: float):
    engine = [
        {"batch": b, "status": "ok", "steps_per_s": r}
        if r is not None
        else {"batch": b, "status": "skipped: needs ~9 GiB"}
        for b, r in rates.items()
    ]
    return dict(
        engine=engine,
        step_compile_s=compile_s,
        state_bytes_per_env=nbytes,
        gym=dict(status="ok", us_per_step=gym_us),
    )


# Two rounds, alternating as run_compare records them.
ROUNDS = [
    dict(round=1, tree="base", result=_result({16: 100.0, 128: 1000.0}, 12.0, 2000, 900.0)),
    dict(round=1, tree="work", result=_result({16: 150.0, 128: None}, 9.0, 2000, 1000.0)),
    dict(round=2, tree="base", result=_result({16: 120.0, 128: 800.0}, 10.0, 2000, 1100.0)),
    dict(round=2, tree="work", result=_result({16: 140.0, 128: None}, 8.0, 2000, 950.0)),
]
BASE = dict(rev="195766a", sha="195766a" + "0" * 33, short="195766a", describe="195766a")
WORK = dict(rev="work tree", sha="d80da58" + "0" * 33, short="d80da58", dirty=True)


def _by_metric(summary):
    return {r["metric"]: r for r in summary}


def test_summary_best_of_rounds():
    s = _by_metric(compare.summarize(ROUNDS, [16, 128], "best"))
    e16 = s["engine env-steps/s, batch 16"]
    assert (e16["base"], e16["work"], e16["better"]) == (120.0, 150.0, "higher")
    assert e16["ratio"] == pytest.approx(1.25)
    assert e16["rounds_base"] == [100.0, 120.0] and e16["rounds_work"] == [150.0, 140.0]
    e128 = s["engine env-steps/s, batch 128"]  # skipped in the work tree
    assert e128["base"] == 1000.0 and e128["work"] is None and e128["ratio"] is None
    c = s["jit(step) compile s, 1 env"]  # lower is better: the minimum over rounds
    assert (c["base"], c["work"], c["better"]) == (10.0, 8.0, "lower")
    assert c["ratio"] == pytest.approx(0.8)
    g = s["gym env.step us (market_maker)"]
    assert (g["base"], g["work"]) == (900.0, 950.0)
    assert s["state bytes per env"]["ratio"] == 1.0


def test_summary_median_of_rounds():
    s = _by_metric(compare.summarize(ROUNDS, [16, 128], "median"))
    assert s["engine env-steps/s, batch 16"]["base"] == 110.0
    assert s["engine env-steps/s, batch 16"]["work"] == 145.0
    assert s["jit(step) compile s, 1 env"]["ratio"] == pytest.approx(8.5 / 11.0)


def test_verdict_direction():
    assert compare.verdict(1.25, "higher") == "work tree better"
    assert compare.verdict(0.80, "higher") == "work tree worse"
    assert compare.verdict(0.80, "lower") == "work tree better"
    assert compare.verdict(1.25, "lower") == "work tree worse"
    assert compare.verdict(1.01, "lower").startswith("about the same")
    assert compare.verdict(1.01, "lower", noise=0.0) == "work tree worse"
    assert compare.verdict(1.0, "higher") == "equal"


def test_table_lines():
    lines = compare.format_table(compare.summarize(ROUNDS, [16, 128], "best"), BASE, WORK)
    head, rule, *rows = lines
    assert "base (195766a)" in head and "work tree (dirty)" in head and "work/base" in head
    assert set(rule) == {"-"}
    row = {ln.split("  ")[0].strip(): ln for ln in rows}
    e16 = row["engine env-steps/s, batch 16"].split()
    assert e16[-9:-5] == ["120", "150", "1.250", "higher"]
    assert row["engine env-steps/s, batch 16"].endswith("work tree better")
    e128 = row["engine env-steps/s, batch 128"].split()
    assert e128[4:7] == ["1,000", "-", "-"]
    comp = row["jit(step) compile s, 1 env"]
    assert "10.00" in comp and "8.00" in comp and "0.800" in comp
    assert comp.endswith("lower is better; work tree better")
    assert row["state bytes per env"].endswith("lower is better; equal")
    gym = row["gym env.step us (market_maker)"]
    assert "900.0" in gym and gym.endswith("work tree worse")  # 950/900 = 1.056


# ------------------------------------------------------------------ environment, worktree


def test_child_env_drops_test_flags(tmp_path):
    parent = {
        "XLA_FLAGS": "--xla_cpu_use_fusion_emitters=false",
        "JAX_DISABLE_MOST_OPTIMIZATIONS": "1",
        "JAX_COMPILATION_CACHE_DIR": "/tmp/c",
        "PYTHONPATH": "/somewhere/else",
        "HOME": "/home/x",
    }
    env, removed = compare.child_env(tmp_path, parent)
    assert "XLA_FLAGS" not in env and "JAX_DISABLE_MOST_OPTIMIZATIONS" not in env
    assert "JAX_COMPILATION_CACHE_DIR" not in env
    assert env["PYTHONPATH"].split(os.pathsep) == [str(tmp_path), str(compare.BENCH_DIR)]
    assert env["HOME"] == "/home/x" and env["CASCADE_JAX_CACHE"] == "0"
    assert removed["XLA_FLAGS"] == "--xla_cpu_use_fusion_emitters=false"
    assert "PYTHONPATH" not in removed
    env2, _ = compare.child_env(tmp_path, parent, xla_flags="--xla_foo=1")
    assert env2["XLA_FLAGS"] == "--xla_foo=1"
    # This test process runs with the suite's XLA_FLAGS (tests/conftest.py): not passed on.
    assert "XLA_FLAGS" not in compare.child_env(tmp_path)[0]


def _git_repo(path: Path) -> Path:
    path.mkdir()
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")  # fmt: skip
    run = lambda *a: subprocess.run(["git", *a], cwd=path, check=True, env=env, capture_output=True)
    run("init", "-q")
    (path / "marker.txt").write_text("one\n")
    run("add", ".")
    run("commit", "-qm", "one")
    (path / "marker.txt").write_text("two\n")
    run("commit", "-qam", "two")
    return path


def _worktrees(repo: Path) -> list[str]:
    out = compare.git("worktree", "list", "--porcelain", cwd=repo)
    return [ln.split(" ", 1)[1] for ln in out.splitlines() if ln.startswith("worktree ")]


def test_temporary_worktree_removed_on_interrupt(tmp_path):
    repo = _git_repo(tmp_path / "repo")
    seen = {}
    with pytest.raises(KeyboardInterrupt):
        with compare.temporary_worktree(repo, "HEAD~1") as tree:
            seen["tree"] = tree
            assert (tree / "marker.txt").read_text() == "one\n"
            assert len(_worktrees(repo)) == 2
            raise KeyboardInterrupt
    assert not seen["tree"].exists() and not seen["tree"].parent.exists()
    assert len(_worktrees(repo)) == 1
    info = compare.tree_info(repo, "HEAD", worktree=True)
    assert info["dirty"] is False
    (repo / "marker.txt").write_text("three\n")
    info = compare.tree_info(repo, "HEAD", worktree=True)
    assert info["dirty"] is True and info["describe"].endswith("-dirty")


# ------------------------------------------------------------------ the flow, stand-in child

FAKE_CHILD = """
import json, os, sys
spec = json.load(open(sys.argv[1]))
base = os.path.exists("marker.txt") and open("marker.txt").read() == "one\\n"
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(("base" if base else "work") + " " + os.getcwd() + "\\n")
k = 1.0 if base else 2.0
json.dump(dict(
    xla_flags=os.environ.get("XLA_FLAGS"),
    engine=[dict(batch=b, status="ok", steps_per_s=k * b * 100) for b in spec["batches"]],
    step_compile_s=10.0 / k, state_bytes_per_env=1000,
    gym=dict(status="ok", us_per_step=500.0 / k),
), open(sys.argv[2], "w"))
"""


def test_run_compare_flow(tmp_path, monkeypatch, capsys):
    repo = _git_repo(tmp_path / "repo")
    child = tmp_path / "fake_child.py"
    child.write_text(textwrap.dedent(FAKE_CHILD))
    log = tmp_path / "order.log"
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.setattr(compare, "repo_root", lambda path=None: repo)
    monkeypatch.setattr(compare, "child_command", lambda: [sys.executable, str(child)])
    out = tmp_path / "cmp.json"
    args = parse_args(f"--compare HEAD~1 --rounds 2 --batches 4,8 --json {out}".split())
    assert compare.run_compare(args) == 0
    printed = capsys.readouterr().out
    order = [ln.split()[0] for ln in log.read_text().splitlines()]
    assert order == ["base", "work", "base", "work"]
    assert len(_worktrees(repo)) == 1  # the temporary one is gone
    assert "child XLA_FLAGS: unset" in printed
    assert "removed from the children's environment: XLA_FLAGS=" in printed  # conftest's
    data = json.loads(out.read_text())
    assert [(r["round"], r["tree"]) for r in data["rounds"]] == [
        (1, "base"),
        (1, "work"),
        (2, "base"),
        (2, "work"),
    ]
    s = {r["metric"]: r for r in data["summary"]}
    assert s["engine env-steps/s, batch 8"]["ratio"] == pytest.approx(2.0)
    assert s["jit(step) compile s, 1 env"]["ratio"] == pytest.approx(0.5)
    assert data["compare"]["base"]["sha"] == compare.git("rev-parse", "HEAD~1", cwd=repo)
    assert data["compare"]["work"]["dirty"] is False
    assert "engine env-steps/s, batch 8" in printed and "2.000" in printed


def test_run_compare_unknown_rev(tmp_path, monkeypatch, capsys):
    repo = _git_repo(tmp_path / "repo")
    monkeypatch.setattr(compare, "repo_root", lambda path=None: repo)
    assert compare.run_compare(parse_args(["--compare", "no-such-rev"])) == 2
    assert "not a commit" in capsys.readouterr().err
    assert len(_worktrees(repo)) == 1


def test_child_helpers(tmp_path):
    import gymnasium
    import numpy as np

    from benchmarks import compare_child

    lo, hi = np.array([-1.0, 0.5], np.float32), np.array([1.0, 2.0], np.float32)
    box = gymnasium.spaces.Box(lo, hi, dtype=np.float32)
    act = compare_child.fixed_action(box)
    assert act.dtype == np.float32 and act.tolist() == [0.0, 0.5] and box.contains(act)
    assert compare_child.fixed_action(gymnasium.spaces.Discrete(3)) == 0
    assert compare_child._inside(str(tmp_path / "a" / "b.py"), str(tmp_path))
    assert not compare_child._inside("/elsewhere/b.py", str(tmp_path))
    assert not compare_child._inside(None, str(tmp_path))
