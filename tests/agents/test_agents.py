"""Heuristic policies on constructed observations, the leveraged trader's action decoding
on a reset state, the SB3 -> JAX conversion and the episode metrics (no exchange step is
compiled: these run in seconds)."""

from __future__ import annotations

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from agents import evaluate as E
from agents.heuristics import ROLE_POLICIES, baselines, heuristic, obs_index
from envs.core import LEV_SCALE
from envs.roles import ROLES
from jaxsim.mechanisms.accounts import margin_balances
from jaxsim.types import KIND_MARKET, PERP, STABLE_SPOT, USDT

KEY = jax.random.PRNGKey(0)


def make_obs(role: str, **entries: float) -> jnp.ndarray:
    """A zero observation with the named entries set (tier-1 max leverage 125x)."""
    ix = obs_index(role)
    x = np.zeros(len(ix), np.float32)
    x[ix["max_lev_tier1"]] = 1.0
    for k, v in entries.items():
        x[ix[k]] = v
    return jnp.asarray(x)


def act(role: str, name: str, obs, **overrides) -> np.ndarray:
    p = heuristic(role, name)
    return np.asarray(jax.jit(p.fn)(KEY, obs, p.make_params(None, **overrides)))


# ============================================================== market maker

MM_MIN_BPS, MM_MAX_BPS, MID = 0.0, 50.0, 100_000.0


def quotes(a: np.ndarray) -> tuple[float, float]:
    """Bid and ask prices the market maker env places for an action (its documented
    decoding: off = min + (a + 1) / 2 x (max - min) bp around the mid)."""
    off = (MM_MIN_BPS + (a[:2] + 1) / 2 * (MM_MAX_BPS - MM_MIN_BPS)) * 1e-4
    return MID * (1 - off[0]), MID * (1 + off[1])


def test_as_symmetric_when_flat():
    a = act("market_maker", "avellaneda_stoikov", make_obs("market_maker", vol_ratio=1.0))
    bid, ask = quotes(a)
    assert a[0] == pytest.approx(a[1], abs=1e-6)
    assert MID - bid == pytest.approx(ask - MID, rel=1e-5)
    assert a[2] > -1 and a[3] > -1  # both sides quoted
    assert a[4] <= 0  # no hedge


@pytest.mark.parametrize("inventory", [0.05, 0.1, 0.2])
def test_as_long_inventory_shifts_quotes_down(inventory):
    """Long inventory: the reservation price drops, the ask gets closer to the mid (more
    aggressive) and the bid further; short inventory mirrors it."""
    flat = quotes(
        act("market_maker", "avellaneda_stoikov", make_obs("market_maker", vol_ratio=1.0))
    )
    long_ = quotes(
        act(
            "market_maker",
            "avellaneda_stoikov",
            make_obs("market_maker", vol_ratio=1.0, perp_position=inventory),
        )
    )
    short = quotes(
        act(
            "market_maker",
            "avellaneda_stoikov",
            make_obs("market_maker", vol_ratio=1.0, perp_position=-inventory),
        )
    )
    assert long_[1] < flat[1] and long_[0] < flat[0]  # both quotes move down
    assert long_[1] - MID < MID - long_[0]  # ask nearer the mid than the bid
    assert short[0] > flat[0] and short[1] > flat[1]
    assert MID - short[0] < short[1] - MID
    # The skew grows with the inventory.
    bigger = quotes(
        act(
            "market_maker",
            "avellaneda_stoikov",
            make_obs("market_maker", vol_ratio=1.0, perp_position=2 * inventory),
        )
    )
    assert bigger[1] <= long_[1]


def test_as_stops_adding_and_hedges_at_limits():
    p = dict(max_inventory=3.0, hedge_inventory=5.0)
    a = act("market_maker", "avellaneda_stoikov", make_obs("market_maker", perp_position=0.4), **p)
    assert (a[2] + 1) / 2 < 0.01 and a[3] > -1  # no bid (size 0), ask quoted
    assert a[4] <= 0
    a = act("market_maker", "avellaneda_stoikov", make_obs("market_maker", perp_position=-0.6), **p)
    assert (a[3] + 1) / 2 < 0.01 and a[2] > -1  # no ask
    assert a[4] > 0  # |inventory| 6 > 5: hedge


