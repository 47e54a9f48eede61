"""Scenario distributions: the YAML format, per-env params, batch = members one by one,
bad files, and funding inside every default episode."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from support import fast_compiled

import jaxsim
from envs.core import DEFAULT_MAX_STEPS
from envs.distribution import DistributionEnv, member_params, pool_params
from envs.market_maker import MarketMaker
from jaxsim.config.distribution import load_distribution

SMALL = {
    "pool_size": 3,
    "seed": 1,
    "members": [
        {
            "scenario": "collateral_depeg",
            "weight": 2.0,
            "ranges": {
                "exogenous.shocks[0].return_pct": {"uniform": [-22.0, -10.0]},
                "markets.lp_depth.perp": {"uniform": [3.0, 5.0]},
            },
        },
        {"scenario": "calm", "weight": 1.0},
    ],
    "held_out": ["mm_pump_dump"],
}


def _write(tmp_path, data, name="small"):
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_shipped_distributions_load():
    d = load_distribution("crashes")
    assert {m.scenario for m in d.members} == {
        "leverage_accident", "collateral_depeg", "rule_change_deleverage", "mm_pump_dump"
    }  # fmt: skip
    assert abs(d.probs.sum() - 1.0) < 1e-9
    h = load_distribution("crashes_holdout_pump")
    assert h.is_held_out("mm_pump_dump", "depth_scaled_limits")
    assert not any(m.scenario == "mm_pump_dump" for m in h.members)


def test_pool_params_differ_where_the_ranges_say(tmp_path):
    path = _write(tmp_path, SMALL)
    dist = load_distribution(path)
    depeg = [m for m in dist.members if m.scenario == "collateral_depeg"]
    assert len(depeg) == 2  # round(3 x 2/3) draws of the ranged member, one of calm
    pool = pool_params(MarketMaker(), dist)
    # The two depeg draws: equal everywhere but the shock size and the perp depth.
    a, b = (member_params(pool, dist.members.index(m)) for m in depeg)
    differ = set()
    for (path_, x), y in zip(
        jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves(b), strict=True
    ):
        if not np.array_equal(np.asarray(x), np.asarray(y)):
            differ.add(jax.tree_util.keystr(path_))
    assert differ == {".sim.exo.shock_log_return", ".sim.markets.lp_depth"}, differ
    la, lb = np.asarray(a.sim.exo.shock_log_return), np.asarray(b.sim.exo.shock_log_return)
    assert la[0] != lb[0] and np.array_equal(la[1:], lb[1:])
    for m, x in zip(depeg, (la, lb), strict=True):
        assert np.isclose(x[0], np.log1p(m.overrides["exogenous.shocks[0].return_pct"] / 100))
    assert np.all(
        np.asarray(a.sim.markets.lp_depth)[[0, 2, 3]]
        == np.asarray(b.sim.markets.lp_depth)[[0, 2, 3]]
    )
    np.testing.assert_allclose(np.asarray(pool.probs).sum(), 1.0, rtol=1e-6)


def test_batch_over_a_distribution_equals_its_members_one_by_one(tmp_path):
    path = _write(tmp_path, SMALL)
    env = MarketMaker()
    with jax.enable_x64(True):
        pool = pool_params(env, path, dtype=jnp.float64)
        denv = DistributionEnv(env)
        n, ticks = 6, 3
        keys = jax.random.split(jax.random.PRNGKey(3), n)
        reset_b = fast_compiled(jax.vmap(denv.reset, in_axes=(0, None)), keys, pool)
        obs, st = reset_b(keys, pool)
        members = np.asarray(st.member)
        assert len(set(members.tolist())) > 1  # the batch mixes members
        rng = np.random.default_rng(0)
        acts = rng.uniform(-1, 1, (ticks, n, env.num_actions)).astype(np.float32)
        step_keys = [jax.random.split(jax.random.PRNGKey(100 + t), n) for t in range(ticks)]
        step_b = fast_compiled(denv.step_batch, step_keys[0], st, jnp.asarray(acts[0]), pool)
        p0 = member_params(pool, 0)
        reset1 = fast_compiled(env.reset, keys[0], p0)
        s0 = reset1(keys[0], p0)[1]
        step1 = fast_compiled(env.step, step_keys[0][0], s0, jnp.asarray(acts[0, 0]), p0)
        traj_b = []
        for t in range(ticks):
            obs, st, rew, term, trunc, info = step_b(step_keys[t], st, jnp.asarray(acts[t]), pool)
            traj_b.append((np.asarray(obs), np.asarray(rew), np.asarray(info["equity"])))
        for i in range(n):
            p = member_params(pool, int(members[i]))
            o1, s1 = reset1(keys[i], p)
            for t in range(ticks):
                o1, s1, r1, *_, inf1 = step1(step_keys[t][i], s1, jnp.asarray(acts[t, i]), p)
                ob, rb, eb = traj_b[t]
                np.testing.assert_allclose(np.asarray(o1), ob[i], rtol=1e-5, atol=1e-6)
                np.testing.assert_allclose(float(r1), rb[i], rtol=1e-5, atol=1e-9)
                np.testing.assert_allclose(float(inf1["equity"]), eb[i], rtol=1e-12)
            # The whole state after the last tick, to float64 precision.
            for x, y in zip(
                jax.tree_util.tree_leaves(s1.sim),
                jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda a: a[i], st.env.sim)),
                strict=True,
            ):
                np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize(
    "edit, needle",
    [
        (lambda d: d["members"][1].update(weight=-1), "distributions.bad.members[1].weight"),
        (lambda d: d["members"][1].update(weight="x"), "distributions.bad.members[1].weight"),
        (
            lambda d: d["members"][0].update(scenario="moon"),
            "distributions.bad.members[0].scenario",
        ),
        (lambda d: d["members"][0].update(variant="nope"), "distributions.bad.members[0].variant"),
        (lambda d: d["members"][1].update(colour=1), "distributions.bad.members[1].colour"),
        (lambda d: d.update(members=[]), "distributions.bad.members"),
        (lambda d: d.update(pool_size=0), "distributions.bad.pool_size"),
        (
            lambda d: d["members"][0]["ranges"].update(
                {"markets.lp_depth.perp": {"uniform": [5, 3]}}
            ),
            "distributions.bad.members[0].ranges.markets.lp_depth.perp",
        ),
        (
            lambda d: d["members"][0]["ranges"].update(
                {"markets.lp_depth.perp": {"gauss": [1, 2]}}
            ),
            "distributions.bad.members[0].ranges.markets.lp_depth.perp",
        ),
        (  # a sampled value outside the config table's range
            lambda d: d["members"][0]["ranges"].update(
                {"markets.lp_depth.perp": {"uniform": [-5, -3]}}
            ),
            "distributions.bad.members[0]",
        ),
        (
            lambda d: d["members"][0]["ranges"].update(
                {"exogenous.shocks[3].return_pct": {"uniform": [-5, -3]}}
            ),
            "shocks[3]",
        ),
        (lambda d: d.update(held_out=["moon"]), "distributions.bad.held_out[0].scenario"),
    ],
)
def test_bad_distribution_files_name_the_field(tmp_path, edit, needle):
    import copy

    data = copy.deepcopy(SMALL)
    edit(data)
    with pytest.raises(jaxsim.ConfigError) as e:
        load_distribution(_write(tmp_path, data, "bad"))
    assert needle in str(e.value)


def _default_episodes():
    """(role, scenario, variant, steps) of every default episode: training (the PPO file's
    episode length on calm, `python train.py`'s 256 steps, a crash distribution's
    members) and evaluation (each scenario / variant to its horizon capped at 720 steps)."""
    import train
    from agents.sb3_train import load_hyperparams

    out = []
    for role in train.ROLES:
        steps = load_hyperparams("ppo", role)["env_kwargs"]["max_episode_steps"]
        out.append((role, "calm", None, steps))
    out.append(
        ("market_maker", "calm", None, train.DEFAULT_RUN["params"]["env_kwargs.max_episode_steps"])
    )
    cap = train.DEFAULT_RUN["eval_max_steps"]
    for s in jaxsim.list_scenarios():
        for v in [None, *jaxsim.list_variants(s)]:
            h = jaxsim.scenario_config(s, v).get("horizon_s")
            dt = float(jaxsim.scenario_config(s, v)["dt_s"])
            steps = round(h / dt) if h else DEFAULT_MAX_STEPS
            out.append(("arbitrageur", s, v, min(steps, cap)))
    return out


def test_funding_settles_in_every_default_episode():
    """Every role's default episode sees at least one funding settlement (the first one
    is brought inside the episode when the interval is longer, see
    `envs.core.funding_inside_episode`)."""
    import envs

    eps = _default_episodes()
    sims, lengths = [], []
    for role, s, v, steps in eps:
        p = envs.make_role(role).make_params(s, v, max_steps_in_episode=steps)
        sims.append(p.sim.replace(name="x"))
        lengths.append(steps)
    # The crash distribution's members with the default training episode.
    pool = pool_params(MarketMaker(), "crashes", max_episode_steps=720)
    for i in range(pool.size):
        sims.append(jax.tree_util.tree_map(lambda x, i=i: x[i], pool.members.sim).replace(name="x"))
        lengths.append(720)
        eps.append(("market_maker", "crashes", pool.size and i, 720))
    stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *sims)
    n = max(lengths)
    keys = jax.random.split(jax.random.PRNGKey(0), len(sims))
    run = jax.jit(jax.vmap(lambda k, p: jaxsim.rollout(k, p, n)[1].funding_settled))
    settled = np.asarray(run(keys, stacked))
    for (role, s, v, steps), row in zip(eps, settled, strict=True):
        assert row[:steps].any(), f"{role} on {s}/{v}: no funding settlement in {steps} steps"
