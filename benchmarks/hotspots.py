"""Hotspots: which compiled kernels (XLA fusions) a batched exchange step spends its time in.

    python -m benchmarks.hotspots [--scenario calm] [--batch 128] [--warm-ticks 20]
        [--calls 5] [--top 25] [--phase step|orders|lp|liquidation] [--json FILE]

It warms `--batch` envs up for `--warm-ticks` ticks, compiles `jit(vmap(phase))` (the whole
`jaxsim.step`, or one phase of it on the warmed state: `orders` = the background traders'
orders of the tick and their processing, `lp` = the LP's requote, `liquidation` = the
cascade and the fund's unwind), runs it `--calls`
times under `jax.profiler.trace` and prints one row per fusion: its share of the time, its
microseconds per call and per env-step, how many times a call ran it (a fusion inside the
order loop runs once per iteration), its output shape, and the static measure below.

**Recomputed scalar work.** XLA:CPU fuses a cheap producer into each of its consumers, and
a fusion computes its output element by element: a chain of per-env scalar arithmetic (an
order's checks, a market's quote centre) that feeds a book-sized elementwise fusion is
evaluated again for every element of it, unless LLVM hoists it out of the element loop,
which some operations prevent (and which the test suite's `-O0` builds never do). The
column `scalar ops` counts the ops of a fusion whose shape is at most `--small` values per
env (the per-env scalars and small per-account vectors), `x elems` multiplies it by the
fusion's output elements per env: a large product on a slow fusion is the pattern, and
`jaxsim.ops.materialize` on the chain's result is the fix (benchmarks/RESULTS.md,
"Where the step's time went").

The profile's kernel names are the compiled HLO's (`Compiled.as_text()`), so the two sides
join on the name. On XLA:CPU every fusion is traced; on a GPU the rows are the kernels the
profiler reports.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

# One instruction of an HLO module: `%name = dtype[dims]{layout} opcode(`.
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?(%[\w.\-]+) = (\w+)\[([\d,]*)\]\S* ([\w\-]+)\(")
_FUSION = re.compile(
    r"^\s*(?:ROOT\s+)?(%[\w.\-]+) = (\w+)\[([\d,]*)\]\S* fusion\(.*?calls=(%[\w.\-]+)"
    r"(?:.*?op_name=\"([^\"]*)\")?"
)
_COMPUTATION = re.compile(r"^(%[\w.\-]+) \(.*\{\s*$")
_FREE = {"parameter", "constant", "bitcast", "broadcast", "iota"}


def _size(dims: str) -> int:
    n = 1
    for d in dims.split(","):
        if d:
            n *= int(d)
    return n


def computations(hlo: str) -> dict[str, list[str]]:
    """Each computation's instruction lines, by name (`%fused_computation.12` -> lines)."""
    out: dict[str, list[str]] = {}
    name = None
    for line in hlo.splitlines():
        m = _COMPUTATION.match(line)
        if m:
            name = m.group(1)
            out[name] = []
        elif line.startswith("}"):
            name = None
        elif name is not None:
            out[name].append(line)
    return out


def fusion_table(hlo: str, batch: int, small: int = 4) -> dict[str, dict[str, Any]]:
    """Per fusion of a compiled HLO module: output shape, output elements per env, the
    number of ops inside it at most `small` values per env in size (`scalar_ops`; free
    ops: parameters, constants, bitcasts, broadcasts, iotas not counted), their product
    (`recomputed`) and the op_name of the fusion (the JAX source path it came from)."""
    comps = computations(hlo)
    table = {}
    for line in hlo.splitlines():
        m = _FUSION.match(line)
        if not m:
            continue
        name, dtype, dims, comp, op_name = m.groups()
        per_env = _size(dims) / max(batch, 1)
        n_small = 0
        for inner in comps.get(comp, []):
            mi = _INSTR.match(inner)
            if mi and mi.group(4) not in _FREE and _size(mi.group(3)) <= small * batch:
                n_small += 1
        table[name.lstrip("%")] = {
            "shape": f"{dtype}[{dims}]",
            "elems_per_env": per_env,
            "scalar_ops": n_small,
            "recomputed": n_small * per_env if per_env > small else 0.0,
            "op_name": op_name or "",
        }
    return table


def kernel_times(trace_events: list[dict], n_calls: int) -> dict[str, dict[str, float]]:
    """Total microseconds and count per call of each complete ('X') trace event name,
    without the profiler's own and Python's events."""
    tot: Counter = Counter()
    cnt: Counter = Counter()
    for e in trace_events:
        if e.get("ph") != "X":
            continue
        name = e.get("name", "")
        if name.startswith("$") or "::" in name or name.startswith("PjitFunction"):
            continue
        tot[name] += float(e.get("dur", 0.0))
        cnt[name] += 1
    return {n: {"us": tot[n] / n_calls, "count": cnt[n] / n_calls} for n in tot}


def read_perfetto(folder: Path) -> list[dict]:
    """The events of the perfetto trace `jax.profiler.trace(create_perfetto_trace=True)`
    wrote under `folder`."""
    files = sorted(folder.rglob("*.trace.json.gz"))
    if not files:
        raise FileNotFoundError(f"no perfetto trace under {folder}")
    with gzip.open(files[-1], "rt", encoding="utf-8") as f:
        data = json.load(f)
    return data["traceEvents"] if isinstance(data, dict) else data