def test_as_wider_spread_with_volatility():
    calm = quotes(
        act("market_maker", "avellaneda_stoikov", make_obs("market_maker", vol_ratio=1.0))
    )
    wild = quotes(
        act("market_maker", "avellaneda_stoikov", make_obs("market_maker", vol_ratio=2.0))
    )
    assert wild[1] - wild[0] > calm[1] - calm[0]


def test_as_reads_offset_range_from_env_params():
    env = ROLES["market_maker"]()
    params = env.make_params("calm", max_offset_bps=80.0)
    pp = heuristic("market_maker", "avellaneda_stoikov").make_params(params)
    assert float(pp.max_offset_bps) == pytest.approx(80.0)
    assert float(pp.notional_scale) == pytest.approx(float(params.notional_scale))
    with pytest.raises(ValueError, match="allowed"):
        heuristic("market_maker", "avellaneda_stoikov").make_params(params, nope=1.0)


# ============================================================== leveraged trader


def lt_leverage(a: np.ndarray, cap: float = 20.0) -> float:
    return 1.0 + (a[1] + 1.0) / 2.0 * (cap - 1.0)


def test_trend_follower_follows_momentum():
    up = act("leveraged_trader", "trend_follower", make_obs("leveraged_trader", mark_vs_start=0.1))
    down = act(
        "leveraged_trader", "trend_follower", make_obs("leveraged_trader", mark_vs_start=-0.1)
    )
    weak = act(
        "leveraged_trader", "trend_follower", make_obs("leveraged_trader", mark_vs_start=0.02)
    )
    assert up[0] > 0 and down[0] < 0 and weak[0] == 0  # +1%, -1%, +0.2% (< 0.5% to enter)
    assert lt_leverage(up) == pytest.approx(3.0, abs=1e-4)
    # Hysteresis: an open long is kept while the move is still up, closed when it reverses.
    keep = act(
        "leveraged_trader",
        "trend_follower",
        make_obs("leveraged_trader", mark_vs_start=0.02, perp_position=0.3),
    )
    close = act(
        "leveraged_trader",
        "trend_follower",
        make_obs("leveraged_trader", mark_vs_start=-0.02, perp_position=0.3),
    )
    assert keep[0] > 0 and close[0] == 0
    assert up[2] == -1 and up[3] == -1  # collateral stays USDT


def test_funding_contrarian_fades_funding():
    hi = act(
        "leveraged_trader", "funding_contrarian", make_obs("leveraged_trader", funding_rate=0.5)
    )
    lo = act(
        "leveraged_trader", "funding_contrarian", make_obs("leveraged_trader", funding_rate=-0.5)
    )
    base = act(
        "leveraged_trader", "funding_contrarian", make_obs("leveraged_trader", funding_rate=0.03)
    )
    assert hi[0] < 0 and lo[0] > 0 and base[0] == 0


def test_leverage_respects_tier_cap():
    # Tier-1 max leverage 2x in force: a 3x target is capped at 2x (the action's top).
    a = act(
        "leveraged_trader",
        "trend_follower",
        make_obs("leveraged_trader", mark_vs_start=0.1, max_lev_tier1=2.0 / LEV_SCALE),
    )
    assert a[1] == pytest.approx(1.0)


def test_buy_and_hold_and_flat_references():
    bh = act("leveraged_trader", "buy_and_hold", make_obs("leveraged_trader", mark_vs_start=-0.5))
    assert bh[0] > 0 and lt_leverage(bh) == pytest.approx(1.0, abs=1e-4)
    fl = act("leveraged_trader", "flat", make_obs("leveraged_trader", mark_vs_start=0.5))
    assert fl[0] == 0 and fl[2] == -1 and fl[3] == -1
    arb = act("arbitrageur", "buy_and_hold", make_obs("arbitrageur"))
    assert arb[0] == 1 and arb[1] == 0
    mm = act("market_maker", "flat", make_obs("market_maker", perp_position=1.0))
    assert (mm[2] + 1) / 2 < 0.01 and (mm[3] + 1) / 2 < 0.01 and mm[4] <= 0  # no quote, no hedge
    assert np.all(act("arbitrageur", "flat", make_obs("arbitrageur", basis=1.0)) == 0)


