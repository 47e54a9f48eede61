"""`python -m jaxsim.tools --scenario calm --ticks 2000 --seeds 4`: run a scenario, print a summary.

Runs the exchange alone (no learning agent) batched over seeds and prints per-seed
drawdowns, liquidations, insurance-fund change, ADL count and the ledger check.
`python -m jaxsim.tools.simulate` runs the same batch and adds the full metrics table, the
tick-event CSV and the dashboard.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import jaxsim
from jaxsim.metrics import max_drawdown
from jaxsim.tools import cli
from jaxsim.tools.simulate import LEDGER_ASSETS, ledger_drift, run_batch


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m jaxsim.tools", description=__doc__.splitlines()[0])
    cli.add_scenario_args(ap)
    ap.add_argument("--ticks", type=int, default=2000)
    ap.add_argument("--seeds", type=int, default=4)
    args = ap.parse_args(argv)
    if args.ticks < 1 or args.seeds < 1:
        ap.error("--ticks and --seeds must be >= 1")
    try:
        params = jaxsim.load_scenario(args.scenario, args.variant)
    except jaxsim.ConfigError as e:
        ap.error(str(e))

    t0 = time.perf_counter()
    ev, a0, a1 = run_batch(params, args.ticks, args.seeds, seed=0)
    wall = time.perf_counter() - t0
    hours = args.ticks * float(params.dt) / 3600
    print(
        f"scenario {params.name}: {args.seeds} seeds x {args.ticks} ticks "
        f"({hours:.1f} h of market time), {wall:.1f} s incl. compile"
    )
    head = ("seed", "spot DD %", "perp DD %", "liq long", "liq short", "IF change", "ADL")
    print("  ".join(f"{h:>10}" for h in head + ("funding",)))
    for i in range(args.seeds):
        row = (
            i,
            100 * float(max_drawdown(ev["spot_px"][i])),
            100 * float(max_drawdown(ev["perp_px"][i])),
            float(ev["liq_notional_long"][i].sum()),
            float(ev["liq_notional_short"][i].sum()),
            float(-ev["insurance_draw"][i].sum()),
            int(ev["adl_count"][i].sum()),
            float(ev["funding_rate"][i][-1]),
        )
        print("  ".join(f"{x:>10.4g}" if isinstance(x, float) else f"{x:>10}" for x in row))
    drift = ledger_drift(a0, a1)
    for name in LEDGER_ASSETS:
        print(f"ledger {name:>6}: max |change| / total = {np.max(drift[f'ledger_{name}']):.2e}")


if __name__ == "__main__":
    main()
