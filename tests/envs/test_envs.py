"""Contract tests of the role environments (envs/): gymnasium and SB3 checkers, the batched
VectorEnv and SB3 VecEnv, PPO smoke run, termination vs truncation, final-observation
semantics, no retracing, batch = one by one, determinism, bad input, rendering.

Compilation dominates the cost (the exchange step takes tens of seconds to compile on
2 cores), so every test runs on the adapters' shared kernels (`envs.kernel`): one
single-env executable for all three roles and one batched executable (BATCH envs). Time
limits, variants and roles are traced values; `test_no_retracing` checks that.
"""

from __future__ import annotations

import warnings

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from envs.core import EnvParams, EnvState, stack_params
from envs.gym_adapter import ArbitrageurEnv, CascadeEnv, MarketMakerEnv
from envs.vector import CascadeVectorEnv
from jaxsim.types import USDT

SCENARIO = "calm"
BATCH = 4
ROLES = ("market_maker", "arbitrageur", "leveraged_trader")


@pytest.fixture(scope="module")
def gym_envs() -> dict[str, CascadeEnv]:
    """One gymnasium env per role (their compiled functions are shared module-wide)."""
    out = {}
    for role, env_id in envs.ENV_IDS.items():
        render = "rgb_array" if role == "market_maker" else None
        env = gymnasium.make(env_id, scenario=SCENARIO, render_mode=render, render_window=20)
        out[role] = env.unwrapped
    return out


@pytest.fixture(scope="module")
def mm_kernel(gym_envs):
    """The compiled single-env kernel the gymnasium envs run (shared by all roles)."""
    return gym_envs["market_maker"].kernel


def _user_warnings(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, UserWarning)]


# ---------------------------------------------------------------- registration, API checks


def test_registered_ids_make_the_role_envs():
    for role, env_id in envs.ENV_IDS.items():
        assert env_id in gymnasium.registry
        env = gymnasium.make(env_id, scenario=SCENARIO)
        assert isinstance(env.unwrapped, CascadeEnv)
        assert env.unwrapped.core.role == role
    # The module-prefixed id imports the package itself (gymnasium >= 1.0 has no plugins).
    env = gymnasium.make("envs:cascade/Arbitrageur-v0", scenario=SCENARIO, variant="wide_fees")
    assert env.unwrapped.scenario == f"{SCENARIO}/wide_fees"


@pytest.mark.parametrize("role", ROLES)
def test_gymnasium_check_env(gym_envs, role):
    from gymnasium.utils.env_checker import check_env

    env = gym_envs[role]
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        check_env(env)
    assert not _user_warnings(record), _user_warnings(record)


@pytest.mark.parametrize("role", ROLES)
def test_sb3_check_env(gym_envs, role):
    from stable_baselines3.common.env_checker import check_env

    env = gym_envs[role]
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        check_env(env, warn=True)
    assert not _user_warnings(record), _user_warnings(record)


@pytest.mark.parametrize("role", ROLES)
def test_obs_names_and_random_episode_stay_finite(gym_envs, role):
    env = gym_envs[role]
    names = env.obs_names
    assert len(names) == len(set(names)) == env.observation_space.shape[0]
    for key in (
        "max_lev_tier1",
        "change_announced",
        "time_to_change",
        "funding_rate",
        "time_to_funding",
        "basis",
        "mark_index_gap",
        "perp_imbalance",
        "perp_depth",
        "stable_index_dev",
        "lst_premium",
        "perp_position",
        "margin_ratio",
        "liq_distance",
    ):
        assert key in names
    obs, _ = env.reset(seed=3)
    assert obs[names.index("equity")] == 0.0
    assert obs[names.index("max_lev_tier1")] > 0
    rng = np.random.default_rng(0)
    for _ in range(15):
        # Extreme actions (all corners) must not produce NaN/inf or leave the box.
        act = rng.choice([-1.0, 1.0], size=env.action_space.shape).astype(np.float32)
        obs, reward, term, trunc, info = env.step(act)
        assert env.observation_space.contains(obs)
        assert np.isfinite(reward) and np.isfinite(info["equity"])
    assert info["time"] == 15


# ---------------------------------------------------------------- termination / truncation


