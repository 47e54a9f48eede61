"""A role's calm-day economics: a heuristic's PnL and where it comes from, over many seeds.

Runs a grid of (scenario overrides, policy overrides) x seeds as one compiled program and
prints one line per grid row: mean PnL % over the episode (± standard error over seeds, the
share of positive seeds) and its decomposition in USDT: trade (fills against the mark at
the end of their tick), inventory (position x mark change), fees (negative = paid) and
funding. Settings come from the environment:

    ROLE=market_maker POL=avellaneda_stoikov SCEN=calm SEEDS=32 SEED=1000 T=2880 \
    CFG='[["default", {}, {}], ["gamma .05", {}, {"gamma": 0.05}]]' \
    python -m benchmarks.role_economics

ROLE, POL (a heuristic of the role, or flat / random), SCEN (scenario name or YAML path),
SEEDS and SEED (the first PRNG key), T (steps), CFG (JSON list of [label, scenario
overrides, policy parameter overrides]; default one row with neither), ENVKW (JSON role
settings)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

import envs
from agents.evaluate import funding_cash
from agents.heuristics import flat, heuristic, random_policy
from envs.core import book_view, stack_params
from jaxsim.types import BASE, PERP


def main() -> None:
    role = os.environ.get("ROLE", "market_maker")
    pol_name = os.environ.get("POL", "avellaneda_stoikov")
    scen = os.environ.get("SCEN", "calm")
    S = int(os.environ.get("SEEDS", "8"))
    T = int(os.environ.get("T", "2880"))
    seed0 = int(os.environ.get("SEED", "0"))
    cfgs = json.loads(os.environ.get("CFG", '[["default", {}, {}]]'))
    kw = json.loads(os.environ.get("ENVKW", "{}"))
    pol = {"flat": flat, "random": random_policy}.get(pol_name, lambda r: heuristic(r, pol_name))(
        role
    )
    envp, pps = [], []
    for _label, ov, pov in cfgs:
        env, p = envs.make(role, scenario=scen, overrides=ov or None, **kw)
        envp.append(p)
        pps.append(pol.make_params(p, **pov))
    P = stack_params([p for p in envp for _ in range(S)])
    PP = (
        jax.tree.map(lambda *x: jnp.stack(x), *[pp for pp in pps for _ in range(S)])
        if pps[0] != ()
        else ()
    )
    keys = jnp.concatenate([jax.random.split(jax.random.PRNGKey(seed0), S)] * len(cfgs))

    def episode(key, params, pp):
        k0, k1 = jax.random.split(key)
        obs, st = env.reset_env(k0, params)

        def body(c, k):
            obs, st = c
            kp, ke = jax.random.split(k)
            a = pol.fn(kp, obs, pp)
            obs2, new, r, term, info = env.step_env(ke, st, a, params)
            sim = new.sim
            _, _, mid, _, _ = book_view(sim, params.sim, PERP, exclude=0)
            return (obs2, new), dict(
                eq=new.equity[0],
                pos=sim.acct.pos[0],
                mark=sim.px.mark,
                mid=mid,
                fees=info["fees"],
                fund=funding_cash(st, new),
                alive=new.alive[0],
                spot=sim.acct.bal[0, BASE],
            )

        _, rec = jax.lax.scan(body, (obs, st), jax.random.split(k1, T))
        return st.equity[0], st.sim.px.mark, rec

    eq0, mark0, rec = jax.jit(jax.vmap(episode, in_axes=(0, 0, 0 if PP != () else None)))(
        keys, P, PP
    )
    eq0, mark0 = np.asarray(eq0), np.asarray(mark0)
    rec = jax.tree.map(np.asarray, rec)
    for i, (label, _ov, _pov) in enumerate(cfgs):
        sl = slice(i * S, (i + 1) * S)
        e0 = eq0[sl]
        eq = rec["eq"][sl]
        pos = np.concatenate([np.zeros((S, 1)), rec["pos"][sl]], 1)
        mk = np.concatenate([mark0[sl][:, None], rec["mark"][sl]], 1)
        pnl = (eq[:, -1] - e0) / e0 * 100
        dq = np.diff(pos, axis=1)
        vol = (np.abs(dq) * mk[:, 1:]).sum(1)
        inv = (pos[:, :-1] * np.diff(mk, axis=1)).sum(1)
        fees = rec["fees"][sl].sum(1)
        fund = rec["fund"][sl].sum(1)
        trade = (eq[:, -1] - e0) - inv + fees - fund
        surv = rec["alive"][sl][:, -1].mean()
        print(
            f"{label:28s} pnl% {pnl.mean():+7.2f} ± {pnl.std() / np.sqrt(S):5.2f} (pos seeds {np.mean(pnl > 0):.2f}) | vol {vol.mean() / 1e6:6.2f}M trade {trade.mean():+7.0f} ({1e4 * trade.mean() / max(vol.mean(), 1):+5.2f}bp) inv {inv.mean():+6.0f} fees {-fees.mean():+6.0f} fund {fund.mean():+5.0f} | surv {surv:.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