def test_lt_held_position_action_inverts_the_decoding():
    # A long the signal keeps is held: the action is the one the env decodes back to the
    # position, notional / (lev x margin balance x (1 - margin_buffer)): notional 2 x
    # equity0 (perp_position 0.2 x notional_scale 10), margin 1.1 x equity0, 3x, buffer 5%.
    obs = make_obs("leveraged_trader", mark_vs_start=0.1, perp_position=0.2, equity=0.1)
    held = act("leveraged_trader", "trend_follower", obs)
    assert held[0] == pytest.approx(2.0 / (3.0 * 1.1 * 0.95), rel=1e-5)
    # Re-sized every step instead (hold = 0): the full size again.
    assert act("leveraged_trader", "trend_follower", obs, hold=0.0)[0] == pytest.approx(1.0)
    # A short the signal now wants long is flipped to a full-size long, not held.
    flip = make_obs("leveraged_trader", mark_vs_start=0.1, perp_position=-0.2)
    assert act("leveraged_trader", "trend_follower", flip)[0] == pytest.approx(1.0)


@pytest.fixture(scope="module")
def lt_env():
    """The leveraged trader env on calm and a reset state (the decoding's inputs)."""
    env, params = envs.make("leveraged_trader", scenario="calm")
    _, state = jax.jit(env.reset_env)(KEY, params)
    return env, params, state


def _lt_decode(env, params, state, action):
    rows = jax.jit(env.decode_one)(jnp.asarray(action, jnp.float32), state, params, 0)
    return jax.tree.map(np.asarray, rows)


def test_lt_held_position_sends_no_perp_order(lt_env):
    """buy_and_hold (1x) over a 0.6 BASE long (60% of the equity; the 1x buying power is
    95%): held, its action decodes to the position and no perp order is sent; re-sized
    (hold = 0) it buys up to 0.95 x equity."""
    env, params, state = lt_env
    sim = state.sim
    st = state.replace(
        sim=sim.replace(
            acct=sim.acct.replace(
                pos=sim.acct.pos.at[0].set(0.6), entry=sim.acct.entry.at[0].set(sim.px.mark)
            )
        )
    )
    obs = env.get_obs(st, params)
    pol = heuristic("leveraged_trader", "buy_and_hold")
    held = _lt_decode(env, params, st, pol.fn(KEY, obs, pol.make_params(params)))
    perp = held.market == PERP
    assert not np.any((held.kind == KIND_MARKET) & perp)
    resize = _lt_decode(env, params, st, pol.fn(KEY, obs, pol.make_params(params, hold=0.0)))
    buy = (resize.kind == KIND_MARKET) & (resize.market == PERP)
    assert buy.sum() == 1 and resize.side[buy][0] == 1
    mb = float(margin_balances(st.sim)[0])
    want = mb * 0.95 / float(sim.px.mark) - 0.6
    assert resize.qty[buy][0] == pytest.approx(want, rel=1e-4)


