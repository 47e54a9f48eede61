"""Pure-JAX PPO (`agents/jax_ppo.py`, `python train.py --backend jax`).

GAE and the running statistics against independent NumPy computations; the trainer learns
a toy continuous bandit (so the loss signs, sampling and updates are right) and is
deterministic per seed; the CLI trains a real role end to end and evaluates the result.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

import envs
from agents import jax_ppo as J
from envs import spaces

# ------------------------------------------------------------------ pieces


def test_gae_matches_a_hand_loop():
    rng = np.random.default_rng(0)
    T, N, gamma, lam = 7, 3, 0.9, 0.8
    r = rng.normal(size=(T, N)).astype(np.float32)
    v = rng.normal(size=(T, N)).astype(np.float32)
    d = rng.random((T, N)) < 0.3
    last = rng.normal(size=(N,)).astype(np.float32)
    adv, ret = J.gae(jnp.asarray(r), jnp.asarray(v), jnp.asarray(d), jnp.asarray(last), gamma, lam)
    want = np.zeros((T, N))
    for n in range(N):
        a = 0.0
        for t in reversed(range(T)):
            v_next = last[n] if t == T - 1 else v[t + 1, n]
            nt = 0.0 if d[t, n] else 1.0
            delta = r[t, n] + gamma * v_next * nt - v[t, n]
            a = delta + gamma * lam * nt * a
            want[t, n] = a
    np.testing.assert_allclose(np.asarray(adv), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(ret), want + v, rtol=1e-5, atol=1e-5)


def test_running_stats_equal_pooled_moments():
    rng = np.random.default_rng(1)
    chunks = [rng.normal(3.0, 2.0, size=(n, 4)) for n in (5, 17, 2, 40)]
    st = J.RunningStats.create((4,))
    for c in chunks:
        st = st.update(jnp.asarray(c, jnp.float32))
    allx = np.concatenate(chunks)
    np.testing.assert_allclose(np.asarray(st.mean), allx.mean(0), rtol=1e-4)
    np.testing.assert_allclose(np.asarray(st.var), allx.var(0), rtol=1e-3)


def test_progress_line_says_when_no_episode_ended():
    assert J.episode_return_text({"episodes": 3.0, "ep_return": -0.05321}) == "-0.05321"
    assert J.episode_return_text({"episodes": 0.0, "ep_return": float("nan")}) == (
        "n/a (no episode ended)"
    )


def test_settings_reject_what_the_backend_cannot_do():
    with pytest.raises(J.JaxPPOConfigError, match="target_kl"):
        J.PPOSettings.from_hyperparams({"target_kl": 0.01})
    with pytest.raises(J.JaxPPOConfigError, match="batch_size"):
        J.PPOSettings.from_hyperparams({"n_steps": 10, "batch_size": 64}, n_envs=4)
    with pytest.raises(J.JaxPPOConfigError, match="activation"):
        J.PPOSettings.from_hyperparams({"policy_kwargs": {"activation_fn": "swish2"}})
    s = J.PPOSettings.from_hyperparams({"learning_rate": "lin_1e-3", "clip_range": 0.1})
    assert s.lr_linear and s.learning_rate == pytest.approx(1e-3) and not s.clip_linear


# ------------------------------------------------------------------ a toy env


class Bandit:
    """One-step-per-decision continuous bandit in the role-env interface: the observation
    is a fixed context c in {-1, +1}^2 drawn at reset; reward = -|a - target(c)|^2 with
    target(c) = 0.5 c; episodes last 4 steps (time-limit truncation)."""

    def observation_space(self, params=None):
        return spaces.Box(-1.0, 1.0, (2,), jnp.float32)

    def action_space(self, params=None):
        return spaces.Box(-1.0, 1.0, (2,), jnp.float32)

    def reset(self, key, params=None):
        c = jnp.where(jax.random.bernoulli(key, 0.5, (2,)), 1.0, -1.0)
        return c, (c, jnp.zeros((), jnp.int32))

    def step(self, key, state, action, params=None):
        c, t = state
        reward = -jnp.sum((action - 0.5 * c) ** 2)
        t = t + 1
        trunc = t >= 4
        obs_re, st_re = self.reset(key)
        obs = jnp.where(trunc, obs_re, c)
        new = jax.tree_util.tree_map(lambda a, b: jnp.where(trunc, a, b), st_re, (c, t))
        info = {"final_observation": c}
        return obs, new, reward, jnp.zeros((), bool), trunc, info


SMALL = J.PPOSettings(
    n_envs=16,
    n_steps=8,
    batch_size=32,
    n_epochs=4,
    learning_rate=3e-3,
    net_arch=(16,),
    log_std_init=-0.5,
)


@pytest.fixture(scope="module")
def bandit_trainer():
    init, run, _ = J.make_trainer(Bandit(), None, SMALL, total_updates=60)
    return jax.jit(init), run


def _mean_error(runner):
    """Mean |deterministic action - target| over the four contexts."""
    ctx = jnp.array([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    x = J.normalize_obs(ctx, runner.obs_stats, SMALL)
    net = J.ActorCritic(2, SMALL.net_arch, SMALL.activation, SMALL.log_std_init)
    mean, _, _ = net.apply(runner.train_state.params, x)
    return float(jnp.abs(jnp.clip(mean, -1, 1) - 0.5 * ctx).mean())


def test_ppo_learns_the_bandit_and_is_deterministic(bandit_trainer):
    init, run = bandit_trainer
    r0 = init(jax.random.PRNGKey(0))
    before = _mean_error(r0)
    r1, m = run(r0, 60)
    after = _mean_error(r1)
    # The untrained policy outputs ~0 (error ~0.5); PPO must find the context's target.
    assert before > 0.4
    assert after < 0.1, f"mean action error {before:.3f} -> {after:.3f}"
    ret = np.asarray(m["ep_return"])
    assert np.nanmean(ret[-10:]) > np.nanmean(ret[:5]), "episode return did not improve"
    assert np.all(np.isfinite(np.asarray(m["loss"])))
    # Same seed, same trajectory and parameters (the program is compiled once).
    r2, m2 = run(init(jax.random.PRNGKey(0)), 60)
    chex_equal = jax.tree_util.tree_map(
        lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)),
        r1.train_state.params,
        r2.train_state.params,
    )
    assert all(jax.tree_util.tree_leaves(chex_equal))
    np.testing.assert_array_equal(np.asarray(m["loss"]), np.asarray(m2["loss"]))
    r3, _ = run(init(jax.random.PRNGKey(1)), 60)
    assert not np.array_equal(
        np.asarray(r1.train_state.params["params"]["pi_out"]["kernel"]),
        np.asarray(r3.train_state.params["params"]["pi_out"]["kernel"]),
    )


# ------------------------------------------------------------------ behaviour cloning


def _bandit_teacher(sign: float):
    """A teacher for the bandit: action = sign x 0.5 x context (sign +1 is optimal)."""
    from agents.heuristics import Policy

    def fn(key, obs, p):
        return sign * 0.5 * obs

    return Policy("teacher", "bandit", fn, lambda *a, **k: (), "test teacher"), ()


def _bc_settings(**kw):
    import dataclasses

    return dataclasses.replace(
        SMALL, pretrain_policy="teacher", pretrain_steps=8, pretrain_epochs=60, **kw
    )


def test_pretrain_clones_the_teacher_and_starts_fresh_episodes():
    init, _, pretrain = J.make_trainer(
        Bandit(), None, _bc_settings(), total_updates=1, teacher=_bandit_teacher(1.0)
    )
    r0 = jax.jit(init)(jax.random.PRNGKey(0))
    r1, m = pretrain(r0)
    # 16 envs x 8 steps of the teacher; the untrained policy is ~0 (error ~0.5).
    assert int(m["samples"]) == 128
    assert _mean_error(r0) > 0.4
    assert _mean_error(r1) < 0.05, _mean_error(r1)
    assert float(m["mse_last"]) < 0.1 * float(m["mse_first"])
    # PPO starts from a fresh optimizer and fresh episodes.
    assert int(r1.train_state.step) == 0
    assert not np.any(np.asarray(r1.ep_len)) and not np.any(np.asarray(r1.ret_acc))


def test_kickstart_term_holds_the_policy_near_the_teacher():
    """A wrong teacher (the negated target): after behaviour cloning PPO alone moves the
    policy to the target; with a heavy kickstarting weight it stays near the teacher."""
    errs = {}
    for coef in (0.0, 50.0):
        init, run, pretrain = J.make_trainer(
            Bandit(), None, _bc_settings(pretrain_coef=coef), 30, teacher=_bandit_teacher(-1.0)
        )
        r, _ = pretrain(jax.jit(init)(jax.random.PRNGKey(0)))
        assert _mean_error(r) > 0.9  # cloned the wrong teacher (target error 2 x 0.5)
        r, m = run(r, 30)
        assert np.all(np.isfinite(np.asarray(m["loss"])))
        errs[coef] = _mean_error(r)
    assert errs[0.0] < 0.5 < errs[50.0], errs


def test_pretrain_settings_are_checked():
    with pytest.raises(J.JaxPPOConfigError, match="pretrain keys"):
        J.PPOSettings.from_hyperparams({"pretrain": {"policy": "x", "epoch": 3}})
    with pytest.raises(J.JaxPPOConfigError, match="needs a policy"):
        J.PPOSettings.from_hyperparams({"pretrain": {"steps": 3}})
    with pytest.raises(J.JaxPPOConfigError, match="pretrain.steps"):
        J.PPOSettings.from_hyperparams({"pretrain": {"policy": "x", "steps": 0}})
    with pytest.raises(J.JaxPPOConfigError, match="pretrain.steps x n_envs"):
        J.PPOSettings.from_hyperparams(
            {"n_steps": 64, "batch_size": 64, "pretrain": {"policy": "x", "steps": 3}}, n_envs=4
        )
    with pytest.raises(J.JaxPPOConfigError, match="coef"):
        J.PPOSettings.from_hyperparams({"pretrain": {"policy": "x", "coef": -1.0}})
    with pytest.raises(J.JaxPPOConfigError, match="avellaneda_stoikov"):
        J.teacher_policy(envs.make_role("market_maker"), None, "nope")
    s = J.PPOSettings.from_hyperparams({"pretrain": {"policy": "avellaneda_stoikov"}})
    assert (s.pretrain_policy, s.pretrain_steps, s.pretrain_coef) == ("avellaneda_stoikov", 64, 0.0)


def test_main_job_settings_parse_and_name_a_teacher_of_the_role():
    """`python train.py`'s hyperparameters are accepted by the JAX backend, and its
    kickstarting teacher is a heuristic of the trained role."""
    import train
    from agents.sb3_train import load_hyperparams, parse_overrides

    d = train.DEFAULT_RUN
    over = parse_overrides([f"{k}:{v}" for k, v in d["params"].items()])
    hp = load_hyperparams("ppo", d["role"], over)
    s = J.PPOSettings.from_hyperparams(hp, n_envs=d["n_envs"])
    assert s.pretrain_policy and s.pretrain_coef > 0
    pol, _ = J.teacher_policy(envs.make_role(d["role"]), envs.make(d["role"])[1], s.pretrain_policy)
    assert pol.role == d["role"]


# ------------------------------------------------------------------ the CLI on a real role


def test_cli_jax_backend_trains_a_role_and_evaluates_it(tmp_path):
    import train

    run_dir = tmp_path / "jax_mm"
    # Budget 3 updates of 16 steps x 8 envs, one update per compiled call; the time limit
    # of 0 s stops it after the first call, so the resume below continues the same
    # configuration (and reuses its compiled program).
    common = ["train", "--backend", "jax", "--run-dir", str(run_dir), "--updates-per-call", "1"]
    rc = train.main(
        [
            *common, "--role", "market_maker", "--scenario", "crashes",
            "-n", "384", "--n-envs", "8", "--seed", "3", "--time-limit", "0",
            "-params", "n_steps:16", "batch_size:32", "n_epochs:2",
            "env_kwargs.max_episode_steps:24",
            "--eval-seeds", "1", "--eval-scenarios", "calm", "--eval-base-only",
            "--eval-max-steps", "12", "--eval-policies", "flat", "--eval-no-plots",
        ]
    )  # fmt: skip
    assert rc == 0
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert cfg["backend"] == "jax" and cfg["algo"] == "ppo"
    # Trained on a scenario distribution: each env draws its member at reset.
    assert cfg["scenario"] == "crashes" and cfg["distribution"]["pool_size"] > 1
    assert cfg["trained_timesteps"] == 128 and cfg["history"][0]["time_limited"]
    assert (run_dir / J.MODEL_FILE).exists()
    assert [s for s, _ in J.checkpoints(run_dir)] == [128]
    progress = (run_dir / J.PROGRESS_FILE).read_text().splitlines()
    assert len(progress) == 1 + 1 and progress[0].startswith("update,timesteps")
    results = (run_dir / "results.csv").read_text()
    assert "ppo" in results and "flat" in results
    assert "JAX backend" in (run_dir / "report.md").read_text()
    # The saved policy is the network's clipped mean on normalised observations.
    pol = J.load_policy(run_dir, "market_maker", cfg["hyperparams"])
    obs = jnp.linspace(-2.0, 2.0, len(envs.make_role("market_maker").obs_names))
    a = np.asarray(pol(jax.random.PRNGKey(0), obs, pol.make_params()))
    assert a.shape == (5,) and np.all(np.abs(a) <= 1.0) and np.all(np.isfinite(a))
    # --resume continues from the latest checkpoint to the total, with the run's batch size.
    assert train.main([*common, "--resume", "-n", "384", "--no-eval"]) == 0
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert cfg["trained_timesteps"] == 384 and cfg["n_envs"] == 8
    assert cfg["scenario"] == "crashes"  # the run's distribution, not the CLI's default
    assert [h["resumed"] for h in cfg["history"]] == [False, True]
    assert cfg["history"][1]["compile_s"] == 0.0  # the same program, compiled once
    assert [s for s, _ in J.checkpoints(run_dir)] == [128, 384]
    rows = (run_dir / J.PROGRESS_FILE).read_text().splitlines()
    assert len(rows) == 1 + 3 and rows[-1].startswith("3,384,")
    # Bad input is refused with a message, not a traceback.
    assert (
        train.main(
            ["train", "--backend", "jax", "--run-dir", str(run_dir), "-params", "target_kl:0.1"]
        )
        == 2
    )
