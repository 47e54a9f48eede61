"""Batched evaluation of policies over scenarios x variants x seeds.

Two engines produce the same `Trajectories` (per-step records, NumPy, shape (B, T)):

- `run_scan`: every (policy, scenario, variant, seed) episode is one row of a single
  jitted `vmap` over envs of a `lax.scan` over steps. Per-env `EnvParams` (scenarios mix
  in one batch; their static dims must agree), the policy is picked per env with
  `lax.switch` on a policy index. Pure-JAX policies only (the heuristics, and a trained
  SB3 MLP converted by `agents.sb3_policy.jax_policy`). The core's non-resetting
  `step_env` runs; steps after an episode ended are masked.
- `run_loop`: a NumPy loop over the batched `envs.vector.CascadeVectorEnv` (the backend
  of the SB3 VecEnv) with any `act(obs_batch) -> actions` callable, e.g. a loaded SB3
  model's `predict` behind its VecNormalize statistics.

`episode_table` turns trajectories into one row of metrics per episode and `summarize`
aggregates seeds. Metric definitions (per episode, over the steps it lasted):

- pnl: final marked equity / initial - 1 (the env's marked equity: USDT at index
  prices, perp uPnL at mark); pnl_usdt the same in USDT.
- sharpe: mean / std of the per-step equity changes (/ initial equity), scaled to one
  day with sqrt(steps per day) of the scenario's dt (episodes last hours, so a daily
  figure; x sqrt(365) annualizes it); 0 when the equity never moved.
- max_drawdown: largest fall of the equity curve from its running peak (initial
  equity included), fraction of the peak.
- liquidated: the engine liquidated the agent; survived: the episode reached its
  horizon without termination (liquidation or equity at the env's floor).
- funding_received / funding_paid (USDT): funding cash flows of the agent's perp,
  reconstructed from the state at each settlement: -position x mark x settled rate (the
  engine does not report per-account funding; the position after the tick is used, which
  differs from the engine's only if the agent was liquidated or auto-deleveraged in the
  settlement tick).
- fees (USDT): trading fees the agent paid (taker and maker, over its fills of the
  episode's active steps; a maker rebate counts negative), from the engine's per-account
  `TickEvents.fees_paid`. They are already inside pnl. Liquidation clearance fees are not
  trading fees and are not included.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jaxsim
from agents.heuristics import Policy
from envs.core import EnvParams, EnvState, RoleEnv, stack_params, tie_env_state, with_shared_name
from envs.roles import make_role
from jaxsim.ops import tie

Array = jax.Array

SECONDS_PER_DAY = 86400.0
RECORD_KEYS = ("equity", "mark", "position", "funding", "fees", "liquidated", "terminated")
METRICS = (
    "pnl",
    "pnl_usdt",
    "sharpe",
    "max_drawdown",
    "survived",
    "liquidated",
    "fees",
    "funding_paid",
    "funding_received",
    "steps",
)


# ============================================================== what to run


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """One scenario (and variant) with the horizon it is evaluated on."""

    scenario: str
    variant: str | None
    steps: int  # episode length (the scenario's horizon, capped)
    dt: float  # seconds per step

    @property
    def label(self) -> str:
        return self.scenario if self.variant is None else f"{self.scenario}/{self.variant}"


def scenario_configs(
    scenarios: Sequence[str] | None = None,
    variants: bool | Sequence[str] = True,
    max_steps: int | None = None,
    default_steps: int = 1000,
) -> list[EvalConfig]:
    """Scenario x variant list, from `jaxsim.list_scenarios()` / `list_variants()` at run time.

    Args:
        scenarios: names (default: every scenario in configs/).
        variants: True = base scenario and every variant; False = base only; a list =
            base plus those variants (where a scenario has them).
        max_steps: cap on each scenario's horizon (None or 0 = the full horizon).
        default_steps: episode length of a scenario without `horizon_s`.

    Raises:
        ValueError: an unknown scenario, listing the valid ones.
    """
    known = jaxsim.list_scenarios()
    names = list(known) if not scenarios else list(scenarios)
    bad = [s for s in names if s not in known]
    if bad:
        raise ValueError(f"unknown scenario(s) {bad}; allowed: {known}")
    out = []
    for s in names:
        vs: list[str | None] = [None]
        avail = jaxsim.list_variants(s)
        if variants is True:
            vs += list(avail)
        elif variants:
            vs += [v for v in variants if v in avail]
        for v in vs:
            cfg = jaxsim.scenario_config(s, v)
            dt = float(cfg["dt_s"])
            horizon = cfg.get("horizon_s")
            steps = max(1, round(float(horizon) / dt)) if horizon else default_steps
            if max_steps:
                steps = min(steps, int(max_steps))
            out.append(EvalConfig(s, v, steps, dt))
    return out


@dataclasses.dataclass
class Batch:
    """The rows of one evaluation: per-env params, policy index and policy params."""

    role: str
    policies: tuple[Policy, ...]
    configs: list[EvalConfig]
    rows: list[dict[str, Any]]  # policy, scenario, variant, seed, config index per env
    env_params: EnvParams  # stacked, leading axis B
    policy_id: np.ndarray  # (B,) int32
    policy_params: tuple  # per policy, stacked with leading axis B
    keys: Array  # (B, 2) episode keys
    steps: np.ndarray  # (B,) int episode length of each row

    @property
    def size(self) -> int:
        return len(self.rows)

    @property
    def max_steps(self) -> int:
        return int(self.steps.max())


def build_batch(
    role: str | RoleEnv,
    policies: Sequence[Policy],
    configs: Sequence[EvalConfig],
    seeds: int = 2,
    seed: int = 0,
    policy_overrides: dict[str, dict] | None = None,
    env_kwargs: dict | None = None,
) -> Batch:
    """Every (policy, config, seed) combination as one batch row.

    Episodes of the same (config, seed) use the same market key for every policy
    (common random numbers), so policies are compared on the same exogenous paths.

    Args:
        role: role name or env.
        policies: what to evaluate (their `role` must match).
        configs: scenarios and horizons (`scenario_configs`).
        seeds: episodes per (policy, config).
        seed: base seed; episode key of seed s = fold_in(PRNGKey(seed), s).
        policy_overrides: {policy name: {parameter: value}} passed to `make_params`.
        env_kwargs: role settings / `notional_scale` / `min_equity_frac` for make_params.
    """
    env = make_role(role)
    for p in policies:
        if p.role != env.role:
            raise ValueError(f"policy '{p.name}' is for role '{p.role}', not '{env.role}'")
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    overrides = policy_overrides or {}
    env_kwargs = dict(env_kwargs or {})
    env_kwargs.pop("max_episode_steps", None)
    cfg_params = [
        with_shared_name(
            env.make_params(c.scenario, c.variant, max_steps_in_episode=c.steps, **env_kwargs)
        )
        for c in configs
    ]
    pol_params = [
        [p.make_params(ep, **overrides.get(p.name, {})) for ep in cfg_params] for p in policies
    ]
    base = jax.random.PRNGKey(seed)
    rows, plist, pid, steps, keys = [], [], [], [], []
    per_policy: list[list] = [[] for _ in policies]
    for i, p in enumerate(policies):
        for c_i, c in enumerate(configs):
            for s in range(seeds):
                rows.append(
                    dict(policy=p.name, scenario=c.scenario, variant=c.variant, seed=s, config=c_i)
                )
                plist.append(cfg_params[c_i])
                pid.append(i)
                steps.append(c.steps)
                keys.append(jax.random.fold_in(base, s))
                for j in range(len(policies)):
                    per_policy[j].append(pol_params[j][c_i])
    stacked = with_shared_name(stack_params(plist))
    pparams = tuple(jax.tree_util.tree_map(lambda *x: jnp.stack(x), *pp) for pp in per_policy)
    return Batch(
        role=env.role,
        policies=tuple(policies),
        configs=list(configs),
        rows=rows,
        env_params=stacked,
        policy_id=np.asarray(pid, np.int32),
        policy_params=pparams,
        keys=jnp.stack(keys),
        steps=np.asarray(steps, np.int64),
    )


# ============================================================== recording


def funding_cash(prev: EnvState, new: EnvState, account: int = 0) -> Array:
    """Funding received by `account` in the tick prev -> new (USDT, < 0 = paid).

    The engine moves `next_funding_s` forward at each settlement and stores the settled
    rate in `last_funding_rate`; the cash flow is -position x mark x rate.
    """
    px0, px1 = prev.sim.px, new.sim.px
    settled = px1.next_funding_s > px0.next_funding_s
    cash = -new.sim.acct.pos[account] * px1.mark * px1.last_funding_rate
    return jnp.where(settled, cash, 0.0)


def _record(prev: EnvState, new: EnvState, terminated: Array, info: dict) -> dict[str, Array]:
    liq = jnp.asarray(info["liquidated"]).reshape(-1)[0]
    return {
        "equity": new.equity[0],
        "mark": new.sim.px.mark,
        "position": new.sim.acct.pos[0],
        "funding": funding_cash(prev, new),
        "fees": jnp.asarray(info["fees"]).reshape(-1)[0],
        "liquidated": liq,
        "terminated": jnp.asarray(terminated).reshape(-1)[0],
    }


@dataclasses.dataclass
class Trajectories:
    """Per-step records of a batch of episodes (NumPy).

    Attributes:
        rows: per env: policy, scenario, variant, seed, config index.
        configs: the `EvalConfig`s the rows refer to.
        equity0: (B,) marked equity at reset, USDT.
        steps: (B,) episode length of each row (the horizon).
        equity, mark, position, funding, fees: (B, T) after each step (fees: USDT the
            agent paid in the step; None when not recorded).
        liquidated, terminated: (B, T) bool, the step on which it happened.
    """

    rows: list[dict[str, Any]]
    configs: list[EvalConfig]
    equity0: np.ndarray
    steps: np.ndarray
    equity: np.ndarray
    mark: np.ndarray
    position: np.ndarray
    funding: np.ndarray
    liquidated: np.ndarray
    terminated: np.ndarray
    mark0: np.ndarray | None = None
    fees: np.ndarray | None = None

    def active(self) -> np.ndarray:
        """(B, T) bool: step t belongs to the episode (before its horizon, not after the
        terminating step)."""
        b, t = self.equity.shape
        idx = np.arange(t)[None, :]
        within = idx < self.steps[:, None]
        term = self.terminated & within
        ended_before = np.cumsum(term, axis=1) - term > 0
        return within & ~ended_before


# ============================================================== scan engine


@functools.cache
def _scan_fn(env: RoleEnv, policies: tuple[Policy, ...], n_steps: int):
    fns = [p.fn for p in policies]

    def act(pid, key, obs, pparams):
        branches = [
            functools.partial(lambda f, i, k, o, pp: f(k, o, pp[i]), f, i)
            for i, f in enumerate(fns)
        ]
        if len(branches) == 1:
            return branches[0](key, obs, pparams)
        return jax.lax.switch(pid, branches, key, obs, pparams)

    def episode(key, params, pid, pparams):
        k_reset, k_run = jax.random.split(key)
        obs, state = env.reset_env(k_reset, params)

        def body(carry, k):
            obs, state = carry
            k_pol, k_env = jax.random.split(k)
            action = act(pid, k_pol, obs, pparams)
            obs, new, _, terminated, info = env.step_env(k_env, state, action, params)
            return (obs, new), _record(state, new, terminated, info)

        # Batched from the first step, as one step makes them (see `jaxsim.tie_to_key`): the
        # scan then batches the env's step once.
        obs, state = tie(obs, k_run), tie_env_state(state, k_run)
        _, rec = jax.lax.scan(body, (obs, state), jax.random.split(k_run, n_steps))
        return state.equity0[0], state.mark0, rec

    return jax.jit(jax.vmap(episode))


def run_scan(batch: Batch, chunk: int | None = None) -> Trajectories:
    """Run a batch with the scan engine (one compiled program for every row).

    Args:
        batch: from `build_batch`.
        chunk: rows per call (None = all at once); the last chunk is padded so every call
            has the same shape (one compilation).
    """
    env = make_role(batch.role)
    fn = _scan_fn(env, batch.policies, batch.max_steps)
    n = batch.size
    chunk = n if not chunk or chunk >= n else int(chunk)
    outs = []
    for start in range(0, n, chunk):
        idx = np.arange(start, start + chunk)
        idx = np.minimum(idx, n - 1)  # pad with the last row
        take = lambda x, idx=idx: x[idx]
        args = (
            batch.keys[idx],
            jax.tree_util.tree_map(take, batch.env_params),
            jnp.asarray(batch.policy_id[idx]),
            jax.tree_util.tree_map(take, batch.policy_params),
        )
        eq0, mark0, rec = jax.device_get(fn(*args))
        keep = min(chunk, n - start)
        outs.append((eq0[:keep], mark0[:keep], {k: v[:keep] for k, v in rec.items()}))
    eq0 = np.concatenate([o[0] for o in outs])
    mark0 = np.concatenate([o[1] for o in outs])
    rec = {k: np.concatenate([o[2][k] for o in outs]) for k in RECORD_KEYS}
    return Trajectories(
        rows=batch.rows,
        configs=batch.configs,
        equity0=np.asarray(eq0, np.float64),
        steps=batch.steps,
        equity=np.asarray(rec["equity"], np.float64),
        mark=np.asarray(rec["mark"], np.float64),
        position=np.asarray(rec["position"], np.float64),
        funding=np.asarray(rec["funding"], np.float64),
        liquidated=np.asarray(rec["liquidated"], bool),
        terminated=np.asarray(rec["terminated"], bool),
        mark0=np.asarray(mark0, np.float64),
        fees=np.asarray(rec["fees"], np.float64),
    )


# ============================================================== loop engine


@functools.cache
def _funding_fn():
    return jax.jit(jax.vmap(funding_cash))


def run_loop(
    role: str,
    act: Callable[[np.ndarray], np.ndarray],
    configs: Sequence[EvalConfig],
    seeds: int = 2,
    seed: int = 0,
    name: str = "policy",
    num_envs: int | None = None,
    env_kwargs: dict | None = None,
) -> Trajectories:
    """Evaluate a NumPy policy `act(obs (N, D)) -> actions (N, A)` on the batched env.

    Runs `envs.vector.CascadeVectorEnv` (what the SB3 VecEnv wraps) with per-env params,
    `num_envs` envs at a time (default: all episodes at once; use the training batch size
    to reuse its compiled step). Episode s of a config is reset with seed `seed + s`.
    """
    from envs.vector import CascadeVectorEnv

    env = make_role(role)
    env_kwargs = dict(env_kwargs or {})
    env_kwargs.pop("max_episode_steps", None)
    rows, plist, steps, seed_list = [], [], [], []
    for c_i, c in enumerate(configs):
        p = env.make_params(c.scenario, c.variant, max_steps_in_episode=c.steps, **env_kwargs)
        for s in range(seeds):
            rows.append(
                dict(policy=name, scenario=c.scenario, variant=c.variant, seed=s, config=c_i)
            )
            plist.append(p)
            steps.append(c.steps)
            seed_list.append(seed + s)
    n = len(rows)
    width = n if not num_envs else int(num_envs)
    t_max = max(steps)
    recs = {k: np.zeros((n, t_max)) for k in RECORD_KEYS}
    eq0 = np.zeros(n)
    mark0 = np.zeros(n)
    for start in range(0, n, width):
        idx = np.minimum(np.arange(start, start + width), n - 1)
        venv = CascadeVectorEnv(role, width, params=[plist[i] for i in idx])
        obs, _ = venv.reset(seed=[seed_list[i] for i in idx])
        keep = min(width, n - start)
        eq0[start : start + keep] = np.asarray(venv.state.equity0[:keep, 0])
        mark0[start : start + keep] = np.asarray(venv.state.mark0[:keep])
        t_chunk = max(steps[i] for i in idx)
        for t in range(t_chunk):
            prev = venv.state
            obs, _, term, trunc, info = venv.step(np.asarray(act(obs), np.float32))
            done = term | trunc
            # A finished env's state already belongs to its next episode: its funding
            # on the final step is not recoverable (and is dropped).
            fund = np.where(done, 0.0, np.asarray(_funding_fn()(prev, venv.state)))
            # The step info is the core's, taken before the auto-reset.
            eq, pos, mk = info["equity"], info["position"], info["mark_price"]
            sl = slice(start, start + keep)
            recs["equity"][sl, t] = np.asarray(eq)[:keep]
            recs["position"][sl, t] = np.asarray(pos)[:keep]
            recs["mark"][sl, t] = np.asarray(mk)[:keep]
            recs["funding"][sl, t] = fund[:keep]
            recs["fees"][sl, t] = np.asarray(info["fees"])[:keep]
            recs["liquidated"][sl, t] = np.asarray(info["liquidated"])[:keep]
            recs["terminated"][sl, t] = term[:keep]
        venv.close()
    return Trajectories(
        rows=rows,
        configs=list(configs),
        equity0=eq0,
        steps=np.asarray(steps, np.int64),
        equity=recs["equity"],
        mark=recs["mark"],
        position=recs["position"],
        funding=recs["funding"],
        liquidated=recs["liquidated"].astype(bool),
        terminated=recs["terminated"].astype(bool),
        mark0=mark0,
        fees=recs["fees"],
    )


def merge(trajs: Sequence[Trajectories]) -> Trajectories:
    """Concatenate trajectories of the same configs (padding the step axis)."""
    t = max(x.equity.shape[1] for x in trajs)

    def pad(a):
        if a.shape[1] == t:
            return a
        fill = np.repeat(a[:, -1:], t - a.shape[1], axis=1)
        return np.concatenate([a, fill], axis=1)

    first = trajs[0]
    out = {}
    if all(x.fees is not None for x in trajs):
        out["fees"] = np.concatenate(
            [np.where(np.arange(t)[None] < x.fees.shape[1], pad(x.fees), 0.0) for x in trajs]
        )
    for f in ("equity", "mark", "position", "funding", "liquidated", "terminated"):
        arrs = [pad(getattr(x, f)) for x in trajs]
        if f in ("funding", "liquidated", "terminated"):
            arrs = [
                np.where(np.arange(t)[None] < getattr(x, f).shape[1], a, 0).astype(a.dtype)
                for x, a in zip(trajs, arrs, strict=True)
            ]
        out[f] = np.concatenate(arrs)
    return Trajectories(
        rows=[r for x in trajs for r in x.rows],
        configs=first.configs,
        equity0=np.concatenate([x.equity0 for x in trajs]),
        steps=np.concatenate([x.steps for x in trajs]),
        mark0=np.concatenate([x.mark0 if x.mark0 is not None else x.mark[:, 0] for x in trajs]),
        **out,
    )


# ============================================================== metrics


def episode_table(traj: Trajectories) -> list[dict[str, Any]]:
    """One dict per episode: its row labels plus the metrics (see the module docstring)."""
    act = traj.active()
    out = []
    for i, row in enumerate(traj.rows):
        m = act[i]
        n = int(m.sum())
        eq0 = float(traj.equity0[i])
        eq = traj.equity[i, :n]  # active steps are a prefix
        dt = traj.configs[row["config"]].dt
        path = np.concatenate([[eq0], eq])
        rets = np.diff(path) / eq0
        sd = float(rets.std()) if n > 1 else 0.0
        sharpe = float(rets.mean() / sd * math.sqrt(SECONDS_PER_DAY / dt)) if sd > 1e-12 else 0.0
        peak = np.maximum.accumulate(path)
        dd = float(np.max(1.0 - path / np.maximum(peak, 1e-12)))
        f = traj.funding[i, :n]
        terminated = bool((traj.terminated[i] & m).any())
        out.append(
            {
                **{k: row[k] for k in ("policy", "scenario", "variant", "seed")},
                "pnl": float(path[-1] / eq0 - 1.0),
                "pnl_usdt": float(path[-1] - eq0),
                "sharpe": sharpe,
                "max_drawdown": dd,
                "survived": float(not terminated),
                "liquidated": float(bool((traj.liquidated[i] & m).any())),
                "fees": float("nan") if traj.fees is None else float(traj.fees[i, :n].sum()),
                "funding_paid": float(np.maximum(-f, 0.0).sum()),
                "funding_received": float(np.maximum(f, 0.0).sum()),
                "steps": float(n),
            }
        )
    return out


def summarize(episodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Aggregate seeds: one dict per (policy, scenario, variant) with `<metric>_mean`,
    `_std`, `_min`, `_max` (NaN-aware; `n` = episodes), in first-seen order."""
    groups: dict[tuple, list[dict]] = {}
    for e in episodes:
        groups.setdefault((e["policy"], e["scenario"], e["variant"]), []).append(e)
    out = []
    for (pol, scen, var), es in groups.items():
        row: dict[str, Any] = {"policy": pol, "scenario": scen, "variant": var, "n": len(es)}
        for k in METRICS:
            v = np.asarray([e[k] for e in es], np.float64)
            ok = v[np.isfinite(v)]
            if ok.size:
                row[f"{k}_mean"] = float(ok.mean())
                row[f"{k}_std"] = float(ok.std())
                row[f"{k}_min"] = float(ok.min())
                row[f"{k}_max"] = float(ok.max())
            else:
                for s in ("mean", "std", "min", "max"):
                    row[f"{k}_{s}"] = float("nan")
        out.append(row)
    return out


def evaluate(
    role: str,
    policies: Sequence[Policy],
    configs: Sequence[EvalConfig],
    seeds: int = 2,
    seed: int = 0,
    chunk: int | None = None,
    env_kwargs: dict | None = None,
) -> Trajectories:
    """`build_batch` + `run_scan` in one call."""
    batch = build_batch(role, policies, configs, seeds, seed, env_kwargs=env_kwargs)
    return run_scan(batch, chunk)
