"""Throughput: env-steps per second against batch size, for the engine and the role envs.

    python -m benchmarks.throughput [--json FILE] [--batches 1,16,128,1024] [--ticks 20]
        [--sections engine,roles,gym,sb3,dims,phases,train] [--env-batches 128] [--gym-steps 200]
        [--sb3-envs 16] [--dims-batch 16] [--accounts 24,48,96] [--levels 32,64,128]
        [--scenario calm] [--repeats 2] [--max-run-s 60] [--cache DIR]
        [--train-batches 16,128,1024] [--train-updates 2]
    python -m benchmarks.throughput --compare REV [--rounds 3] [--stat best|median]
        [--batches 1,16,128,1024] [--ticks 20] [--repeats 2] [--scenario calm]
        [--gym-steps 200] [--gym-warmup 50] [--child-xla-flags FLAGS] [--json FILE]

Rows (one table each):

- engine: `jit(vmap(rollout))` with no external orders (background population only), one
  call runs `--ticks` ticks for the whole batch; batch sizes from `--batches` (up to
  65,536 "as memory allows": a batch is skipped when the compiled program's memory
  estimate exceeds the device's memory, and larger ones are not tried once a call took
  longer than `--max-run-s`).
- roles: each role env (`envs`) driven by its heuristic policy (`agents.heuristics`) inside
  `lax.scan` (reset, policy, step with auto-reset), vmapped over `--env-batches`.
- gym: the single-env `gymnasium` loop (`gymnasium.make`, one `env.step` per call, actions
  from NumPy), market maker, and the engine's own batch-1 `jit(step)` called the same way
  in alternating blocks of `--gym-steps` steps (best block each), with the ratio of the
  two in a small table at the end.
- sb3: the SB3 `VecEnv` (`envs.sb3.CascadeSB3VecEnv`) over `--sb3-envs` envs, NumPy actions.
- dims: engine cost against `dims.n_accounts` and `dims.n_levels` at `--dims-batch` envs.
- train (off by default): PPO training env-steps/s, market maker: stable-baselines3 PPO
  on the SB3 VecEnv (`--sb3-envs` envs, VecNormalize, `configs/train/ppo.yaml`) against the
  JAX PPO (`agents.jax_ppo`, same hyperparameters) at each of `--train-batches` envs, 64
  steps per env per update, 8 minibatches; `--train-updates` timed updates after a warm-up
  (compile) one. The summary gives the best JAX rate / the SB3 rate.
- phases (off by default): time of each phase of `jaxsim.step` at `--dims-batch` envs (each
  phase jitted and vmapped on its own, on a state taken mid-episode), to see what bounds
  a step.

Every row reports the JIT compile time (lower + compile, or the first call for the
adapters), the best of `--repeats` timed calls, env-steps/s, microseconds per env-step and
memory per env: the state pytree's bytes and, where XLA reports it, the compiled program's
temporary + argument + output bytes divided by the batch (`Compiled.memory_analysis`); on
a GPU also the device's peak bytes in use. Rows whose package is missing (envs, agents,
gymnasium, stable-baselines3) print "not available" with the reason. `--json FILE` writes
every row and the device description. `--cache DIR` turns on JAX's persistent compilation
cache (compile times then measure cache loads on the second run).

`--compare REV` (a commit, tag or branch of this repository) measures the git revision REV
side by side with the working tree (its uncommitted changes included) instead of the
rows above (`benchmarks/compare.py`): REV is checked out in a temporary
`git worktree add --detach` that is removed afterwards (also on an error or Ctrl-C), and
each of `--rounds` rounds runs one fresh Python process per tree, base first, alternating,
so that machine noise hits both alike. Each process imports `jaxsim` and `envs` from its
own tree and measures with the working tree's code (`benchmarks/compare_child.py`), so REV
needs none of it. Per tree: engine env-steps/s by `--batches` (the engine rows'
measurement), the compile time of one `jax.jit(jaxsim.step)` (lower + compile, one env),
the reset state's bytes per env, and the mean microseconds of one single-env gymnasium
`env.step` (market maker, one fixed action, `--gym-steps` steps after `--gym-warmup`). The
children run with XLA's default flags: XLA_FLAGS (e.g. the test suite's
--xla_cpu_use_fusion_emitters=false), JAX_DISABLE_MOST_OPTIMIZATIONS and the persistent
compilation cache are removed from their environment (`--child-xla-flags` sets XLA_FLAGS
for both); the flags used are printed. The table gives each metric's base and work-tree
value (`--stat best`: highest rate, lowest time or size over the rounds; or the median),
work / base and which direction is better, headed by both trees' sha and `git describe`
and whether the work tree is dirty; `--json FILE` adds every round's numbers.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jaxsim

DEFAULT_ROLE_POLICY = {
    "market_maker": "avellaneda_stoikov",
    "arbitrageur": "basis_arb",
    "leveraged_trader": "trend_follower",
}
SECTIONS = ("engine", "roles", "gym", "sb3", "dims")
LONG_CALL_S = 10.0  # calls at least this long are timed once (allocation cost negligible)


# ------------------------------------------------------------------ helpers


def device_info() -> dict[str, Any]:
    d = jax.devices()[0]
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        affinity = os.cpu_count()
    return dict(
        platform=d.platform,
        device_kind=d.device_kind,
        n_devices=jax.device_count(),
        cpu=cpu,
        cpu_cores=affinity,
        jax=jax.__version__,
        python=platform.python_version(),
    )


def compiled_bytes(compiled) -> int | None:
    """Temporary + argument + output bytes XLA reports for a compiled program, if any."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return None
    if m is None:
        return None
    total = 0
    for name in ("temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes"):
        total += int(getattr(m, name, 0) or 0)
    return total or None


