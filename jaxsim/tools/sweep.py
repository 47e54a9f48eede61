"""Rule sweeps: a grid of rule parameters x seeds run as one batched, sharded program.

    python -m jaxsim.tools.sweep configs/sweeps/NAME.yaml [--out DIR] [--seeds N]
        [--ticks T | --hours H] [--chunk N] [--devices N] [--set key=value ...] [--x64]
        [--cache DIR] [--no-plot] [--no-progress] [--replot]

A sweep file names a scenario (and optionally a variant), a horizon, the seeds and a grid:

```yaml
question: Which index weighting and floor stop the depeg cascade?
scenario: collateral_depeg
variant: null                    # optional
horizon_s: 10800                 # or `ticks: 360`; default: the scenario's horizon_s
seeds: 8                         # seeds per grid point (keys = split(PRNGKey(seed), seeds))
seed: 0
overrides: {rules.withdrawal_delay_s: 3600}   # optional, applied to every grid point
axes:                            # the grid is the product of the axes, in this order
  index_mix:                     # a paired axis: each value sets several keys at once
    - {_label: "internal 1.0", rules.index.stable.internal: 1.0, rules.index.stable.redemption: 0.0}
    - {_label: "redeem 0.8", rules.index.stable.internal: 0.2, rules.index.stable.redemption: 0.8}
  rules.index.stable.floor: [0.0, 0.9, 0.95]    # a plain axis: one dotted key, its values
heatmaps: [stable_low, liq_total, if_draw, dd_spot]   # optional (these are the default)
baseline: {index_mix: "internal 1.0", rules.index.stable.floor: 0.0}  # optional
```

Axis keys are the dotted override keys of `jaxsim.load_scenario` (any value a scenario file
may set, whole lists included, e.g. `rules.tiers` as a whole bracket table). Keys that fix
array shapes or the number of ticks (`dims.*`, `dt_s`, `horizon_s`) are refused as axes: a
batch shares its shapes (the fixed `overrides` may set `dims.*` and `dt_s`, which then hold
for every point). One convenience key, `max_leverage_cap: X`, rewrites the scenario as if
the exchange had always capped leverage at X (see `cap_leverage`).

The file is parsed by `jaxsim.tools.sweep_spec`, the results are written by
`jaxsim.tools.sweep_report` and drawn by `jaxsim.tools.plots`. The metrics are those of
`jaxsim.metrics.EPISODE_METRICS`, evaluated one tick at a time inside the scan.

Every grid point is validated and built into a `Params`; the points are stacked and
repeated over seeds into one batch (point-major: env = point * seeds + seed; every point
uses the same seed keys, so points differ only by their rules), padded to a multiple of the
device count, and run by ONE jitted, vmapped program — reset, the ticks, and the episode
metrics reduced on the fly inside the scan (no per-tick events leave the device) — sharded
over a 1-D mesh of `jax.devices()` (`NamedSharding` on the batch axis, `shard_map`: each
device runs the vmapped program on its slice). Large batches run in equal chunks of the
same compiled program. A tqdm progress bar is fed from inside the program (a host callback
every 2% of the ticks).

Reproducibility: a grid point's seed row uses the keys and metric definitions of
`python -m jaxsim.tools.simulate` for the same config and seed, and a run is deterministic for a
given device count and chunk size. Different programs (simulate's, or this one at another
per-device batch size or device count) fuse differently and so round float32 reductions
differently (~1e-7 relative); that stays invisible in a quiet market, but a liquidation
cascade amplifies it (single seeds' crash metrics can then differ by a few percent; seed
means much less). `--x64` narrows this to ~1e-14 (rare discrete flips remain, e.g. one
ADL count).

Writes ``DIR/sweep.csv`` (one row per grid point x seed), ``DIR/sweep_mean.csv`` (one row per
grid point, mean over seeds), ``DIR/sweep.npz`` (the raw arrays), ``DIR/sweep.json`` (config,
devices, timings) and ``DIR/heatmaps.png`` (crash severity over the first two axes, one
column of panels per combination of the further axes). DIR defaults to
``runs/sweep/<sweep file stem>``.
"""

from __future__ import annotations

import argparse
import math
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxsim import metrics as mt
from jaxsim.config import ConfigError
from jaxsim.engine import no_orders, reset, step, tie_to_key
from jaxsim.tools import cli
from jaxsim.tools.sweep_report import SweepResult, load_result, table_rows, write_outputs
from jaxsim.tools.sweep_spec import (
    METRICS,
    Grid,
    _check_fixed_key,
    _flatten,
    build_grid,
    load_sweep,
)
from jaxsim.types import Params

__all__ = ["METRICS", "build_grid", "episode_reduce", "load_sweep", "main", "run_sweep"]

Array = jax.Array