def join(times: dict, fusions: dict, batch: int, top: int) -> list[dict[str, Any]]:
    """Rows of the `top` slowest kernels, with their static fusion facts where known."""
    total = sum(v["us"] for v in times.values()) or 1.0
    rows = []
    for name, t in sorted(times.items(), key=lambda kv: -kv[1]["us"])[:top]:
        f = fusions.get(name, {})
        rows.append(
            {
                "kernel": name,
                "share": t["us"] / total,
                "us_per_call": t["us"],
                "us_per_env_step": t["us"] / batch,
                "runs_per_call": t["count"],
                "shape": f.get("shape", ""),
                "scalar_ops": f.get("scalar_ops"),
                "recomputed": f.get("recomputed"),
                "op_name": f.get("op_name", ""),
            }
        )
    return rows


def format_rows(rows: list[dict], total_us: float) -> list[str]:
    head = (
        f"{'share':>6} {'us/call':>9} {'us/env':>7} {'runs':>5} {'scalar ops':>10} "
        f"{'x elems':>8}  {'kernel':<36} {'shape':<24} op_name (tail)"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        so = "-" if r["scalar_ops"] is None else str(r["scalar_ops"])
        rc = "-" if r["recomputed"] is None else f"{r['recomputed']:.0f}"
        lines.append(
            f"{r['share']:6.1%} {r['us_per_call']:9.0f} {r['us_per_env_step']:7.2f} "
            f"{r['runs_per_call']:5.0f} {so:>10} {rc:>8}  {r['kernel'][:36]:<36} "
            f"{r['shape'][:24]:<24} {r['op_name'][-60:]}"
        )
    lines.append(f"kernels total: {total_us:,.0f} us per call")
    return lines


def _phase_fn(phase: str, params):
    """fn(key, state) -> state for --phase."""
    import jaxsim
    from jaxsim.mechanisms import liquidation, liquidity, tick_acc
    from jaxsim.mechanisms import orders as order_entry

    acc0 = lambda: tick_acc.zero(params.dt.dtype, params.dims.n_accounts)  # noqa: E731
    if phase == "step":
        return lambda k, s: jaxsim.step(k, s, jaxsim.no_orders(params), params)[0]
    if phase == "lp":
        return lambda k, s: liquidity.requote(s, params)
    if phase == "liquidation":
        return lambda k, s: liquidation.run(s, params, acc0())[0]
    if phase == "orders":
        from jaxsim import engine

        def orders(k, s):
            s, bg, _ = engine._background_orders(k, s, params)
            return order_entry.process(s, params, bg, acc0())[0]

        return orders
    raise ValueError(f"unknown --phase {phase!r}: step, orders, lp or liquidation")


def measure(args) -> dict[str, Any]:
    import jax

    import jaxsim

    params = jaxsim.load_scenario(args.scenario)
    keys = jax.random.split(jax.random.PRNGKey(args.seed), args.batch)
    warm = jax.jit(jax.vmap(lambda k: jaxsim.rollout(k, params, args.warm_ticks)[0]))
    states = jax.block_until_ready(warm(keys))
    fn = jax.jit(jax.vmap(_phase_fn(args.phase, params)))
    t0 = time.perf_counter()
    compiled = fn.lower(keys, states).compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(compiled(keys, states))
    rounds = []
    for _ in range(3):  # best of three rounds: the first calls after compiling run slow
        t0 = time.perf_counter()
        for _ in range(args.calls):
            out = compiled(keys, states)
        jax.block_until_ready(out)
        rounds.append((time.perf_counter() - t0) / args.calls * 1e6)
    wall_us = min(rounds)
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d, create_perfetto_trace=True):
            for _ in range(args.calls):
                out = compiled(keys, states)
            jax.block_until_ready(out)
        events = read_perfetto(Path(d))
    times = kernel_times(events, args.calls)
    fusions = fusion_table(compiled.as_text(), args.batch, args.small)
    rows = join(times, fusions, args.batch, args.top)
    return {
        "scenario": args.scenario,
        "phase": args.phase,
        "batch": args.batch,
        "compile_s": compile_s,
        "wall_us_per_call": wall_us,
        "kernels_us_per_call": sum(v["us"] for v in times.values()),
        "n_fusions": len(fusions),
        "rows": rows,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.hotspots", description=__doc__)
    ap.add_argument("--scenario", default="calm")
    ap.add_argument("--phase", default="step", choices=["step", "orders", "lp", "liquidation"])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--warm-ticks", type=int, default=20)
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--small", type=int, default=4, help="values per env counted as scalar")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    for name in ("batch", "warm_ticks", "calls", "top", "small"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    res = measure(args)
    print(
        f"scenario {res['scenario']}, phase {res['phase']}, batch {res['batch']}: compile "
        f"{res['compile_s']:.1f} s, {res['n_fusions']} fusions; "
        f"{res['wall_us_per_call']:,.0f} us per call ({res['wall_us_per_call'] / res['batch']:.1f} "
        f"us per env-step) outside the profiler"
    )
    for line in format_rows(res["rows"], res["kernels_us_per_call"]):
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
