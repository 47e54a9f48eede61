"""`python -m benchmarks.throughput --compare REV`: a git revision against the working tree.

REV is checked out in a temporary `git worktree add --detach` (removed afterwards, also on
an error, Ctrl-C or SIGTERM). Each round runs one fresh Python process per tree,
alternating (round 1 base, round 1 work tree, round 2 base, ...), so that load on the
machine hits both alike. A process imports `jaxsim` and `envs` from its own tree (working
directory and PYTHONPATH) and measures with the working tree's `benchmarks/compare_child.py`
(see there for what it measures). The children get XLA's default flags: XLA_FLAGS and
JAX_DISABLE_MOST_OPTIMIZATIONS (set by the test suite, say) are removed from their
environment unless `--child-xla-flags` sets XLA_FLAGS, and JAX's persistent compilation
cache is off, so compile times are compiles.

The table shows, per metric, the base and work-tree value over the rounds (`--stat best`:
the highest rate / the lowest time or size; `--stat median`), and work / base with the
direction that is better. `--json FILE` holds every round's numbers.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
# Removed from the children's environment: flags that change what XLA compiles or whether
# compiles come from a cache (tests/conftest.py sets the first two for the test suite).
STRIPPED_ENV = (
    "XLA_FLAGS",
    "JAX_DISABLE_MOST_OPTIMIZATIONS",
    "JAX_COMPILATION_CACHE_DIR",
    "JAX_ENABLE_COMPILATION_CACHE",
    "PYTHONPATH",
)
TREES = ("base", "work")

# (key, label, better): better is "higher" or "lower"; engine rows are added per batch.
METRICS = (
    ("step_compile_s", "jit(step) compile s, 1 env", "lower"),
    ("state_bytes_per_env", "state bytes per env", "lower"),
    ("gym_us_per_step", "gym env.step us (market_maker)", "lower"),
)
# Ratios this close to 1 are called "about the same" (timings are noisy; bytes are exact).
NOISE = {"state_bytes_per_env": 0.0}
DEFAULT_NOISE = 0.02


# ------------------------------------------------------------------ git


def write_json(path: str, payload: dict) -> None:
    """Write a benchmark's rows to `path` (numbers that JSON lacks as floats)."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=1, default=float)
    print(f"wrote {path}")


def finish(lines: list[str], t_all: float, json_path: str | None, payload: dict) -> None:
    """Print a benchmark's table and its total time since `t_all`; with `json_path`, write
    `payload` there with the total (`total_s`) and the command line (`argv`)."""
    for line in lines:
        print(line)
    total = time.perf_counter() - t_all
    print(f"total {total:.0f} s")
    if json_path:
        write_json(json_path, dict(payload, total_s=total, argv=sys.argv[1:]))