def test_lt_collateral_buy_sized_with_the_accounts_own_taker_rate(lt_env):
    """All of the wallet into STABLE: the buy is capped by the free USDT at the reference
    price x (1 + slippage_guard) x (1 + the taker fee this account pays). With an own
    taker rate of 1% that is usdt / (ref x 1.01 x 1.01), not the schedule's 0.05%."""
    env, params, state = lt_env
    acc = params.sim.accounts
    own = params.replace(
        sim=params.sim.replace(
            accounts=acc.replace(
                taker_fee=acc.taker_fee.at[0].set(0.01),
                own_taker_fee=acc.own_taker_fee.at[0].set(True),
            )
        )
    )
    usdt = float(state.sim.acct.bal[0, USDT])
    ref = float(state.sim.px.last[STABLE_SPOT])
    guard = float(params.role.slippage_guard)
    for p, fee in ((own, 0.01), (params, float(params.sim.rules.taker_fee))):
        rows = _lt_decode(env, p, state, [0.0, -1.0, 1.0, -1.0])
        buy = (rows.market == STABLE_SPOT) & (rows.kind == KIND_MARKET)
        assert buy.sum() == 1 and rows.side[buy][0] == 1
        assert rows.qty[buy][0] == pytest.approx(usdt / (ref * (1 + guard) * (1 + fee)), rel=1e-5)


# ============================================================== arbitrageur


# The carry's arithmetic with the default parameters (24 h episode, 8 h funding, cap 0.30%
# from a 0.40% tier-1 maintenance rate at 125x, baseline rate 0.01%, taker 0.017%).
CALM_SPREADS = {"perp_spread": 0.96, "spot_spread": 0.72}  # 9.6 and 7.2 bp: cost 0.118%


def carry(**entries) -> np.ndarray:
    """basis_arb's action on an observation with a 0.40% tier-1 maintenance rate."""
    return act("arbitrageur", "basis_arb", make_obs("arbitrageur", mmr_tier1=0.4, **entries))


def test_basis_arb_opens_when_the_funding_left_beats_the_costs():
    # Predicted rate at the cap with 0.1 of the interval to go: the next settlement is
    # expected at 0.81 x 0.30 + 0.19 x 0.01 = 0.2449%, two more at 0.01%: 0.2649% > 0.118%
    # + 0.02%. Both legs at `size`, equal and opposite.
    rich = carry(funding_rate=1.0, time_to_funding=0.1, **CALM_SPREADS)
    assert rich[0] == pytest.approx(0.9) and rich[1] == pytest.approx(-0.9)
    # The same predicted rate just after a settlement is mostly future premium: expected
    # 0.01% + 0.02% later = 0.03% < 0.138%, nothing opens; nor at the baseline rate.
    assert np.all(carry(funding_rate=1.0, time_to_funding=1.0, **CALM_SPREADS) == 0)
    assert np.all(carry(funding_rate=1 / 30, time_to_funding=0.1, **CALM_SPREADS) == 0)
    # Without spreads the baseline carry still loses to the fees: 0.03% < 0.034% + 0.02%.
    assert np.all(carry(funding_rate=1 / 30, time_to_funding=0.1) == 0)
    # No settlement left in the episode: nothing to collect.
    late = carry(funding_rate=1.0, time_to_funding=0.5, episode_progress=0.9, **CALM_SPREADS)
    assert np.all(late == 0)


def test_basis_arb_holds_base_units_and_unwinds_when_closing_beats_holding():
    held = {"perp_position": -0.08, "spot_base": 0.8, **CALM_SPREADS}
    # Open at the baseline rate (0.03% + 0.118% > -0.10%): keep the 0.8 x equity of BASE
    # held (the price fell since it was bought) and short exactly that.
    stay = carry(funding_rate=1 / 30, time_to_funding=0.5, **held)
    assert stay[0] == pytest.approx(0.8) and stay[1] == pytest.approx(-0.8)
    # Funding at minus the cap, wholly fixed (settling now): -0.30% + 3 x 0.01% + 0.118%
    # = -0.152% < -0.10%: closing beats holding, unwind.
    assert np.all(carry(funding_rate=-1.0, time_to_funding=0.0, **held) == 0)