# ------------------------------------------------------------------ metrics in the scan
# The running reductions of `jaxsim.metrics.EPISODE_METRICS`, one tick at a time: a dict
# {"op:quantity": state} (a pytree), folded by the same quantities and finished by the
# same formulas as `jaxsim.metrics.episode_metrics`, in the events' float dtype.


def _stream_needs(names) -> list[str]:
    out = []
    for n in names:
        out += [k for k in mt.METRICS_BY_NAME[n].needs if k not in out]
    return out


def stream_init(names, dtype, window: int) -> dict:
    """Running reductions of the metrics `names` before the first tick.

    `window`: ticks in `jaxsim.metrics.LIQ_WINDOW_S` (a static int, at most the episode's
    ticks). Max and window reductions start at -inf: for the metrics' non-negative
    quantities (liquidations) a window still filling up never exceeds a full one.
    """
    z, inf = jnp.zeros((), dtype), jnp.full((), jnp.inf, dtype)
    init = {
        "sum": z,
        "mean": (z, z),
        "min": inf,
        "max": -inf,
        "first": z,
        "last": z,
        "drawdown": (-inf, -inf),  # (peak, largest drawdown)
        "window_sum_max": (jnp.zeros((window,), dtype), -inf),  # (last `window` values, max)
    }
    return {k: init[k.split(":")[0]] for k in _stream_needs(names)}


def _stream_op(op: str, s, x, i):
    """One tick of one reduction (the streaming form of `jaxsim.metrics.REDUCE_OPS`)."""
    if op == "sum":
        return s + x
    if op == "mean":
        return (s[0] + x, s[1] + 1)
    if op == "min":
        return jnp.minimum(s, x)
    if op == "max":
        return jnp.maximum(s, x)
    if op == "first":
        return jnp.where(i == 0, x, s)
    if op == "last":
        return x
    if op == "drawdown":
        peak = jnp.maximum(s[0], x)
        dd = jnp.where(peak > 0, 1.0 - x / jnp.where(peak > 0, peak, 1.0), jnp.nan)
        return (peak, jnp.maximum(s[1], dd))
    if op == "window_sum_max":
        ring = s[0].at[i % s[0].shape[0]].set(x)
        # Summing the ring every tick (not a running sum) keeps float32 drift out.
        return (ring, jnp.maximum(s[1], ring.sum()))
    raise ValueError(f"unknown reduction {op!r}")


def stream_update(state: dict, ev, i, lst_rate) -> dict:
    """Fold one tick's events (a TickEvents, or a mapping of one tick's fields) into
    `state`; `i`: the tick index; `lst_rate`: the LST redemption rate in BASE."""
    dtype = jax.tree_util.tree_leaves(state)[0].dtype
    get = ev.__getitem__ if isinstance(ev, dict) else lambda k: getattr(ev, k)
    g = lambda k: jnp.asarray(get(k), dtype)
    rate = jnp.asarray(lst_rate).astype(dtype)
    out = {}
    for key, s in state.items():
        op, q = key.split(":")
        out[key] = _stream_op(op, s, mt.QUANTITIES[q](g, jnp, rate), i)
    return out


def stream_finish(state: dict, names) -> dict[str, Array]:
    """{name: value} of the metrics `names` from the reductions after the last tick."""
    done = {"mean": lambda s: s[0] / s[1], "drawdown": lambda s: s[1]}
    done["window_sum_max"] = lambda s: s[1]
    reduced = {k: done.get(k.split(":")[0], lambda s: s)(s) for k, s in state.items()}
    return {n: mt.METRICS_BY_NAME[n].value(reduced, jnp) for n in names}


