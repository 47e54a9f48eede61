"""One measuring process of `python -m benchmarks.throughput --compare REV`.

Started by `benchmarks.compare` as

    python -m compare_child SPEC.json OUT.json

with its working directory and `PYTHONPATH` set to the tree under test followed by the
working tree's `benchmarks/` folder: `jaxsim` and `envs` are imported from the tree under
test, while this file and `throughput` (its engine measurement, the same as the engine rows
of the full benchmark) are the working tree's, so an old revision needs none of this code.
It is imported as the top-level module `compare_child`, never as `benchmarks.compare_child`
(the tree under test may have a `benchmarks` package of its own).

Only API that revision 195766a and later trees share is used: `jaxsim.load_scenario`,
`jaxsim.reset`, `jaxsim.step`, `jaxsim.no_orders`, `jaxsim.rollout` and the gymnasium ids
that `import envs` registers (`cascade/MarketMaker-v0`).

SPEC: {"tree", "bench_dir", "scenario", "batches", "ticks", "repeats", "gym_steps",
"gym_warmup"}. OUT gets one JSON object (see `measure`).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any


def _inside(path: str | None, root: str) -> bool:
    if not path:
        return False
    try:
        Path(path).resolve().relative_to(Path(root).resolve())
    except ValueError:
        return False
    return True


def fixed_action(space) -> Any:
    """The action every timed gym step takes: zeros (clipped into a Box), else `0`."""
    import numpy as np

    shape = getattr(space, "shape", None)
    low, high = getattr(space, "low", None), getattr(space, "high", None)
    if low is not None and high is not None and shape:
        return np.clip(np.zeros(shape, space.dtype), low, high)
    return 0


def measure(spec: dict) -> dict[str, Any]:
    """The tree's numbers: state bytes, jit(step) compile, engine env-steps/s, gym step."""
    t_start = time.perf_counter()
    # throughput: the full benchmark's measurement code (the working tree's benchmarks/
    # folder is on the path); jaxsim: the tree under test's.
    import jax
    import numpy as np
    import throughput as tp

    import jaxsim

    tree = spec["tree"]
    files = {"jaxsim": jaxsim.__file__, "throughput": tp.__file__, "compare_child": __file__}
    if not _inside(jaxsim.__file__, tree):
        raise RuntimeError(f"jaxsim imported from {jaxsim.__file__}, not from {tree}")
    if not _inside(tp.__file__, spec["bench_dir"]):
        raise RuntimeError(f"throughput imported from {tp.__file__}, not {spec['bench_dir']}")
    jax.config.update("jax_enable_compilation_cache", False)

    out: dict[str, Any] = dict(
        xla_flags=os.environ.get("XLA_FLAGS"),
        jax_disable_most_optimizations=bool(jax.config.read("jax_disable_most_optimizations")),
        device=tp.device_info(),
        files=files,
    )
    params = jaxsim.load_scenario(spec["scenario"])
    key = jax.random.PRNGKey(0)

    # State bytes per env: the reset state's leaves, as allocated.
    state = jax.block_until_ready(jaxsim.reset(key, params))
    out["state_bytes_per_env"] = int(
        sum(np.asarray(x).nbytes for x in jax.tree_util.tree_leaves(state))
    )

    # Compile time of one jit(step), single env (before anything else traces step).
    orders = jaxsim.no_orders(params)
    t0 = time.perf_counter()
    jax.jit(jaxsim.step).lower(key, state, orders, params).compile()
    out["step_compile_s"] = time.perf_counter() - t0

    # Engine env-steps/s by batch: jit(vmap(rollout)), background population only.
    mem_limit = tp.device_memory_limit()
    engine = []
    for b in spec["batches"]:
        keys = jax.random.split(jax.random.PRNGKey(1), b)
        r = tp.time_compiled(
            tp.engine_fn(params, spec["ticks"]),
            (keys,),
            b,
            spec["ticks"],
            spec["repeats"],
            mem_limit,
        )
        engine.append({"batch": b, **r})
    out["engine"] = engine

    # Single-env gymnasium step, market maker, one fixed action.
    out["gym"] = gym_step_time(dict(spec, _files=files))
    out["wall_s"] = time.perf_counter() - t_start
    return out


def gym_step_time(spec: dict) -> dict[str, Any]:
    """Mean microseconds of one `env.step` after `gym_warmup` steps (resets not timed)."""
    import gymnasium

    import envs

    if not _inside(envs.__file__, spec["tree"]):
        raise RuntimeError(f"envs imported from {envs.__file__}, not from {spec['tree']}")
    spec["_files"]["envs"] = envs.__file__
    env = gymnasium.make("cascade/MarketMaker-v0", scenario=spec["scenario"], max_steps=10**9)
    act = fixed_action(env.action_space)
    env.reset(seed=0)
    for _ in range(spec["gym_warmup"]):
        _, _, term, trunc, _ = env.step(act)
        if term or trunc:
            env.reset()
    times, resets = [], 0
    for _ in range(spec["gym_steps"]):
        t0 = time.perf_counter()
        _, _, term, trunc, _ = env.step(act)
        times.append(time.perf_counter() - t0)
        if term or trunc:
            resets += 1
            env.reset()
    env.close()
    times.sort()
    return dict(
        status="ok",
        steps=len(times),
        warmup=spec["gym_warmup"],
        resets=resets,
        us_per_step=1e6 * sum(times) / len(times),
        median_us=1e6 * times[len(times) // 2],
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec_path, out_path = argv
    with open(spec_path, encoding="utf-8") as f:
        spec = json.load(f)
    result = measure(spec)
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