def test_truncation_and_final_observation(mm_kernel):
    k = mm_kernel
    names = k.core.obs_names
    p = k.params.replace(max_steps_in_episode=jnp.asarray(3, jnp.int32))
    prog = names.index("episode_progress")
    obs, state = k.reset(jax.random.PRNGKey(0), p)
    act = jnp.zeros((k.core.num_actions,), jnp.float32)
    for i in range(3):
        obs, state, reward, term, trunc, info = k.step(jax.random.PRNGKey(i + 1), state, act, p)
        if i < 2:
            assert not bool(trunc) and not bool(term)
            np.testing.assert_array_equal(info["final_observation"], obs)
            assert int(state.time) == i + 1
    assert bool(trunc) and not bool(term)
    # Auto-reset: obs/state already belong to the next episode; the final obs is the last.
    assert int(state.time) == 0
    assert float(obs[prog]) == 0.0
    assert float(info["final_observation"][prog]) == pytest.approx(1.0)
    assert not np.array_equal(np.asarray(obs), np.asarray(info["final_observation"]))


def test_gym_env_time_limits_through_make():
    prog = None
    for kwargs in ({"max_episode_steps": 2}, {"max_steps": 2}):
        # max_episode_steps: gymnasium's TimeLimit truncates; max_steps: the core does.
        env = gymnasium.make("cascade/MarketMaker-v0", scenario=SCENARIO, **kwargs)
        prog = env.unwrapped.obs_names.index("episode_progress")
        env.reset(seed=1)
        a = np.zeros(env.action_space.shape, np.float32)
        _, _, term, trunc, _ = env.step(a)
        assert not trunc and not term
        obs, _, term, trunc, info = env.step(a)
        assert trunc and not term
    # The core's own limit shows in its final observation: a full episode.
    assert obs[prog] == pytest.approx(1.0)


def _liquidatable(state: EnvState, params: EnvParams, entry_mult: float) -> EnvState:
    """Agent (account 0) long 10 BASE at entry = mark x entry_mult, the LP short."""
    sim = state.sim
    acct = sim.acct
    lp = params.sim.dims.lp
    mark = sim.px.mark
    pos = acct.pos.at[0].set(10.0).at[lp].add(-10.0)
    entry = acct.entry.at[0].set(mark * entry_mult)
    return state.replace(sim=sim.replace(acct=acct.replace(pos=pos, entry=entry)))


@pytest.mark.parametrize("entry_mult", [1.099, 1.3])
def test_liquidation_terminates(mm_kernel, entry_mult):
    """1.099: equity ~1% of the start, below maintenance: the engine liquidates the agent.
    1.3: equity negative (broke). Both terminate, neither truncates."""
    k = mm_kernel
    names = k.core.obs_names
    obs, state = k.reset(jax.random.PRNGKey(5))
    state = _liquidatable(state, k.params, entry_mult)
    # No clearance fee, so the liquidated account keeps what the book paid above its
    # bankruptcy price: termination must come from the liquidation, not from ruin.
    sim = state.sim
    state = state.replace(sim=sim.replace(rules=sim.rules.replace(liq_fee=sim.rules.liq_fee * 0)))
    no_quotes = -jnp.ones((k.core.num_actions,), jnp.float32)
    obs, new, reward, term, trunc, info = k.step(jax.random.PRNGKey(6), state, no_quotes)
    assert bool(term) and not bool(trunc)
    assert bool(info["liquidated"])
    assert float(reward) < -0.5
    if entry_mult < 1.1:
        assert float(info["equity"]) > 0  # terminated by the liquidation, not by ruin
    final = np.asarray(info["final_observation"])
    assert final[names.index("equity")] < -0.5
    # Auto-reset happened: a fresh account and a fresh episode.
    assert int(new.time) == 0
    assert float(obs[names.index("perp_position")]) == 0.0
    assert float(obs[names.index("equity")]) == 0.0


def test_healthy_position_does_not_terminate(mm_kernel):
    k = mm_kernel
    obs, state = k.reset(jax.random.PRNGKey(5))
    state = _liquidatable(state, k.params, 1.0)  # 10x long at the mark: margin is ample
    no_quotes = -jnp.ones((k.core.num_actions,), jnp.float32)
    _, new, _, term, trunc, info = k.step(jax.random.PRNGKey(6), state, no_quotes)
    assert not bool(term) and not bool(trunc) and not bool(info["liquidated"])
    assert float(new.sim.acct.pos[0]) == pytest.approx(10.0)


# ---------------------------------------------------------------- compile once, batch, seeds


