"""Compile size: how much compiled code each phase of the exchange step makes.

    python -m benchmarks.compile_size [--scenario calm] [--batch 1] [--top 15]
        [--emitters default|legacy] [--json FILE]

XLA:CPU compiles a program fusion by fusion (each fusion is one kernel that MLIR / LLVM
build on its own), so the step's compile time grows with the number of fusions and the
instructions inside them, while the run time does not depend on them in the same way. These
counts are exact and the same on every run, where compile times on a shared machine are
not: they show where a change to the engine moved the compile cost, and by how much.

It lowers and compiles `jax.jit(jaxsim.step)` (one env, or `jax.vmap` over `--batch`
envs; no external orders) with XLA's default CPU emitters (`--emitters legacy`: the test
suite's `--xla_cpu_use_fusion_emitters=false`, set before JAX starts), prints the compile
time (lower + compile, one measurement: for ratios use `benchmarks.throughput --compare`),
then reads the optimized HLO (`Compiled.as_text()`) and attributes every fusion to the
phase of `jaxsim.engine.PHASES` whose named scope the most instructions inside it carry
(`other`: ops outside the phases, such as the tick's key split; `?`: no metadata). Per
phase: fusions, instructions inside them, their share of the total, and how many fusions are
reduce-windows (`jnp.cumsum`, each its own kernel) and dynamic-update-slices (scalar
`.at[i]` updates). Then the `--top` largest fusions.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections import Counter, defaultdict

_FUSION = re.compile(r"^\s*(?:ROOT\s+)?%([\w.-]+) = \S+ fusion\(.*?calls=%([\w.-]+)")
_COMP = re.compile(r"^%?([\w.-]+) ")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_VMAP = re.compile(r"^vmap\((.*)\)$")


def parse(hlo: str, phases: tuple[str, ...]) -> list[dict]:
    """One row per fusion of the optimized HLO: name, fused computation, instruction count,
    phase (majority of its instructions' named scopes)."""
    comps: dict[str, list[str]] = {}
    cur: str | None = None
    fusions: list[tuple[str, str]] = []
    for line in hlo.splitlines():
        if cur is None and line.endswith("{") and not line.startswith(" "):
            m = _COMP.match(line)
            cur = m.group(1) if m else None
            if cur is not None:
                comps[cur] = []
            continue
        if line.startswith("}"):
            cur = None
            continue
        if cur is not None and " = " in line:
            comps[cur].append(line)
        m = _FUSION.match(line)
        if m:
            fusions.append((m.group(1), m.group(2)))
    rows = []
    for name, comp in fusions:
        body = comps.get(comp, [])
        votes: Counter = Counter()
        for line in body:
            op = _OP_NAME.search(line)
            if op:
                # Under vmap a scope reads "vmap(orders)".
                parts = [_VMAP.sub(r"\1", p) for p in op.group(1).split("/")]
                votes[next((p for p in parts if p in phases), "other")] += 1
        rows.append(
            {
                "fusion": name,
                "instructions": len(body),
                "phase": votes.most_common(1)[0][0] if votes else "?",
                "kind": re.sub(r"[.\d]+$", "", name),
            }
        )
    return rows


def table(rows: list[dict], phases: tuple[str, ...]) -> list[str]:
    by: defaultdict[str, Counter] = defaultdict(Counter)
    for r in rows:
        c = by[r["phase"]]
        c["fusions"] += 1
        c["instructions"] += r["instructions"]
        c["reduce-window"] += "reduce-window" in r["kind"]
        c["dus"] += "dynamic-update-slice" in r["kind"]
    total_i = sum(r["instructions"] for r in rows) or 1
    out = [
        f"{'phase':<16} {'fusions':>8} {'instructions':>13} {'share':>7} {'cumsum':>7} {'.at[]':>6}",
        "-" * 62,
    ]
    order = [p for p in (*phases, "other", "?") if p in by]
    for p in order:
        c = by[p]
        out.append(
            f"{p:<16} {c['fusions']:>8} {c['instructions']:>13} "
            f"{100 * c['instructions'] / total_i:>6.1f}% {c['reduce-window']:>7} {c['dus']:>6}"
        )
    out.append("-" * 62)
    out.append(
        f"{'total':<16} {len(rows):>8} {total_i:>13} {'100.0%':>7} "
        f"{sum(by[p]['reduce-window'] for p in by):>7} {sum(by[p]['dus'] for p in by):>6}"
    )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", default="calm")
    ap.add_argument("--batch", type=int, default=1, help="1: one env; N > 1: vmap over N")
    ap.add_argument("--top", type=int, default=15, help="largest fusions to list")
    ap.add_argument("--emitters", choices=("default", "legacy"), default="default")
    ap.add_argument("--json", default=None, help="write the per-fusion rows to FILE")
    args = ap.parse_args(argv)
    if args.batch < 1:
        ap.error("--batch must be >= 1")
    if args.emitters == "legacy":
        flag = "--xla_cpu_use_fusion_emitters=false"
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()
    import jax

    import jaxsim
    from jaxsim.engine import PHASES

    params = jaxsim.load_scenario(args.scenario)
    key = jax.random.PRNGKey(0)
    if args.batch == 1:
        state = jaxsim.reset(key, params)
        fn = jax.jit(jaxsim.step)
        fargs = (key, state, jaxsim.no_orders(params), params)
    else:
        keys = jax.random.split(key, args.batch)
        state = jax.vmap(jaxsim.reset, in_axes=(0, None))(keys, params)
        fn = jax.jit(jax.vmap(jaxsim.step, in_axes=(0, 0, None, None)))
        fargs = (keys, state, jaxsim.no_orders(params), params)
    t0 = time.perf_counter()
    compiled = fn.lower(*fargs).compile()
    secs = time.perf_counter() - t0
    rows = parse(compiled.as_text(), PHASES)
    print(
        f"jit(step), scenario {args.scenario}, batch {args.batch}, {args.emitters} emitters: "
        f"compile {secs:.1f} s (lower + compile, one measurement)"
    )
    print("\n".join(table(rows, PHASES)))
    print(f"\nlargest {args.top} fusions:")
    for r in sorted(rows, key=lambda r: -r["instructions"])[: args.top]:
        print(f"  {r['instructions']:>6}  {r['phase']:<16} {r['fusion']}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"compile_s": secs, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
