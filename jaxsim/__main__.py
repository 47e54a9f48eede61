"""`python -m jaxsim --scenario calm --ticks 2000 --seeds 4`: run a scenario, print a summary.

Runs the exchange alone (no learning agent) batched over seeds and prints per-seed
drawdowns, liquidations, insurance-fund change, ADL count and the ledger check.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

import jaxsim


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m jaxsim", description=__doc__.splitlines()[0])
    ap.add_argument(
        "--scenario", default="calm", help=f"one of {jaxsim.list_scenarios()} or a YAML path"
    )
    ap.add_argument("--variant", default=None)
    ap.add_argument("--ticks", type=int, default=2000)
    ap.add_argument("--seeds", type=int, default=4)
    args = ap.parse_args(argv)
    if args.ticks < 1 or args.seeds < 1:
        ap.error("--ticks and --seeds must be >= 1")
    try:
        params = jaxsim.load_scenario(args.scenario, args.variant)
    except jaxsim.ConfigError as e:
        ap.error(str(e))

    def one(key):
        s0 = jaxsim.reset(key, params)
        s1, ev = jaxsim.rollout(key, params, args.ticks, state=s0)
        return jaxsim.audit(s0, params), jaxsim.audit(s1, params), ev

    run = jax.jit(jax.vmap(one))
    keys = jax.random.split(jax.random.PRNGKey(0), args.seeds)
    t0 = time.perf_counter()
    a0, a1, ev = jax.block_until_ready(run(keys))
    wall = time.perf_counter() - t0
    ev = jax.tree_util.tree_map(np.asarray, ev)
    hours = args.ticks * float(params.dt) / 3600
    print(
        f"scenario {params.name}: {args.seeds} seeds x {args.ticks} ticks "
        f"({hours:.1f} h of market time), {wall:.1f} s incl. compile"
    )
    head = (
        "seed",
        "spot DD %",
        "perp DD %",
        "liq long",
        "liq short",
        "IF change",
        "ADL",
        "funding",
    )
    print("  ".join(f"{h:>10}" for h in head))
    for i in range(args.seeds):
        spot, perp = ev.spot_px[i], ev.perp_px[i]
        dd = lambda x: 100 * float(np.max(1 - x / np.maximum.accumulate(x)))
        row = (
            i,
            dd(spot),
            dd(perp),
            float(ev.liq_notional_long[i].sum()),
            float(ev.liq_notional_short[i].sum()),
            float(-ev.insurance_draw[i].sum()),
            int(ev.adl_count[i].sum()),
            float(ev.funding_rate[i][-1]),
        )
        print("  ".join(f"{x:>10.4g}" if isinstance(x, float) else f"{x:>10}" for x in row))
    for name in ("usdt", "base", "stable", "lst"):
        x0, x1 = np.asarray(a0[name]), np.asarray(a1[name])
        print(
            f"ledger {name:>6}: max |change| / total = {np.max(np.abs(x1 - x0) / np.abs(x0)):.2e}"
        )


if __name__ == "__main__":
    main()