def _mixed_batch(core, n=BATCH):
    """Per-env params: the base scenario and its wide_fees variant, varied time limits."""
    base = core.make_params(SCENARIO)
    wide = core.make_params(SCENARIO, "wide_fees")
    return [
        (base if i % 2 == 0 else wide).replace(max_steps_in_episode=jnp.asarray(2 + i, jnp.int32))
        for i in range(n)
    ]


def test_batch_equals_one_by_one(gym_envs, mm_kernel):
    """A vmapped batch with per-env params (two variants, four time limits, so some envs
    auto-reset mid-run) equals the same envs run one at a time with the same keys."""
    venv = CascadeVectorEnv("market_maker", BATCH, params=_mixed_batch(mm_kernel.core))
    bk = venv.kernel
    sk = mm_kernel
    keys = jax.random.split(jax.random.PRNGKey(11), BATCH)
    b_obs, b_state = bk.reset(keys)
    singles = []
    for i in range(BATCH):
        p_i = jax.tree_util.tree_map(lambda x, i=i: x[i], bk.params)
        singles.append((p_i, *sk.reset(keys[i], p_i)))
    rng = np.random.default_rng(1)
    saw_done = False
    for t in range(5):
        acts = rng.uniform(-1, 1, (BATCH, sk.core.num_actions)).astype(np.float32)
        skeys = jax.random.split(jax.random.PRNGKey(100 + t), BATCH)
        b_obs, b_state, b_rew, b_term, b_trunc, b_info = bk.step(skeys, b_state, acts)
        saw_done |= bool(np.any(b_trunc))
        for i in range(BATCH):
            p_i, _, st = singles[i]
            o, st, r, te, tr, inf = sk.step(skeys[i], st, acts[i], p_i)
            singles[i] = (p_i, o, st)
            np.testing.assert_allclose(np.asarray(b_obs[i]), np.asarray(o), rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(float(b_rew[i]), float(r), rtol=1e-4, atol=1e-6)
            assert bool(b_trunc[i]) == bool(tr) and bool(b_term[i]) == bool(te)
            np.testing.assert_allclose(
                np.asarray(b_state.sim.acct.bal[i]), np.asarray(st.sim.acct.bal), rtol=1e-5
            )
    assert saw_done


def test_same_seed_same_episode(gym_envs):
    env = gym_envs["leveraged_trader"]

    def episode(seed):
        obs, _ = env.reset(seed=seed)
        out = [obs]
        rng = np.random.default_rng(7)
        for _ in range(6):
            obs, r, *_ = env.step(rng.uniform(-1, 1, env.action_space.shape).astype(np.float32))
            out.append(np.append(obs, r))
        return out

    a, b, c = episode(42), episode(42), episode(43)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_gym_step_equals_core_step(gym_envs):
    """The gymnasium env's one-call step (packed state, key split and info inside the
    program) gives exactly what the core's jitted step gives with the adapter's key
    sequence: observations, rewards, flags and info, across an auto-reset."""
    env = MarketMakerEnv(scenario=SCENARIO, max_episode_steps=4)
    k = env.kernel
    seed = 21
    obs, _ = env.reset(seed=seed)
    seed_int = int(gymnasium.utils.seeding.np_random(seed)[0].integers(0, 2**31 - 1))
    k_reset, key = jax.random.split(jax.random.PRNGKey(seed_int))
    ref_obs, state = k.reset(k_reset)
    np.testing.assert_array_equal(obs, np.asarray(ref_obs))
    rng = np.random.default_rng(3)
    dones = 0
    for _ in range(6):
        act = rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)
        obs, reward, term, trunc, info = env.step(act)
        key, kk = jax.random.split(key)
        _, state, r_ref, te_ref, tr_ref, i_ref = k.step(kk, state, act)
        np.testing.assert_array_equal(obs, np.asarray(i_ref["final_observation"]))
        assert reward == float(r_ref) and term == bool(te_ref) and trunc == bool(tr_ref)
        for name, value in info.items():
            np.testing.assert_array_equal(value, np.asarray(i_ref[name]), err_msg=name)
        dones += trunc
    assert dones == 1
    np.testing.assert_array_equal(
        np.asarray(env.state.sim.acct.bal), np.asarray(state.sim.acct.bal)
    )
    assert isinstance(info["time"], int) and isinstance(info["liquidated"], bool)
    assert isinstance(info["equity"], float) and info["order_reason"].dtype == np.int32