def episode_reduce(
    key: Array, params: Params, n_ticks: int, window: int, progress=None
) -> dict[str, Array]:
    """Reset, run `n_ticks` ticks with no external orders and return the episode metrics.

    The same keys as `jaxsim.rollout(key, params, n_ticks)` (so the same market path as
    `jaxsim.tools.simulate` for that key), but the tick events are folded into running
    reductions inside the scan instead of being stacked. `window`: ticks in one hour (for
    ``liq_peak_1h``), a static int. `progress(i)`: optional host callback, called with the
    tick index every ``max(1, n_ticks // 50)`` ticks.
    """
    k_reset, k_run = jax.random.split(key)
    state = tie_to_key(reset(k_reset, params), k_run)  # one batching pass of the scan
    every = max(1, n_ticks // 50)

    def body(carry, xs):
        state, acc = carry
        k, i = xs
        _, k_step = jax.random.split(k)  # the policy's key in `rollout`
        state, ev = step(k_step, state, no_orders(params), params)
        acc = stream_update(acc, ev, i, params.exo.lst_rate)
        if progress is not None:
            # `i` is not batched, so this stays a real branch under vmap.
            jax.lax.cond(
                (i + 1) % every == 0,
                lambda: jax.debug.callback(progress, i + 1),
                lambda: None,
            )
        return (state, acc), None

    keys = jax.random.split(k_run, n_ticks)
    acc0 = stream_init(METRICS, state.acct.bal.dtype, window)
    (_, acc), _ = jax.lax.scan(body, (state, acc0), (keys, jnp.arange(n_ticks)))
    return stream_finish(acc, METRICS)


# ------------------------------------------------------------------ running


class _Progress:
    """Thread-safe progress over (chunks x ticks), fed by the in-program callback."""

    def __init__(self, total: int, enabled: bool, desc: str):
        self.total, self.base, self.done = total, 0, 0
        self.enabled, self.desc = enabled, desc
        self.lock = threading.Lock()
        self.bar = None

    def start(self) -> None:
        """Show the bar (after compilation, so that it times the run only)."""
        if self.enabled:
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=self.total, desc=self.desc, unit="tick", leave=False)
            except ImportError:  # pragma: no cover - tqdm is optional
                self.bar = None

    def tick(self, i) -> None:
        # With several devices each shard calls back; keep the largest tick seen.
        with self.lock:
            n = self.base + int(np.max(np.asarray(i)))
            if n > self.done:
                if self.bar is not None:
                    self.bar.update(n - self.done)
                self.done = n

    def next_chunk(self, n_ticks: int) -> None:
        with self.lock:
            self.base += n_ticks
            if self.done < self.base:
                if self.bar is not None:
                    self.bar.update(self.base - self.done)
                self.done = self.base

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _pick_devices(devices: int | Sequence | None) -> list:
    """None: all of `jax.devices()`; an int: the first that many; else the given list."""
    if devices is None:
        return jax.devices()
    if isinstance(devices, int):
        all_devs = jax.devices()
        if not 1 <= devices <= len(all_devs):
            raise ValueError(f"devices must be in [1, {len(all_devs)}], got {devices}")
        return all_devs[:devices]
    return list(devices)


def run_sweep(
    grid: Grid,
    *,
    devices: int | Sequence | None = None,
    chunk: int | None = None,
    progress: bool = True,
    max_chunk_per_device: int = 1024,
) -> SweepResult:
    """Run the grid x seeds as one jitted, vmapped program sharded over devices.

    Args:
        grid: from `build_grid`.
        devices: the devices of the 1-D mesh: None = all of `jax.devices()`, an int = the
            first that many, or a list of devices.
        chunk: envs per call (rounded up to a multiple of the device count); default: the
            whole padded batch, at most `max_chunk_per_device` per device. Every chunk has
            the same shape, so the program compiles once.
        progress: show a progress bar (tqdm) fed from inside the program.

    One function (~70 lines of code): its closures share the mesh, keys and chunk layout.
    """
    spec = grid.spec
    devs = _pick_devices(devices)
    n_dev = len(devs)
    n_env = spec.n_points * spec.seeds
    if chunk is None:
        chunk = n_dev * min(math.ceil(n_env / n_dev), max_chunk_per_device)
    else:
        chunk = n_dev * max(1, math.ceil(int(chunk) / n_dev))
    n_chunks = math.ceil(n_env / chunk)
    padded = n_chunks * chunk

    # env b -> grid point b // seeds, seed b % seeds; padding repeats the last env.
    env_idx = np.minimum(np.arange(padded), n_env - 1)
    point_of = env_idx // spec.seeds
    keys = np.asarray(cli.seed_keys(spec.seeds, spec.seed))[env_idx % spec.seeds]

    mesh = Mesh(np.asarray(devs), ("batch",))
    shard = NamedSharding(mesh, P("batch"))
    bar = _Progress(n_chunks * grid.n_ticks, progress, f"sweep {spec.name}")

    def one(key, params):
        return episode_reduce(key, params, grid.n_ticks, grid.window, bar.tick)

    # shard_map: every device runs exactly the vmapped single-device program on its slice
    # (no SPMD partitioner rewriting the body), so a device's results depend only on its
    # slice and the per-device batch size, never on how many devices there are.
    # check_vma=False: the engine's scans start from constants (unvarying over the mesh)
    # and carry per-env values; every value here is per device anyway.
    body = jax.shard_map(
        jax.vmap(one),
        mesh=mesh,
        in_specs=(P("batch"), P("batch")),
        out_specs=P("batch"),
        check_vma=False,
    )
    fn = jax.jit(body, in_shardings=(shard, shard), out_shardings=shard)

    def chunk_args(c):
        sl = slice(c * chunk, (c + 1) * chunk)
        p = jax.tree_util.tree_map(lambda x: x[point_of[sl]], grid.params)
        return jax.device_put((keys[sl], p), shard)

    t0 = time.perf_counter()
    args = chunk_args(0)
    compiled = fn.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    outs = []
    bar.start()
    t0 = time.perf_counter()
    try:
        for c in range(n_chunks):
            if c:
                args = chunk_args(c)
            out = jax.block_until_ready(compiled(*args))
            outs.append(jax.device_get(out))
            bar.next_chunk(grid.n_ticks)
    finally:
        bar.close()
    run_s = time.perf_counter() - t0
    metrics = {}
    for k in METRICS:
        v = np.concatenate([np.asarray(o[k]) for o in outs])[:n_env]
        metrics[k] = v.reshape(spec.n_points, spec.seeds)
    return SweepResult(
        grid=grid,
        metrics=metrics,
        devices=[f"{d.platform}:{d.id} ({d.device_kind})" for d in devs],
        compile_s=compile_s,
        run_s=run_s,
        chunk=chunk,
        n_chunks=n_chunks,
    )