def test_basis_arb_basis_term_and_env_params():
    # With basis_weight 1, a 0.5% basis (no mark - index gap) opens; by default it does not.
    wide = make_obs("arbitrageur", basis=0.5, mmr_tier1=0.4, **CALM_SPREADS)
    assert np.all(act("arbitrageur", "basis_arb", wide) == 0)
    assert act("arbitrageur", "basis_arb", wide, basis_weight=1.0)[1] < 0
    # The parameters it copies from the env: the account's own taker rate, the baseline
    # rate, the interval and the horizon.
    env = envs.Arbitrageur()
    p = heuristic("arbitrageur", "basis_arb").make_params(env.make_params("calm"))
    assert float(p.taker_fee_pct) == pytest.approx(100 * env.learner_fees["taker"])
    assert float(p.base_rate_pct) == pytest.approx(0.01)
    assert float(p.funding_interval_h) == pytest.approx(8.0)
    assert float(p.horizon_h) == pytest.approx(24.0)


# ============================================================== all policies


@pytest.mark.parametrize("role", sorted(ROLE_POLICIES))
def test_every_policy_batches_and_stays_in_bounds(role):
    n = ROLES[role]().num_actions
    obs = jax.random.uniform(KEY, (7, len(obs_index(role))), minval=-3, maxval=3)
    keys = jax.random.split(KEY, 7)
    for p in baselines(role):
        a = np.asarray(jax.jit(jax.vmap(p.fn, in_axes=(0, 0, None)))(keys, obs, p.make_params()))
        assert a.shape == (7, n) and a.dtype == np.float32, p.name
        assert np.all(np.abs(a) <= 1.0) and np.all(np.isfinite(a)), p.name
    r = heuristic(role, "random")
    a1, a2 = r.fn(keys[0], obs[0], ()), r.fn(keys[1], obs[0], ())
    assert not np.allclose(a1, a2)


def test_registry_errors_list_choices():
    with pytest.raises(ValueError, match="allowed"):
        heuristic("market_maker", "trend_follower")
    with pytest.raises(ValueError, match="allowed"):
        baselines("nope")


# ============================================================== SB3 conversion


@pytest.mark.parametrize("algo", ["ppo", "a2c", "sac", "td3"])
def test_sb3_policy_converts_to_jax(algo):
    import gymnasium as gym
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    from agents.sb3_policy import ALGOS, jax_policy, numpy_actor

    d, n = len(obs_index("market_maker")), 5

    class Dummy(gym.Env):
        observation_space = gym.spaces.Box(-10, 10, (d,), np.float32)
        action_space = gym.spaces.Box(-1, 1, (n,), np.float32)

        def reset(self, *, seed=None, options=None):
            return np.zeros(d, np.float32), {}

        def step(self, action):
            return np.zeros(d, np.float32), 0.0, False, False, {}

    venv = VecNormalize(DummyVecEnv([Dummy]))
    rng = np.random.default_rng(0)
    venv.obs_rms.mean = rng.normal(size=d)
    venv.obs_rms.var = rng.uniform(0.5, 2.0, size=d)
    kw = {"learning_starts": 0, "buffer_size": 100} if algo in ("sac", "td3") else {}
    model = ALGOS[algo]("MlpPolicy", venv, policy_kwargs={"net_arch": [16, 16]}, seed=0, **kw)
    pol = jax_policy(model, venv, "market_maker", name=algo)
    obs = rng.normal(scale=3, size=(9, d)).astype(np.float32)
    want = numpy_actor(model, venv)(obs)
    got = np.asarray(
        jax.vmap(pol.fn, in_axes=(None, 0, None))(KEY, jnp.asarray(obs), pol.make_params())
    )
    np.testing.assert_allclose(got, want, atol=2e-5)


# ============================================================== metrics


def _traj(equity, terminated=None, liquidated=None, funding=None, steps=None, fees=None):
    eq = np.asarray(equity, float)
    b, t = eq.shape
    z = np.zeros((b, t))
    cfg = E.EvalConfig("calm", None, t if steps is None else steps, 30.0)
    return E.Trajectories(
        rows=[dict(policy="p", scenario="calm", variant=None, seed=i, config=0) for i in range(b)],
        configs=[cfg],
        equity0=np.full(b, 100.0),
        steps=np.full(b, cfg.steps),
        equity=eq,
        mark=z + 1,
        position=z,
        funding=z if funding is None else np.asarray(funding, float),
        liquidated=np.zeros((b, t), bool) if liquidated is None else np.asarray(liquidated),
        terminated=np.zeros((b, t), bool) if terminated is None else np.asarray(terminated),
        fees=None if fees is None else np.asarray(fees, float),
    )