def test_no_retracing(gym_envs, mm_kernel):
    """All roles, time limits and variants run on one single-env executable, every batch
    of the same size on one batched executable."""
    for env in gym_envs.values():
        env.reset(seed=0)
        env.step(env.action_space.sample())
    other = MarketMakerEnv(scenario=SCENARIO, variant="wide_fees", max_episode_steps=9)
    other.reset(seed=1)
    other.step(np.zeros(other.action_space.shape, np.float32))
    assert other.kernel.step_fn is mm_kernel.step_fn
    assert mm_kernel.step_fn._cache_size() <= 1  # the core step (other tests call it)
    assert mm_kernel.reset_fn._cache_size() <= 1
    # The gymnasium envs' one-call-per-step program, shared by roles and variants.
    prog = other._prog
    assert all(env._prog is prog for env in gym_envs.values())
    assert prog.step._cache_size() == 1 and prog.reset._cache_size() == 1
    for kwargs in ({"variant": [None, "wide_fees"] * (BATCH // 2)}, {"max_episode_steps": 3}):
        venv = CascadeVectorEnv("leveraged_trader", BATCH, scenario=SCENARIO, **kwargs)
        venv.reset(seed=0)
        venv.step(np.zeros(venv.action_space.shape, np.float32))
    assert venv.kernel.step_fn._cache_size() == 1


# ---------------------------------------------------------------- bad input


def test_bad_actions_raise_or_clip(gym_envs):
    env = gym_envs["market_maker"]
    shape = env.action_space.shape
    env.reset(seed=0)
    bad = [
        np.full(shape, np.nan, np.float32),
        np.array([0, 0, 0, np.inf, 0], np.float32),
        np.zeros((shape[0] + 1,), np.float32),
        np.zeros((1, *shape), np.float32),
        np.zeros(shape, np.int64),
        np.array(["a"] * shape[0]),
    ]
    before = jax.device_get(env.state.sim.acct.bal)
    for a in bad:
        with pytest.raises(ValueError, match="action"):
            env.step(a)
    np.testing.assert_array_equal(jax.device_get(env.state.sim.acct.bal), before)
    # Out-of-range values are clipped: 5 and 1 give the same step.
    big = np.full(shape, 5.0, np.float32)
    env.reset(seed=9)
    r1 = env.step(big)
    env.reset(seed=9)
    r2 = env.step(np.ones(shape, np.float32))
    np.testing.assert_array_equal(r1[0], r2[0])
    assert r1[1] == r2[1]


def test_core_sanitizes_and_checks_shape(mm_kernel):
    k = mm_kernel
    _, st = k.reset(jax.random.PRNGKey(0))
    nan = jnp.full((k.core.num_actions,), jnp.nan, jnp.float32)
    zero = jnp.zeros((k.core.num_actions,), jnp.float32)
    out_nan = k.step(jax.random.PRNGKey(1), st, nan)
    out_zero = k.step(jax.random.PRNGKey(1), st, zero)
    np.testing.assert_array_equal(out_nan[0], out_zero[0])  # NaN acts as 0
    assert np.isfinite(np.asarray(out_nan[1].sim.acct.bal)).all()
    with pytest.raises(ValueError, match="shape"):
        k.step(jax.random.PRNGKey(1), st, jnp.zeros((3,), jnp.float32))
    with pytest.raises(ValueError, match="float"):
        k.step(jax.random.PRNGKey(1), st, jnp.zeros((k.core.num_actions,), jnp.int32))


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match="unknown role"):
        envs.make_role("hodler")
    with pytest.raises(ValueError, match="inventory_penalty"):
        envs.MarketMaker().make_params(SCENARIO, inventory_penalty=-1.0)
    with pytest.raises(ValueError, match="unknown MarketMakerSettings"):
        envs.MarketMaker().make_params(SCENARIO, not_a_setting=1.0)
    core = envs.MarketMaker()
    a = core.make_params(SCENARIO)
    b = core.make_params(SCENARIO, overrides={"dims.n_levels": 80})
    with pytest.raises(ValueError, match="n_levels: 64 vs 80"):
        stack_params([a, b])
    with pytest.raises(ValueError, match="n_levels"):
        CascadeVectorEnv("market_maker", 2, params=[a, b])
    small = core.make_params(SCENARIO).sim.replace(dims=a.sim.dims.__class__(max_orders=2))
    with pytest.raises(ValueError, match="max_orders"):
        core.check_params(a.replace(sim=small))


# ---------------------------------------------------------------- vector, SB3, PPO


def test_make_vec_same_step_autoreset():
    venv = gymnasium.make_vec(
        "cascade/MarketMaker-v0", num_envs=BATCH, scenario=SCENARIO, max_episode_steps=2
    )
    assert isinstance(venv, CascadeVectorEnv)
    assert venv.metadata["autoreset_mode"] == gymnasium.vector.AutoresetMode.SAME_STEP
    obs, _ = venv.reset(seed=3)
    assert obs.shape == (BATCH, len(venv.obs_names)) and obs.dtype == np.float32
    prog = venv.obs_names.index("episode_progress")
    a = np.zeros(venv.action_space.shape, np.float32)
    obs, rew, term, trunc, infos = venv.step(a)
    assert "final_obs" not in infos and not trunc.any()
    obs, rew, term, trunc, infos = venv.step(a)
    assert trunc.all() and not term.any()
    assert infos["_final_obs"].all()
    for i in range(BATCH):
        assert infos["final_obs"][i][prog] == pytest.approx(1.0)
    assert np.all(obs[:, prog] == 0.0)
    assert infos["final_info"]["time"].tolist() == [2] * BATCH
    venv.step(a)
    # A partial reset restarts only the masked envs.
    mask = np.array([True] + [False] * (BATCH - 1))
    obs, _ = venv.reset(options={"reset_mask": mask})
    assert venv.state.time.tolist() == [0] + [1] * (BATCH - 1)
    # Per-env seeds: an env's episode depends on its own seed only.
    venv.reset(seed=[5, 5, 6, 7])
    obs, *_ = venv.step(a)
    np.testing.assert_array_equal(obs[0], obs[1])
    assert not np.array_equal(obs[0], obs[2])
    with pytest.raises(ValueError, match="shape"):
        venv.step(np.zeros((BATCH + 1, venv.single_action_space.shape[0]), np.float32))


def test_sb3_vecenv_terminal_observation_and_ppo():
    from stable_baselines3 import PPO

    from envs.sb3 import CascadeSB3VecEnv

    vec = CascadeSB3VecEnv("market_maker", BATCH, scenario=SCENARIO, max_episode_steps=3)
    vec.seed(5)
    obs = vec.reset()
    assert obs.shape == (BATCH, vec.observation_space.shape[0])
    a = np.zeros((BATCH, vec.action_space.shape[0]), np.float32)
    for _ in range(3):
        vec.step_async(a)
        obs, rew, dones, infos = vec.step_wait()
        assert rew.shape == (BATCH,) and dones.dtype == bool
    assert dones.all()
    for info in infos:
        assert info["TimeLimit.truncated"] is True
        assert info["terminal_observation"].shape == obs.shape[1:]
    assert vec.get_attr("render_mode") == [None] * BATCH
    assert vec.env_is_wrapped(gymnasium.Wrapper) == [False] * BATCH

    vec = CascadeSB3VecEnv("market_maker", BATCH, scenario=SCENARIO, max_episode_steps=40)
    model = PPO("MlpPolicy", vec, n_steps=64, batch_size=64, n_epochs=1, seed=0, device="cpu")
    model.learn(total_timesteps=BATCH * 64)
    assert model.num_timesteps == BATCH * 64


# ---------------------------------------------------------------- legacy / pure JAX


def test_legacy_make_is_gymnax_shaped():
    env, params = envs.make("arbitrageur", scenario=SCENARIO)
    assert isinstance(env, envs.LegacyWrapper)
    act_space = env.action_space(params)
    obs_space = env.observation_space(params)
    assert act_space.shape == (4,) and float(act_space.low.min()) == -1.0
    assert obs_space.shape == (len(env.obs_names),)
    key = jax.random.PRNGKey(0)
    # PureJaxRL vmaps reset/step with params broadcast; checking shapes needs no compile.
    keys = jax.random.split(key, 3)
    obs, state = jax.eval_shape(jax.vmap(env.reset, in_axes=(0, None)), keys, params)
    assert obs.shape == (3, obs_space.shape[0])
    acts = jax.ShapeDtypeStruct((3, 4), jnp.float32)
    out = jax.eval_shape(jax.vmap(env.step, in_axes=(0, 0, 0, None)), keys, state, acts, params)
    assert len(out) == 5
    obs, state, reward, done, info = out
    assert reward.shape == (3,) and done.shape == (3,) and done.dtype == bool
    assert {"final_observation", "terminated", "truncated", "discount"} <= set(info)
    sample = act_space.sample(key)
    assert bool(act_space.contains(sample))


def test_purejaxrl_log_wrapper_with_default_params():
    """PureJaxRL's `LogWrapper` (reproduced from its wrappers.py) calls the env with
    `params=None` inside `jax.jit`; gymnax's contract is that None means
    `env.default_params`, under `jit` and under `vmap` (its `VecEnv`)."""
    from functools import partial

    from flax import struct

    @struct.dataclass
    class LogEnvState:
        env_state: EnvState
        episode_returns: float
        episode_lengths: int
        returned_episode_returns: float
        returned_episode_lengths: int
        timestep: int

    class LogWrapper:
        def __init__(self, env):
            self._env = env

        def __getattr__(self, name):
            return getattr(self._env, name)

        @partial(jax.jit, static_argnums=(0,))
        def reset(self, key, params=None):
            obs, env_state = self._env.reset(key, params)
            return obs, LogEnvState(env_state, 0.0, 0, 0.0, 0, 0)

        @partial(jax.jit, static_argnums=(0,))
        def step(self, key, state, action, params=None):
            obs, env_state, reward, done, info = self._env.step(
                key, state.env_state, action, params
            )
            ret = state.episode_returns + reward
            length = state.episode_lengths + 1
            state = LogEnvState(
                env_state=env_state,
                episode_returns=ret * (1 - done),
                episode_lengths=length * (1 - done),
                returned_episode_returns=state.returned_episode_returns * (1 - done) + ret * done,
                returned_episode_lengths=state.returned_episode_lengths * (1 - done)
                + length * done,
                timestep=state.timestep + 1,
            )
            info["returned_episode_returns"] = state.returned_episode_returns
            info["returned_episode_lengths"] = state.returned_episode_lengths
            info["timestep"] = state.timestep
            info["returned_episode"] = done
            return obs, state, reward, done, info

    core, params = envs.make("leveraged_trader", scenario=SCENARIO)
    env = LogWrapper(core)
    n_act = env.action_space(None).shape[0]
    key = jax.random.PRNGKey(5)
    # PureJaxRL's VecEnv (vmap with params broadcast as None over the jitted wrapper) in a
    # jitted lax.scan: jit and vmap at once, one compiled program.
    n = 2
    v_reset = jax.vmap(env.reset, in_axes=(0, None))
    v_step = jax.vmap(env.step, in_axes=(0, 0, 0, None))

    @jax.jit
    def rollout(key):
        k0, k1 = jax.random.split(key)
        obs0, state = v_reset(jax.random.split(k0, n), None)

        def body(state, k):
            ka, ks = jax.random.split(k)
            act = jax.random.uniform(ka, (n, n_act), minval=-1.0, maxval=1.0)
            obs, state, reward, done, info = v_step(jax.random.split(ks, n), state, act, None)
            return state, (obs, reward, done, info["returned_episode"])

        return obs0, jax.lax.scan(body, state, jax.random.split(k1, 3))

    obs0, (state, (obs, reward, done, returned)) = rollout(key)
    # The defaults None stands for are `env.default_params`, passed explicitly here.
    k_env0 = jax.random.split(jax.random.split(key)[0], n)[0]
    ref_obs, _ = jax.jit(core.reset)(k_env0, params)
    np.testing.assert_array_equal(np.asarray(obs0[0]), np.asarray(ref_obs))
    assert obs.shape == (3, n, len(core.obs_names)) and reward.shape == (3, n)
    assert np.isfinite(np.asarray(obs)).all() and np.isfinite(np.asarray(reward)).all()
    assert state.timestep.tolist() == [3] * n and state.episode_lengths.tolist() == [3] * n
    np.testing.assert_allclose(
        np.asarray(state.episode_returns), np.asarray(reward).sum(0), rtol=1e-5, atol=1e-7
    )
    assert not np.asarray(done).any() and not np.asarray(returned).any()


def test_market_maker_spot_quotes_need_more_order_rows():
    """quote_spot adds 4 actions and 3 order rows; make_params raises dims.max_orders."""
    env, params = envs.make("market_maker", scenario=SCENARIO, quote_spot=True, legacy=False)
    assert env.num_actions == 9 and env.orders_per_agent == 7
    assert params.sim.dims.max_orders >= 7
    key = jax.random.PRNGKey(0)
    obs, state = jax.eval_shape(env.reset, key, params)
    act = jax.ShapeDtypeStruct((9,), jnp.float32)
    out = jax.eval_shape(env.step, key, state, act, params)
    assert out[0].shape == (len(env.obs_names),) and out[2].shape == ()
    small = envs.make_role("market_maker").make_params(SCENARIO)
    with pytest.raises(ValueError, match="max_orders"):
        env.check_params(small.replace(role=params.role))


# ---------------------------------------------------------------- rendering


def test_render_rgb_array(gym_envs):
    env = gym_envs["market_maker"]
    env.reset(seed=0)
    for _ in range(4):
        env.step(env.action_space.sample())
    frame = env.render()
    assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
    assert frame.std() > 0
    assert gym_envs["arbitrageur"].render() is None


def test_render_collection_frames(gym_envs):
    """The frame contract RecordVideo relies on: one equal-sized frame per reset/step."""
    from gymnasium.wrappers import RenderCollection

    env = RenderCollection(gym_envs["market_maker"])
    env.reset(seed=0)
    for _ in range(2):
        env.step(env.action_space.sample())
    frames = env.render()
    assert len(frames) == 3
    assert len({f.shape for f in frames}) == 1


def test_equity_counts_external_and_transit(gym_envs):
    """Sending USDT to the external venue (with a delay) moves no equity."""
    env = ArbitrageurEnv(scenario=SCENARIO, overrides={"rules.withdrawal_delay_s": 300.0})
    obs, _ = env.reset(seed=2)
    names = env.obs_names
    send = np.array([-1.0, 0.0, 0.0, 1.0], np.float32)  # no spot, no perp, all USDT out
    obs, reward, *_, info = env.step(send)
    assert obs[names.index("usdt")] < 0.01
    assert obs[names.index("in_transit")] > 0.9
    assert abs(reward) < 1e-3
    assert float(env.state.sim.acct.bal[0, USDT]) < 1.0


def _touch(state, params, m):
    """Best bid and ask of market m from the book's levels (numpy, by hand)."""
    q = np.asarray(state.sim.book.qty[m]).sum(-1)  # (2, G) bids, asks
    origin = float(state.sim.book.origin[m])
    tick = float(params.sim.markets.tick_size[m])
    px = (origin + np.arange(q.shape[-1])) * tick
    return px[q[0] > 0].max(), px[q[1] > 0].min()


def test_arbitrageur_account_has_the_role_fee_rates(tmp_path):
    """The learner account pays the arbitrageur's VIP rates unless the scenario gives it
    rates of its own; a spot buy is charged taker x notional at that rate."""
    import yaml

    from jaxsim.config import CONFIG_DIR

    core = envs.Arbitrageur()
    acc = core.make_params(SCENARIO).sim.accounts
    assert bool(acc.own_maker_fee[0]) and bool(acc.own_taker_fee[0])
    assert float(acc.maker_fee[0]) == pytest.approx(core.learner_fees["maker"])
    assert float(acc.taker_fee[0]) == pytest.approx(core.learner_fees["taker"])
    assert not bool(acc.own_taker_fee[1])  # the scenario's other users keep the rules' rates

    cfg = yaml.safe_load((CONFIG_DIR / f"{SCENARIO}.yaml").read_text())
    cfg["accounts"]["users"][0]["fees"] = {"maker": 0.0001, "taker": 0.0003}
    path = tmp_path / "own_fees.yaml"
    path.write_text(yaml.safe_dump(cfg))
    acc = core.make_params(str(path)).sim.accounts
    assert float(acc.maker_fee[0]) == pytest.approx(0.0001)
    assert float(acc.taker_fee[0]) == pytest.approx(0.0003)


def test_arbitrageur_spot_buy_pays_its_taker_rate(gym_envs):
    env = gym_envs["arbitrageur"]
    env.reset(seed=4)
    usdt0 = float(env.state.sim.acct.bal[0, USDT])
    *_, info = env.step(np.array([0.3, 0.0, 0.0, 0.0], np.float32))
    paid = usdt0 - float(env.state.sim.acct.bal[0, USDT])  # notional x (1 + rate)
    rate = envs.Arbitrageur.learner_fees["taker"]
    assert paid > 0.25 * 100_000
    assert info["fees"] == pytest.approx(paid * rate / (1 + rate), rel=1e-3)


def test_arbitrageur_legs_are_ioc_limits_at_the_touch(gym_envs):
    """Decoding by hand: targets are BASE quantities at the index (equal and opposite
    actions give equal and opposite legs), each leg an immediate-or-cancel order limited
    to slippage_guard past the touch seen; a buy is capped by the USDT it can pay for."""
    from jaxsim.types import KIND_MARKET, PERP, SPOT

    env = gym_envs["arbitrageur"]
    env.reset(seed=5)
    state, params, core = env.state, env.params, env.core
    guard = float(params.role.slippage_guard)
    eq0 = float(state.equity0[0])
    index = float(state.sim.px.index[0])
    fee = envs.Arbitrageur.learner_fees["taker"]
    _, spot_ask = _touch(state, params, SPOT)
    perp_bid, _ = _touch(state, params, PERP)

    rows = core.decode_one(jnp.array([0.5, -0.5, 0.0, 0.0]), state, params, jnp.int32(0))
    kind, side = np.asarray(rows.kind), np.asarray(rows.side)
    qty, price = np.asarray(rows.qty, np.float64), np.asarray(rows.price, np.float64)
    assert kind[0] == kind[1] == KIND_MARKET and side[0] == 1 and side[1] == -1
    assert qty[0] == pytest.approx(0.5 * eq0 / index, rel=1e-5)
    assert qty[1] == pytest.approx(qty[0], rel=1e-6)
    assert price[0] == pytest.approx(spot_ask * (1 + guard), rel=1e-6)
    assert price[1] == pytest.approx(perp_bid * (1 - guard), rel=1e-6)

    # Twice the equity in spot: capped by the USDT at the limit price and taker fee.
    big = params.replace(role=params.role.replace(max_spot_frac=jnp.float32(2.0)))
    rows = core.decode_one(jnp.array([1.0, 0.0, 0.0, 0.0]), state, big, jnp.int32(0))
    usdt = float(state.sim.acct.bal[0, USDT])
    want = usdt / (spot_ask * (1 + guard) * (1 + fee))
    assert float(rows.qty[0]) == pytest.approx(want, rel=1e-5)


# ---------------------------------------------------------------- PettingZoo


@pytest.fixture(scope="module")
def pz_env():
    from envs.pettingzoo import CascadeParallelEnv

    return CascadeParallelEnv(
        "leveraged_trader", n_agents=2, scenario=SCENARIO, max_episode_steps=6
    )


def test_pettingzoo_parallel_api(pz_env):
    from pettingzoo.test import parallel_api_test

    parallel_api_test(pz_env, num_cycles=8)
    # Learner 1 is a copy of the agent account; the scenario's users follow it.
    assert (
        pz_env.params.sim.dims.n_accounts
        == envs.LeveragedTrader().default_params.sim.dims.n_accounts + 1
    )
    obs, _ = pz_env.reset(seed=0)
    assert set(obs) == {"agent_0", "agent_1"}
    np.testing.assert_array_equal(obs["agent_0"], obs["agent_1"])
    # Both learners trade on the same exchange in the same tick.
    long_short = {
        "agent_0": np.array([0.5, 0, 0, 0], np.float32),
        "agent_1": np.array([-0.5, 0, 0, 0], np.float32),
    }
    obs, rew, term, trunc, infos = pz_env.step(long_short)
    pos = np.asarray(pz_env.core_state.sim.acct.pos[:2])
    assert pos[0] > 0 > pos[1]
    assert infos["agent_0"]["position"] == pytest.approx(pos[0])
    with pytest.raises(ValueError, match="non-finite"):
        pz_env.step({"agent_0": np.array([np.nan, 0, 0, 0], np.float32)})


def test_pettingzoo_liquidated_agent_leaves(pz_env):
    pz_env.reset(seed=1)
    state = pz_env.core_state
    acct = state.sim.acct
    lp = pz_env.params.sim.dims.lp
    mark = state.sim.px.mark
    acct = acct.replace(
        pos=acct.pos.at[1].set(10.0).at[lp].add(-10.0), entry=acct.entry.at[1].set(mark * 1.3)
    )
    pz_env.set_core_state(state.replace(sim=state.sim.replace(acct=acct)))
    zero = np.zeros(4, np.float32)
    obs, rew, term, trunc, infos = pz_env.step({"agent_0": zero, "agent_1": zero})
    assert term == {"agent_0": False, "agent_1": True}
    assert rew["agent_1"] < -0.5
    assert pz_env.agents == ["agent_0"]
    obs, rew, term, trunc, infos = pz_env.step({"agent_0": zero})
    assert set(obs) == {"agent_0"} and not term["agent_0"]
    assert not bool(pz_env.core_state.alive[1])