# ------------------------------------------------------------------ CLI


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m jaxsim.tools.sweep",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("config", help="sweep YAML (e.g. configs/sweeps/depeg_index_fix.yaml)")
    ap.add_argument("--out", default=None, help="output folder (default runs/sweep/<name>)")
    ap.add_argument("--seeds", type=int, default=None, help="override the file's seeds")
    ap.add_argument("--seed", type=int, default=None, help="override the file's first seed")
    cli.add_horizon_args(ap, "override the horizon (ticks)", "override the horizon (hours)")
    ap.add_argument("--chunk", type=int, default=None, help="envs per call (default: all)")
    ap.add_argument("--devices", type=int, default=None, help="use the first N devices")
    cli.add_set_arg(
        ap, "extra fixed override for every grid point (dotted key, YAML value; repeatable)"
    )
    ap.add_argument(
        "--x64",
        action="store_true",
        help="run in float64 (audits: float32 rounding differences between programs, "
        "~1e-7, are amplified by liquidation cascades; float64 shrinks them to ~1e-14)",
    )
    ap.add_argument(
        "--cache",
        default=None,
        metavar="DIR",
        help="JAX persistent compilation cache folder (a rerun of the same sweep shape then "
        "skips the ~1 min compile)",
    )
    ap.add_argument("--no-plot", action="store_true", help="skip heatmaps.png")
    ap.add_argument(
        "--replot",
        action="store_true",
        help="do not run: reload DIR/sweep.npz and sweep.json, rewrite the table, CSVs and plots",
    )
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    return ap


def _spec_from_args(args) -> tuple:
    """(spec, grid) of the sweep file with the command line's overrides. Raises ConfigError."""
    spec = load_sweep(args.config)
    if args.seeds is not None:
        if args.seeds < 1:
            raise ConfigError("--seeds must be >= 1")
        spec.seeds = args.seeds
    if args.seed is not None:
        spec.seed = args.seed
    if args.sets:
        extra = _flatten(cli.parse_overrides(args.sets))
        for k in extra:
            _check_fixed_key(k, "--set")
        spec.overrides.update(extra)
    if args.hours is not None:
        spec.n_ticks, spec.horizon_s = None, args.hours * 3600.0
    return spec, build_grid(spec, args.ticks)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.x64:
        jax.config.update("jax_enable_x64", True)  # Params are then built in float64
    if args.cache:
        jax.config.update("jax_compilation_cache_dir", args.cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    try:
        spec, grid = _spec_from_args(args)
    except ConfigError as e:
        return cli.config_error(e)
    devs = jax.devices()[: args.devices] if args.devices else jax.devices()
    print(
        f"sweep {spec.name}: {spec.scenario}{'/' + spec.variant if spec.variant else ''}, "
        f"{spec.n_points} grid points ({' x '.join(str(n) for n in spec.shape)}) x "
        f"{spec.seeds} seeds x {grid.n_ticks} ticks on {len(devs)} device(s) "
        f"[{devs[0].platform}: {devs[0].device_kind}]"
    )
    if spec.question:
        print(f"question: {spec.question}")
    out = Path(args.out) if args.out else Path("runs") / "sweep" / spec.name
    if args.replot:
        try:
            result = load_result(grid, out)
        except (OSError, KeyError, ValueError) as e:
            print(f"error: cannot reload {out}: {e}", file=sys.stderr)
            return 2
    else:
        result = run_sweep(grid, devices=len(devs), chunk=args.chunk, progress=not args.no_progress)
    header, rows = table_rows(result)
    cli.print_table(
        f"mean over {spec.seeds} seeds (compile {result.compile_s:.1f} s, run {result.run_s:.1f} s, "
        f"{result.env_steps_per_s:,.0f} env-steps/s, {result.n_chunks} chunk(s) of {result.chunk})",
        header,
        rows,
    )
    plot = not args.no_plot and cli.have_matplotlib("heatmaps")
    written = write_outputs(result, out, plot)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