def git(*args: str, cwd: Path | str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def repo_root(path: Path | str = BENCH_DIR) -> Path:
    return Path(git("rev-parse", "--show-toplevel", cwd=path))


def tree_info(root: Path | str, rev: str = "HEAD", worktree: bool = False) -> dict[str, Any]:
    """sha, short sha and `git describe` of `rev`; for the work tree also whether it is dirty
    (tracked files changed against HEAD; untracked files are counted apart)."""
    sha = git("rev-parse", "--verify", f"{rev}^{{commit}}", cwd=root)
    info: dict[str, Any] = dict(
        rev=rev,
        sha=sha,
        short=git("rev-parse", "--short", sha, cwd=root),
        describe=git("describe", "--always", "--tags", sha, cwd=root),
    )
    if worktree:
        changed = git("status", "--porcelain", "--untracked-files=no", cwd=root)
        untracked = git("status", "--porcelain", "--untracked-files=normal", cwd=root)
        info["dirty"] = bool(changed)
        info["changed_files"] = len(changed.splitlines())
        info["untracked_files"] = sum(1 for ln in untracked.splitlines() if ln.startswith("??"))
        info["describe"] += "-dirty" if changed else ""
    return info


@contextlib.contextmanager
def temporary_worktree(root: Path | str, rev: str) -> Iterator[Path]:
    """`rev` checked out (detached) in a temporary folder; removed on exit, whatever the
    exit (exception, KeyboardInterrupt, SIGTERM turned into SystemExit by `main`)."""
    tmp = Path(tempfile.mkdtemp(prefix="throughput-compare-"))
    path = tmp / "tree"
    try:
        git("worktree", "add", "--detach", str(path), rev, cwd=root)
        yield path
    finally:
        try:
            git("worktree", "remove", "--force", str(path), cwd=root)
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(tmp, ignore_errors=True)
        with contextlib.suppress(subprocess.CalledProcessError):
            git("worktree", "prune", cwd=root)


# ------------------------------------------------------------------ children


def child_env(
    tree: Path | str, environ: dict[str, str] | None = None, xla_flags: str | None = None
) -> tuple[dict[str, str], dict[str, str]]:
    """(environment of a child for `tree`, the variables removed from `environ`)."""
    env = dict(os.environ if environ is None else environ)
    removed = {k: env.pop(k) for k in STRIPPED_ENV if k in env}
    removed.pop("PYTHONPATH", None)  # replaced, not worth reporting
    env["PYTHONPATH"] = os.pathsep.join([str(tree), str(BENCH_DIR)])
    env["CASCADE_JAX_CACHE"] = "0"  # agents' cache switch, in case a tree turns it on
    env["PYTHONUNBUFFERED"] = "1"
    if xla_flags:
        env["XLA_FLAGS"] = xla_flags
    return env, removed


def child_command() -> list[str]:
    return [sys.executable, "-m", "compare_child"]


def run_child(tree: Path, spec: dict, workdir: Path, tag: str, env: dict[str, str]) -> dict:
    """One fresh process measuring `tree`; returns its result (raises on failure)."""
    spec_path, out_path = workdir / f"{tag}.spec.json", workdir / f"{tag}.out.json"
    spec_path.write_text(json.dumps(dict(spec, tree=str(tree), bench_dir=str(BENCH_DIR))))
    t0 = time.perf_counter()
    proc = subprocess.run(
        [*child_command(), str(spec_path), str(out_path)],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not out_path.exists():
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise RuntimeError(f"{tag}: child process failed (exit {proc.returncode})")
    result = json.loads(out_path.read_text())
    result["process_wall_s"] = wall
    return result


# ------------------------------------------------------------------ numbers


def metric_values(result: dict) -> dict[Any, float | None]:
    """The compared numbers of one child result, keyed by METRICS key or ("engine", batch)."""
    vals: dict[Any, float | None] = {
        "step_compile_s": result.get("step_compile_s"),
        "state_bytes_per_env": result.get("state_bytes_per_env"),
        "gym_us_per_step": (result.get("gym") or {}).get("us_per_step"),
    }
    for row in result.get("engine", []):
        ok = row.get("status") == "ok"
        vals[("engine", row["batch"])] = row.get("steps_per_s") if ok else None
    return vals


def metric_rows(batches: list[int]) -> list[tuple[Any, str, str]]:
    rows = [(("engine", b), f"engine env-steps/s, batch {b}", "higher") for b in batches]
    return rows + list(METRICS)


def combine(values: list[float], better: str, stat: str) -> float | None:
    """Best (max if higher is better, else min) or median of the rounds' values."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    if stat == "median":
        return float(statistics.median(values))
    return float(max(values) if better == "higher" else min(values))


def summarize(rounds: list[dict], batches: list[int], stat: str) -> list[dict[str, Any]]:
    """One row per metric: base, work, work/base and the per-round values."""
    out = []
    for key, label, better in metric_rows(batches):
        per_tree = {t: [metric_values(r["result"]).get(key) for r in rounds if r["tree"] == t]
                    for t in TREES}  # fmt: skip
        base = combine(per_tree["base"], better, stat)
        work = combine(per_tree["work"], better, stat)
        ratio = work / base if base and work is not None else None
        out.append(
            dict(
                metric=label,
                key=list(key) if isinstance(key, tuple) else key,
                better=better,
                base=base,
                work=work,
                ratio=ratio,
                rounds_base=per_tree["base"],
                rounds_work=per_tree["work"],
            )
        )
    return out


def _fmt_value(v: float | None, key: Any) -> str:
    if v is None:
        return "-"
    if key == "state_bytes_per_env":
        return f"{v:,.0f}"
    if key == "step_compile_s":
        return f"{v:.2f}"
    if key == "gym_us_per_step":
        return f"{v:,.1f}"
    return f"{v:,.0f}"


def verdict(ratio: float, better: str, noise: float = DEFAULT_NOISE) -> str:
    """How the work tree compares, given work / base and the better direction."""
    if ratio == 1.0:
        return "equal"
    if abs(ratio - 1.0) <= noise:
        return f"about the same (within {noise:.0%})"
    good = ratio > 1.0 if better == "higher" else ratio < 1.0
    return "work tree better" if good else "work tree worse"


def format_table(summary: list[dict], base: dict, work: dict) -> list[str]:
    """The comparison table (one line per metric)."""
    col_b = f"base ({base['short']})"
    col_w = "work tree" + (" (dirty)" if work.get("dirty") else "")
    w_m = max([len("metric")] + [len(r["metric"]) for r in summary])
    w_b, w_w = max(14, len(col_b)), max(14, len(col_w))
    lines = [
        f"{'metric':<{w_m}}  {col_b:>{w_b}}  {col_w:>{w_w}}  {'work/base':>9}  better / verdict",
    ]
    lines.append("-" * (len(lines[0]) + 8))
    for r in summary:
        key = tuple(r["key"]) if isinstance(r["key"], list) else r["key"]
        ratio = r["ratio"]
        cell = "-" if ratio is None else f"{ratio:.3f}"
        note = f"{r['better']} is better"
        if ratio is not None:
            note += f"; {verdict(ratio, r['better'], NOISE.get(key, DEFAULT_NOISE))}"
        lines.append(
            f"{r['metric']:<{w_m}}  {_fmt_value(r['base'], key):>{w_b}}  "
            f"{_fmt_value(r['work'], key):>{w_w}}  {cell:>9}  {note}"
        )
    return lines


def header_lines(base: dict, work: dict, args, xla_flags: str | None, removed: dict) -> list[str]:
    stat = "best of rounds (max rate, min time/size)" if args.stat == "best" else "median"
    dirty = (
        f"dirty: {work['changed_files']} tracked file(s) changed" if work.get("dirty") else "clean"
    )
    lines = [
        f"base:      {base['rev']} = {base['sha']} ({base['describe']})",
        f"work tree: {work['root']} at {work['sha']} ({work['describe']}), {dirty}"
        f", {work.get('untracked_files', 0)} untracked file(s)",
        f"scenario {args.scenario}, {args.ticks} ticks per engine call, best of {args.repeats} "
        f"calls; gym: {args.gym_steps} steps after {args.gym_warmup}; {args.rounds} round(s), "
        f"values: {stat}",
        f"child XLA_FLAGS: {xla_flags!r}" if xla_flags else
        "child XLA_FLAGS: unset (XLA's default flags)",
    ]  # fmt: skip
    if removed:
        lines.append(
            "removed from the children's environment: "
            + ", ".join(f"{k}={v!r}" for k, v in removed.items())
        )
    return lines


# ------------------------------------------------------------------ main


class _Terminated(SystemExit):
    pass


def _on_sigterm(signum, frame):  # pragma: no cover - exercised by hand
    raise _Terminated(128 + signum)


def run_compare(args) -> int:
    """The --compare mode of benchmarks.throughput (args from its parse_args)."""
    t_all = time.perf_counter()
    root = repo_root()
    try:
        base = tree_info(root, args.compare)
    except subprocess.CalledProcessError:
        print(f"--compare: {args.compare!r} is not a commit of {root}", file=sys.stderr)
        return 2
    work = dict(tree_info(root, "HEAD", worktree=True), root=str(root), rev="work tree")
    spec = dict(
        scenario=args.scenario,
        batches=args.batches,
        ticks=args.ticks,
        repeats=args.repeats,
        gym_steps=args.gym_steps,
        gym_warmup=args.gym_warmup,
    )
    old = signal.signal(signal.SIGTERM, _on_sigterm)
    rounds: list[dict] = []
    try:
        with (
            temporary_worktree(root, base["sha"]) as base_tree,
            tempfile.TemporaryDirectory(prefix="throughput-compare-io-") as io,
        ):
            trees = {"base": base_tree, "work": root}
            envs = {t: child_env(p, xla_flags=args.child_xla_flags) for t, p in trees.items()}
            removed = envs["work"][1]
            xla = envs["work"][0].get("XLA_FLAGS")
            for line in header_lines(base, work, args, xla, removed):
                print(line, flush=True)
            for i in range(1, args.rounds + 1):
                for t in TREES:
                    tag = f"round{i}-{t}"
                    res = run_child(trees[t], spec, Path(io), tag, envs[t][0])
                    rounds.append(dict(round=i, tree=t, result=res))
                    eng = ", ".join(
                        f"b{r['batch']} {r['steps_per_s']:,.0f}/s"
                        for r in res["engine"]
                        if r.get("status") == "ok"
                    )
                    print(
                        f"  round {i} {t:<4}: {res['process_wall_s']:5.1f} s; engine {eng}; "
                        f"step compile {res['step_compile_s']:.2f} s; "
                        f"gym {res['gym']['us_per_step']:,.1f} us/step",
                        flush=True,
                    )
                    if res.get("xla_flags") != xla:
                        raise RuntimeError(f"{tag}: child saw XLA_FLAGS={res['xla_flags']!r}")
    except KeyboardInterrupt:
        print("interrupted; temporary worktree removed", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, old)
    summary = summarize(rounds, args.batches, args.stat)
    table = format_table(summary, base, work)
    print()
    finish(
        table,
        t_all,
        args.json,
        dict(
            compare=dict(base=base, work=work),
            settings=dict(spec, rounds=args.rounds, stat=args.stat),
            child_xla_flags=xla,
            removed_env=removed,
            summary=summary,
            table=table,
            rounds=rounds,
        ),
    )
    return 0
