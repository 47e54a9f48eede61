"""Engine throughput: env-steps per second against batch size, compile time, state size.

    python -m benchmarks.engine [--scenario calm] [--ticks 100] [--batches 1,16,128,1024]

Runs `jaxsim.rollout` (no external orders) vmapped over seeds and prints a table. This is
the engine-alone row of the throughput table the benchmarks issue asks for; role envs,
the gymnasium loop and the SB3 VecEnv are not measured here yet.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

import jaxsim


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.engine")
    ap.add_argument("--scenario", default="calm")
    ap.add_argument("--ticks", type=int, default=100)
    ap.add_argument("--batches", default="1,16,128,1024")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    params = jaxsim.load_scenario(args.scenario)
    state = jaxsim.reset(jax.random.PRNGKey(0), params)
    state_bytes = sum(np.asarray(x).nbytes for x in jax.tree_util.tree_leaves(state))
    d = params.dims
    print(
        f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), scenario {params.name}"
    )
    print(
        f"dims: accounts {d.n_accounts}, levels {d.n_levels}, cascade rounds {d.cascade_rounds} "
        f"x {d.liq_per_round} slots, orders {d.max_orders}; state {state_bytes / 1024:.1f} KiB/env"
    )
    print(f"{'batch':>7} {'compile s':>10} {'run s':>8} {'env-steps/s':>12} {'us/env-step':>12}")

    def roll(key):
        s, _ = jaxsim.rollout(key, params, args.ticks)
        return s.px.mark

    for b in (int(x) for x in args.batches.split(",")):
        f = jax.jit(jax.vmap(roll))
        keys = jax.random.split(jax.random.PRNGKey(1), b)
        t0 = time.perf_counter()
        jax.block_until_ready(f(keys))
        compile_s = time.perf_counter() - t0
        best = min(_timed(f, keys) for _ in range(args.repeats))
        rate = b * args.ticks / best
        print(f"{b:>7} {compile_s:>10.1f} {best:>8.3f} {rate:>12.0f} {1e6 / rate:>12.1f}")


def _timed(f, keys) -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(f(keys))
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