def device_memory_limit() -> int | None:
    """Bytes the device can hold: the accelerator's limit, or the host's physical memory."""
    d = jax.devices()[0]
    try:
        stats = d.memory_stats()
    except Exception:  # noqa: BLE001
        stats = None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        return None


def peak_device_bytes() -> int | None:
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # noqa: BLE001
        return None
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def _fmt_bytes(n: float | None) -> str:
    if n is None or not np.isfinite(n):
        return "-"
    for div, suf in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= div:
            return f"{n / div:.1f} {suf}"
    return f"{n:.0f} B"


def _row(section: str, label: str, **kw) -> dict[str, Any]:
    return dict(section=section, label=label, **kw)


def _na(section: str, label: str, why: str) -> dict[str, Any]:
    return _row(section, label, status=f"not available: {why}")


def time_compiled(
    fn: Callable, args: tuple, batch: int, ticks: int, repeats: int, mem_limit: int | None
) -> dict[str, Any]:
    """Compile `fn` for `args`, then time `repeats` calls; one call = batch x ticks steps."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    prog = compiled_bytes(compiled)
    if mem_limit and prog and prog > 0.8 * mem_limit:
        return dict(
            status=f"skipped: needs ~{_fmt_bytes(prog)} of {_fmt_bytes(mem_limit)}",
            compile_s=compile_s,
        )
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*args))  # first call: allocations
    best = time.perf_counter() - t0
    if best < LONG_CALL_S:  # a long call's first run is timing enough
        best = float("inf")
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            jax.block_until_ready(compiled(*args))
            best = min(best, time.perf_counter() - t0)
    rate = batch * ticks / best
    return dict(
        status="ok",
        batch=batch,
        ticks=ticks,
        compile_s=compile_s,
        run_s=best,
        steps_per_s=rate,
        us_per_step=1e6 / rate,
        program_bytes_per_env=prog / batch if prog else None,
        peak_device_bytes=peak_device_bytes(),
    )


# ------------------------------------------------------------------ engine


def engine_fn(params: jaxsim.Params, ticks: int) -> Callable:
    """keys (B, 2) -> final mark prices (B,): reset + `ticks` steps per env, no orders."""

    def one(key):
        state, _ = jaxsim.rollout(key, params, ticks)
        return state.px.mark

    return jax.vmap(one)


def _shape_bytes(shapes) -> int:
    return int(sum(np.prod(s.shape) * s.dtype.itemsize for s in jax.tree_util.tree_leaves(shapes)))


def bench_engine(args, params, mem_limit) -> list[dict]:
    rows = []
    state_b = _shape_bytes(jax.eval_shape(jaxsim.reset, jax.random.PRNGKey(0), params))
    too_slow = False
    for b in args.batches:
        label = f"engine, batch {b}"
        if too_slow:
            rows.append(_row("engine", label, batch=b, status="skipped: time budget"))
            continue
        keys = jax.random.split(jax.random.PRNGKey(1), b)
        r = time_compiled(
            engine_fn(params, args.ticks), (keys,), b, args.ticks, args.repeats, mem_limit
        )
        r["state_bytes_per_env"] = state_b
        rows.append(_row("engine", label, **r))
        _print_row(rows[-1])
        if r.get("run_s", 0.0) > args.max_run_s:
            too_slow = True
    return rows


def bench_dims(args, mem_limit, engine_rows) -> list[dict]:
    rows = []
    b = args.dims_batch
    cases = [("n_accounts", n) for n in args.accounts] + [("n_levels", n) for n in args.levels]
    base = jaxsim.load_scenario(args.scenario)
    for field, n in cases:
        label = f"dims.{field} = {n}, batch {b}"
        if getattr(base.dims, field) == n:
            same = [r for r in engine_rows if r.get("batch") == b and r.get("status") == "ok"]
            if same:
                rows.append({**same[0], "section": "dims", "label": label, "reused": "engine row"})
                _print_row(rows[-1])
                continue
        try:
            ov = _dims_override(field, n, base, args.scenario)
            params = jaxsim.load_scenario(args.scenario, overrides=ov)
        except jaxsim.ConfigError as e:
            rows.append(_na("dims", label, str(e)))
            _print_row(rows[-1])
            continue
        keys = jax.random.split(jax.random.PRNGKey(1), b)
        r = time_compiled(
            engine_fn(params, args.ticks), (keys,), b, args.ticks, args.repeats, mem_limit
        )
        r["state_bytes_per_env"] = _shape_bytes(
            jax.eval_shape(jaxsim.reset, jax.random.PRNGKey(0), params)
        )
        rows.append(_row("dims", label, **r))
        _print_row(rows[-1])
    return rows


def _dims_override(field: str, n: int, base: jaxsim.Params, scenario: str) -> dict:
    """Overrides for one dims case: fewer levels get coarser ticks (same price range)."""
    ov: dict[str, Any] = {f"dims.{field}": n}
    if field == "n_levels" and n < base.dims.n_levels:
        scale = base.dims.n_levels / n
        cfg = jaxsim.scenario_config(scenario)
        for m, v in cfg["markets"]["tick_size"].items():
            ov[f"markets.tick_size.{m}"] = float(v) * scale
    return ov


# ------------------------------------------------------------------ roles in lax.scan


def bench_roles(args, mem_limit) -> list[dict]:
    rows = []
    try:
        from envs.roles import ROLES, make_role
    except Exception as e:  # noqa: BLE001 - any import failure means "not available"
        return [_na("roles", "role envs", f"envs not importable ({e})")]
    try:
        from agents.heuristics import heuristic
    except Exception as e:  # noqa: BLE001
        return [_na("roles", f"{r} + heuristic", f"agents not importable ({e})") for r in ROLES]
    for role in ROLES:
        name = DEFAULT_ROLE_POLICY.get(role, "flat")
        try:
            env = make_role(role)
            params = env.make_params(args.scenario)
            policy = heuristic(role, name)
            pparams = policy.make_params(params)
        except Exception as e:  # noqa: BLE001
            rows.append(_na("roles", f"{role} + {name}", repr(e)))
            _print_row(rows[-1])
            continue
        state_shape = jax.eval_shape(env.reset, jax.random.PRNGKey(0), params)
        for b in args.env_batches:
            label = f"{role} + {name}, batch {b}"

            def run(keys, env=env, params=params, policy=policy, pparams=pparams):
                def one(key):
                    k0, k1 = jax.random.split(key)
                    obs, st = env.reset(k0, params)

                    def body(carry, k):
                        obs, st = carry
                        ka, ks = jax.random.split(k)
                        act = policy(ka, obs, pparams)
                        obs, st, rew, term, trunc, info = env.step(ks, st, act, params)
                        return (obs, st), rew

                    _, rews = jax.lax.scan(body, (obs, st), jax.random.split(k1, args.ticks))
                    return rews.sum()

                return jax.vmap(one)(keys)

            keys = jax.random.split(jax.random.PRNGKey(2), b)
            try:
                r = time_compiled(run, (keys,), b, args.ticks, args.repeats, mem_limit)
            except Exception as e:  # noqa: BLE001 - a broken role should not stop the table
                rows.append(_na("roles", label, repr(e)[:200]))
                _print_row(rows[-1])
                continue
            r["state_bytes_per_env"] = _shape_bytes(state_shape)
            rows.append(_row("roles", label, **r))
            _print_row(rows[-1])
    return rows


# ------------------------------------------------------------------ adapters


def bench_gym(args) -> list[dict]:
    """The single-env gymnasium step against the engine's own batch-1 `jit(step)`.

    Both loops run one call per step from Python (the engine's: no external orders, state
    fed back, blocked on each call) in `max(3, --repeats)` alternating blocks of
    `--gym-steps` steps, so that load on the machine hits both alike; each row keeps its
    best block. The gym row carries `ratio_to_engine` (gym step time / engine step time).
    """
    label = "gymnasium single env (market_maker), 1 env"
    try:
        import gymnasium

        import envs  # noqa: F401 - registers the ids

        env = gymnasium.make("cascade/MarketMaker-v0", scenario=args.scenario, max_steps=10**9)
    except Exception as e:  # noqa: BLE001
        return [_na("gym", label, repr(e)[:200])]
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    env.reset(seed=0)
    env.step(env.action_space.sample())
    compile_s = time.perf_counter() - t0
    n = args.gym_steps
    acts = rng.uniform(-1, 1, (n,) + env.action_space.shape).astype(np.float32)

    params = jaxsim.load_scenario(args.scenario)
    key = jax.random.PRNGKey(0)
    orders = jaxsim.no_orders(params)
    t0 = time.perf_counter()
    state = jaxsim.reset(key, params)
    compiled = jax.jit(jaxsim.step).lower(key, state, orders, params).compile()
    state = jax.block_until_ready(compiled(key, state, orders, params)[0])
    eng_compile_s = time.perf_counter() - t0

    def gym_block() -> float:
        t0 = time.perf_counter()
        for i in range(n):
            env.step(acts[i])
        return time.perf_counter() - t0

    def engine_block() -> float:
        nonlocal state
        t0 = time.perf_counter()
        for _ in range(n):
            state, _ = compiled(key, state, orders, params)
            jax.block_until_ready(state)
        return time.perf_counter() - t0

    gym_s, eng_s = float("inf"), float("inf")
    for _ in range(max(3, args.repeats)):
        gym_s = min(gym_s, gym_block())
        eng_s = min(eng_s, engine_block())
    env.close()
    rows = []
    for lab, sec, comp, dt in (
        (label, "gym", compile_s, gym_s),
        ("engine jit(step), batch 1, same run", "gym_engine", eng_compile_s, eng_s),
    ):
        rate = n / dt
        rows.append(
            _row(
                sec,
                lab,
                status="ok",
                batch=1,
                ticks=n,
                compile_s=comp,
                run_s=dt,
                steps_per_s=rate,
                us_per_step=1e6 / rate,
            )
        )
    rows[0]["ratio_to_engine"] = gym_s / eng_s
    for r in rows:
        _print_row(r)
    return rows


def gym_table(rows: list[dict]) -> list[str]:
    """The single-env table: gym step, engine batch-1 step, their ratio."""
    gym = [r for r in rows if r["section"] == "gym" and r.get("status") == "ok"]
    eng = [r for r in rows if r["section"] == "gym_engine" and r.get("status") == "ok"]
    if not gym or not eng:
        return []
    g, e = gym[0], eng[0]
    return [
        f"{'single env, one call per step':<40} {'ms/step':>8}",
        f"{'gymnasium env.step (market_maker)':<40} {g['us_per_step'] / 1e3:>8.3f}",
        f"{'engine jit(step), batch 1':<40} {e['us_per_step'] / 1e3:>8.3f}",
        f"{'ratio gym / engine':<40} {g['ratio_to_engine']:>8.2f}",
    ]


def bench_sb3(args) -> list[dict]:
    n_env = args.sb3_envs
    label = f"SB3 VecEnv (market_maker), {n_env} envs"
    try:
        from envs.sb3 import CascadeSB3VecEnv

        venv = CascadeSB3VecEnv("market_maker", num_envs=n_env, scenario=args.scenario)
    except Exception as e:  # noqa: BLE001
        return [_na("sb3", label, repr(e)[:200])]
    rng = np.random.default_rng(0)
    shape = (n_env,) + venv.action_space.shape
    t0 = time.perf_counter()
    venv.reset()
    venv.step(rng.uniform(-1, 1, shape).astype(np.float32))
    compile_s = time.perf_counter() - t0
    steps = max(1, args.gym_steps // 4)
    acts = rng.uniform(-1, 1, (steps,) + shape).astype(np.float32)
    t0 = time.perf_counter()
    for i in range(steps):
        venv.step(acts[i])
    dt = time.perf_counter() - t0
    venv.close()
    rate = n_env * steps / dt
    row = _row(
        "sb3",
        label,
        status="ok",
        batch=n_env,
        ticks=steps,
        compile_s=compile_s,
        run_s=dt,
        steps_per_s=rate,
        us_per_step=1e6 / rate,
    )
    _print_row(row)
    return [row]


# ------------------------------------------------------------------ PPO training


def _train_row(label: str, backend: str, n_env: int, ticks: int, compile_s: float, dt: float):
    """A printed `train` row: `ticks` steps of each of `n_env` envs trained in `dt` s."""
    rate = n_env * ticks / dt
    row = _row(
        "train", label, status="ok", batch=n_env, ticks=ticks, compile_s=compile_s, run_s=dt,
        steps_per_s=rate, us_per_step=1e6 / rate, backend=backend,
    )  # fmt: skip
    _print_row(row)
    return row


def bench_train(args) -> list[dict]:
    """SB3 PPO vs JAX PPO, env-steps/s of training (rollouts + updates)."""
    rows: list[dict] = []
    n_upd = max(1, args.train_updates)
    try:
        import torch
        from stable_baselines3 import PPO
        from stable_baselines3.common.vec_env import VecNormalize

        from agents.sb3_train import (
            algo_kwargs,
            load_hyperparams,
            make_vec_env,
            torch_threads_for,
        )
    except Exception as e:  # noqa: BLE001
        rows.append(_na("train", "PPO training, SB3", repr(e)[:200]))
    else:
        n_env = args.sb3_envs
        hp = load_hyperparams(
            "ppo", "market_maker", {"n_steps": 128, "batch_size": 128 * n_env // 8}
        )
        # The threads train.py uses (1 for this small MLP on the CPU).
        threads, _ = torch_threads_for(hp, "cpu")
        threads_before = torch.get_num_threads()
        if threads is not None:
            torch.set_num_threads(threads)
        label = f"PPO training, SB3 (torch CPU, {torch.get_num_threads()} thr), {n_env} envs"
        venv = VecNormalize(make_vec_env("market_maker", args.scenario, None, n_env, {}))
        model = PPO("MlpPolicy", venv, seed=0, device="cpu", **algo_kwargs("ppo", hp, 5))
        rollout = 128 * n_env
        t0 = time.perf_counter()
        model.learn(rollout)  # compiles the env step
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        model.learn(n_upd * rollout, reset_num_timesteps=False)
        dt = time.perf_counter() - t0
        venv.close()
        torch.set_num_threads(threads_before)
        rows.append(_train_row(label, "sb3", n_env, n_upd * 128, compile_s, dt))
    try:
        import envs
        from agents import jax_ppo
        from agents.sb3_train import load_hyperparams
    except Exception as e:  # noqa: BLE001
        return rows + [_na("train", "PPO training, JAX", repr(e)[:200])]
    env, params = envs.make("market_maker", scenario=args.scenario, legacy=False)
    for n_env in args.train_batches:
        label = f"PPO training, JAX, {n_env} envs"
        hp = load_hyperparams(
            "ppo", "market_maker", {"n_steps": 64, "batch_size": max(64 * n_env // 8, 1)}
        )
        st = jax_ppo.PPOSettings.from_hyperparams(hp, n_envs=n_env)
        init, run, _ = jax_ppo.make_trainer(env, params, st, total_updates=n_upd + 1)
        t0 = time.perf_counter()
        runner = jax.jit(init)(jax.random.PRNGKey(0))
        compiled = run.lower(runner, 1).compile()
        runner, _ = compiled(runner)  # warm-up update (allocations)
        jax.block_until_ready(runner.update)
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(n_upd):
            runner, _ = compiled(runner)
        jax.block_until_ready(runner.update)
        dt = time.perf_counter() - t0
        rows.append(_train_row(label, "jax", n_env, n_upd * 64, compile_s, dt))
        if dt > args.max_run_s:
            break
    return rows


# ------------------------------------------------------------------ phases of a step


def bench_phases(args, mem_limit) -> list[dict]:
    """Time each phase of `jaxsim.step` separately (vmapped over --dims-batch envs)."""
    from jaxsim import population as popm
    from jaxsim.mechanisms import (
        accounts,
        collateral,
        exogenous,
        funding,
        index_mark,
        liquidation,
        liquidity,
        schedule,
        tick_acc,
    )
    from jaxsim.mechanisms import (
        orders as order_entry,
    )

    params = jaxsim.load_scenario(args.scenario)
    b = args.dims_batch
    keys = jax.random.split(jax.random.PRNGKey(3), b)
    # A mid-episode state: books, population memory and positions warmed up.
    warm = jax.jit(jax.vmap(lambda k: jaxsim.rollout(k, params, 20)[0]))
    states = jax.block_until_ready(warm(keys))
    dtype = params.dt.dtype
    acc0 = lambda: tick_acc.zero(dtype, params.dims.n_accounts)

    def pre_orders(k, s):
        s = index_mark.reprice(exogenous.move_venues(k, s, params), params)
        s, _ = schedule.apply_due(s, params, acc0())
        return liquidity.requote(s, params)

    def bg(k, s):
        eq = accounts.equity(s)
        s = popm.external_moves(s, params, eq)
        o, _ = popm.background_orders(k, s, params, eq)
        allo = jax.tree_util.tree_map(
            lambda x, y: jnp.concatenate([x, y]), o, jaxsim.no_orders(params)
        )
        return s, allo

    # Inputs of the later phases, computed once.
    s_pre = jax.block_until_ready(jax.jit(jax.vmap(pre_orders))(keys, states))
    s_bg, orders = jax.block_until_ready(jax.jit(jax.vmap(bg))(keys, s_pre))
    s_mat = jax.jit(jax.vmap(lambda s, o: order_entry.process(s, params, o, acc0())[0]))(
        s_bg, orders
    )
    s_px = jax.jit(
        jax.vmap(
            lambda s: funding.sample_and_settle(
                index_mark.reprice(collateral.arrivals(s), params), params
            )[0]
        )
    )(s_mat)
    n_orders = np.asarray(orders.kind != 0).sum(1)

    phases = [
        (
            "exogenous prices + reprice",
            lambda k, s: index_mark.reprice(exogenous.move_venues(k, s, params), params),
            (keys, states),
        ),
        ("rule schedule", lambda s: schedule.apply_due(s, params, acc0())[0], (states,)),
        ("LP liquidity refill", lambda s: liquidity.requote(s, params), (states,)),
        ("background traders decide", lambda k, s: bg(k, s)[1], (keys, s_pre)),
        (
            f"order matching ({n_orders.mean():.0f} orders/env, max {n_orders.max()})",
            lambda s, o: order_entry.process(s, params, o, acc0())[0],
            (s_bg, orders),
        ),
        (
            "prices + funding",
            lambda s: funding.sample_and_settle(
                index_mark.reprice(collateral.arrivals(s), params), params
            )[0],
            (s_mat,),
        ),
        ("liquidation engine", lambda s: liquidation.run(s, params, acc0())[0], (s_px,)),
        (
            "whole step",
            lambda k, s: jaxsim.step(k, s, jaxsim.no_orders(params), params)[0],
            (keys, states),
        ),
    ]
    rows = []
    for name, fn, inp in phases:
        try:
            r = time_compiled(jax.vmap(fn), inp, b, 1, max(args.repeats, 3), mem_limit)
        except Exception as e:  # noqa: BLE001 - private API may move
            rows.append(_na("phases", name, repr(e)[:200]))
            _print_row(rows[-1])
            continue
        rows.append(_row("phases", f"{name}, batch {b}", **r))
        _print_row(rows[-1])
    return rows


# ------------------------------------------------------------------ output


HEADER = f"{'row':<52} {'compile s':>9} {'run s':>8} {'env-steps/s':>12} {'us/step':>9} {'state/env':>10} {'XLA mem/env':>11}"


def _print_row(r: dict) -> None:
    if r.get("status") != "ok":
        print(f"{r['label']:<52} {r.get('status', '')}", flush=True)
        return
    print(
        f"{r['label']:<52} {r['compile_s']:>9.1f} {r['run_s']:>8.3f} {r['steps_per_s']:>12,.0f} "
        f"{r['us_per_step']:>9.1f} {_fmt_bytes(r.get('state_bytes_per_env')):>10} "
        f"{_fmt_bytes(r.get('program_bytes_per_env')):>11}",
        flush=True,
    )


def summary(rows: list[dict]) -> list[str]:
    ok = lambda sec: [r for r in rows if r["section"] == sec and r.get("status") == "ok"]
    lines = gym_table(rows)
    eng = ok("engine")
    if eng:
        best = max(eng, key=lambda r: r["steps_per_s"])
        lines.append(
            f"engine best: {best['steps_per_s']:,.0f} env-steps/s at batch {best['batch']}"
        )
        gym = ok("gym")
        if gym:
            ratio = best["steps_per_s"] / gym[0]["steps_per_s"]
            lines.append(f"engine best / gymnasium single-env loop: {ratio:,.1f}x")
        big = [r for r in eng if 4096 <= r["batch"] <= 65536]
        if len(big) >= 2:
            us = [r["us_per_step"] for r in big]
            lines.append(
                f"cost per env-step from batch {big[0]['batch']} to {big[-1]['batch']}: "
                f"{min(us):.2f}-{max(us):.2f} us (spread {max(us) / min(us) - 1:.0%})"
            )
    tr = ok("train")
    sb3 = [r for r in tr if r.get("backend") == "sb3"]
    jx = [r for r in tr if r.get("backend") == "jax"]
    if sb3 and jx:
        best = max(jx, key=lambda r: r["steps_per_s"])
        lines.append(
            f"PPO training: JAX {best['steps_per_s']:,.0f} env-steps/s at {best['batch']} envs, "
            f"SB3 {sb3[0]['steps_per_s']:,.0f} at {sb3[0]['batch']} envs: "
            f"{best['steps_per_s'] / sb3[0]['steps_per_s']:,.1f}x"
        )
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ints = lambda s: [int(x) for x in str(s).split(",") if x.strip()]
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.throughput",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--json", default=None, help="write every row and the device to FILE")
    ap.add_argument("--scenario", default="calm")
    ap.add_argument("--ticks", type=int, default=20, help="ticks per timed call")
    ap.add_argument("--batches", type=ints, default=[1, 16, 128, 1024], help="engine batches")
    ap.add_argument("--env-batches", type=ints, default=[128], help="role-env batches")
    ap.add_argument("--gym-steps", type=int, default=200, help="steps of the gymnasium loop")
    ap.add_argument("--sb3-envs", type=int, default=16)
    ap.add_argument("--dims-batch", type=int, default=16)
    ap.add_argument(
        "--train-batches", type=ints, default=[16, 128, 1024], help="JAX PPO batch sizes"
    )
    ap.add_argument("--train-updates", type=int, default=2, help="timed PPO updates per row")
    ap.add_argument("--accounts", type=ints, default=[24, 48, 96])
    ap.add_argument("--levels", type=ints, default=[32, 64, 128])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument(
        "--max-run-s",
        type=float,
        default=60.0,
        help="stop growing the batch after a call this long",
    )
    ap.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma list of {', '.join(SECTIONS)}, phases, train (default all but phases "
        "and train)",
    )
    ap.add_argument("--cache", default=None, help="persistent compilation cache folder")
    ap.add_argument(
        "--compare",
        default=None,
        metavar="REV",
        help="measure git revision REV against the working tree (see above)",
    )
    ap.add_argument("--rounds", type=int, default=3, help="--compare: processes per tree")
    ap.add_argument(
        "--stat",
        choices=("best", "median"),
        default="best",
        help="--compare: combine rounds by best (max rate, min time) or median",
    )
    ap.add_argument("--gym-warmup", type=int, default=50, help="--compare: gym steps before timing")
    ap.add_argument(
        "--child-xla-flags",
        default=None,
        help="--compare: XLA_FLAGS for the measuring processes (default: unset)",
    )
    args = ap.parse_args(argv)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    bad = set(args.sections) - set(SECTIONS) - {"phases", "train"}
    if bad:
        ap.error(f"unknown section(s) {sorted(bad)}")
    if args.compare is not None:
        if not args.compare.strip():
            ap.error("--compare needs a git revision")
        if args.rounds < 1:
            ap.error("--rounds must be at least 1")
        if not args.batches or min(args.batches) < 1:
            ap.error("--batches must be positive")
        if args.ticks < 1 or args.gym_steps < 1 or args.gym_warmup < 0:
            ap.error("--ticks and --gym-steps must be positive, --gym-warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.compare is not None:
        from benchmarks.compare import run_compare

        return run_compare(args)
    if args.cache:
        jax.config.update("jax_compilation_cache_dir", args.cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    info = device_info()
    params = jaxsim.load_scenario(args.scenario)
    d = params.dims
    print(
        f"device: {info['device_kind']} ({info['platform']}, {info['n_devices']} device(s)); "
        f"host: {info['cpu']}, {info['cpu_cores']} cores; jax {info['jax']}"
    )
    print(
        f"scenario {params.name}: accounts {d.n_accounts}, levels {d.n_levels}, cascade rounds "
        f"{d.cascade_rounds} x {d.liq_per_round}, orders {d.max_orders}; {args.ticks} ticks per call"
    )
    print(HEADER)
    print("-" * len(HEADER))
    mem_limit = device_memory_limit()
    rows: list[dict] = []
    t_all = time.perf_counter()
    if "engine" in args.sections:
        rows += bench_engine(args, params, mem_limit)
    if "roles" in args.sections:
        rows += bench_roles(args, mem_limit)
    if "gym" in args.sections:
        rows += bench_gym(args)
    if "sb3" in args.sections:
        rows += bench_sb3(args)
    if "dims" in args.sections:
        rows += bench_dims(args, mem_limit, [r for r in rows if r["section"] == "engine"])
    if "phases" in args.sections:
        rows += bench_phases(args, mem_limit)
    if "train" in args.sections:
        rows += bench_train(args)
    from benchmarks.compare import finish

    lines = summary(rows)
    finish(
        lines,
        t_all,
        args.json,
        dict(device=info, scenario=params.name, ticks=args.ticks, rows=rows, summary=lines),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