def test_episode_metrics():
    tr = _traj(
        [[110, 99, 120, 120], [100, 100, 100, 100], [90, 50, 0, 0]],
        terminated=[[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0]],
        liquidated=[[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 1]],
        funding=[[1.5, -0.5, 0, 2.0], [0, 0, 0, 0], [0, 0, 0, 7.0]],
        fees=[[0.5, 0.25, 0, 1.0], [0, 0, 0, 0], [2.0, 1.0, 4.0, 8.0]],
    )
    e = E.episode_table(tr)
    assert e[0]["pnl"] == pytest.approx(0.2)
    assert e[0]["max_drawdown"] == pytest.approx(1 - 99 / 110)
    assert e[0]["funding_received"] == pytest.approx(3.5)
    assert e[0]["funding_paid"] == pytest.approx(0.5)
    assert e[0]["survived"] == 1 and e[0]["sharpe"] > 0
    assert e[1]["pnl"] == 0 and e[1]["sharpe"] == 0 and e[1]["max_drawdown"] == 0
    # Terminated on step 2: later steps (and their funding) do not count.
    assert e[2]["survived"] == 0 and e[2]["liquidated"] == 1 and e[2]["steps"] == 3
    assert e[2]["pnl"] == pytest.approx(-1.0) and e[2]["funding_received"] == 0
    assert e[0]["fees"] == pytest.approx(1.75)
    assert e[2]["fees"] == pytest.approx(7.0)  # steps after the termination do not count
    assert np.isnan(E.episode_table(_traj([[100, 101]]))[0]["fees"])  # not recorded
    s = E.summarize(e)
    assert len(s) == 1 and s[0]["n"] == 3
    assert s[0]["survived_mean"] == pytest.approx(2 / 3)
    assert s[0]["pnl_max"] == pytest.approx(0.2)


def test_horizon_masks_steps():
    tr = _traj([[101, 102, 150, 150]], steps=2)
    e = E.episode_table(tr)[0]
    assert e["steps"] == 2 and e["pnl"] == pytest.approx(0.02)


def test_funding_cash_only_at_settlement():
    def state(next_s, rate, pos, mark):
        px = SimpleNamespace(
            next_funding_s=jnp.asarray(next_s),
            last_funding_rate=jnp.asarray(rate),
            mark=jnp.asarray(mark),
        )
        acct = SimpleNamespace(pos=jnp.asarray([pos, 0.0]))
        return SimpleNamespace(sim=SimpleNamespace(px=px, acct=acct))

    prev = state(28800.0, 0.0, 2.0, 100.0)
    same = state(28800.0, 0.0, 2.0, 100.0)
    settled = state(57600.0, 0.001, 2.0, 100.0)
    assert float(E.funding_cash(prev, same)) == 0.0
    assert float(E.funding_cash(prev, settled)) == pytest.approx(-0.2)  # long pays
    short = state(57600.0, 0.001, -2.0, 100.0)
    assert float(E.funding_cash(prev, short)) == pytest.approx(0.2)


def test_scenario_configs_follow_the_config_folder():
    import jaxsim

    cfgs = E.scenario_configs(max_steps=50)
    want = {(s, None) for s in jaxsim.list_scenarios()}
    want |= {(s, v) for s in jaxsim.list_scenarios() for v in jaxsim.list_variants(s)}
    assert {(c.scenario, c.variant) for c in cfgs} == want
    assert all(1 <= c.steps <= 50 for c in cfgs)
    base = E.scenario_configs(["calm"], variants=False)
    assert [(c.scenario, c.variant) for c in base] == [("calm", None)]
    assert base[0].steps == round(86400 / 30)
    with pytest.raises(ValueError, match="allowed"):
        E.scenario_configs(["nope"])
