"""PPO written in JAX (flax + optax): rollouts, GAE and updates of a whole batch of role
envs inside one jitted program (the PureJaxRL pattern, `python train.py --backend jax`).

It follows stable-baselines3's PPO so the two backends train the same thing from the same
`configs/train/ppo.yaml`:

- Gaussian policy with a state-independent log std and separate policy / value MLPs
  (`policy_kwargs.net_arch`, `activation_fn`, `log_std_init`); orthogonal initialisation
  (sqrt 2 hidden, 0.01 policy head, 1 value head); actions are sampled unclipped and
  clipped to [-1, 1] only for the env, as SB3 does;
- VecNormalize semantics (`normalize: {norm_obs, norm_reward, clip_obs}`): running
  observation statistics updated with every step's batch, rewards divided by the running
  std of the discounted return and clipped to +/-10;
- time-limit bootstrapping: on a truncated (not terminated) step the reward gets
  `gamma * V(final observation)`;
- GAE(lambda), advantages normalised per minibatch, clipped surrogate, unclipped value
  loss, entropy bonus, global-norm gradient clipping, Adam (eps 1e-5); "lin_<x>"
  learning rate / clip range decay linearly to 0 over the budget;
- kickstarting (this backend only, `pretrain: {policy, steps, epochs, learning_rate,
  coef}`): the actor's mean is first fitted to a heuristic of the role on the states it
  visits (behaviour cloning), and with `coef` > 0 each PPO minibatch loss adds `coef` x the
  squared distance to the heuristic's actions (`make_trainer`'s `pretrain`).

Not supported (a clear error says so): SB3 keys without a counterpart here (`target_kl`,
`use_sde`, `clip_range_vf`, ...), other algorithms, resuming from an SB3 run.

`train(...)` writes the run folder `train.py` expects (config.yaml with
`backend: jax`, `jax_model.msgpack`, `checkpoints/`, `progress.csv`); `load_policy`
turns it into an evaluation `Policy` (deterministic action = clipped mean).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization, struct
from flax.training.train_state import TrainState

from agents.heuristics import Policy
from envs.core import EnvParams, RoleEnv

Array = jax.Array

MODEL_FILE = "jax_model.msgpack"
PROGRESS_FILE = "progress.csv"
CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_PREFIX = "model"
ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "elu": jax.nn.elu,
    "leaky_relu": jax.nn.leaky_relu,
    "silu": jax.nn.silu,
    "gelu": jax.nn.gelu,
}
# Keys of configs/train/ppo.yaml that this backend reads; anything else is an error.
KNOWN_KEYS = {
    "n_timesteps",
    "n_envs",
    "policy",
    "normalize",
    "env_kwargs",
    "n_steps",
    "batch_size",
    "n_epochs",
    "gamma",
    "gae_lambda",
    "learning_rate",
    "clip_range",
    "ent_coef",
    "vf_coef",
    "max_grad_norm",
    "policy_kwargs",
    "normalize_advantage",
    "pretrain",
}
PRETRAIN_KEYS = {"policy", "steps", "epochs", "learning_rate", "coef"}
KNOWN_POLICY_KWARGS = {"net_arch", "activation_fn", "log_std_init"}


class JaxPPOConfigError(ValueError):
    """A hyperparameter the JAX backend does not accept (the message names it)."""


def _schedule(value: Any, name: str) -> tuple[float, bool]:
    """(start value, linear decay?) from a number or "lin_<x>"."""
    if isinstance(value, str):
        if value.startswith("lin_"):
            try:
                return float(value[4:]), True
            except ValueError:
                pass
        raise JaxPPOConfigError(f"{name}: expected a number or 'lin_<x>', got {value!r}")
    return float(value), False


@dataclasses.dataclass(frozen=True)
class PPOSettings:
    """Static PPO settings (hashable: one compiled program per distinct setting)."""

    n_envs: int = 64
    n_steps: int = 64
    batch_size: int = 512
    n_epochs: int = 5
    gamma: float = 0.99
    gae_lambda: float = 0.95
    learning_rate: float = 3e-4
    lr_linear: bool = False
    clip_range: float = 0.2
    clip_linear: bool = False
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    net_arch: tuple[int, ...] = (64, 64)
    activation: str = "tanh"
    log_std_init: float = -0.5
    norm_obs: bool = True
    norm_reward: bool = True
    clip_obs: float = 10.0
    clip_reward: float = 10.0
    normalize_advantage: bool = True
    # Behaviour cloning before PPO (`pretrain: {policy, steps, epochs, learning_rate,
    # coef}`): the actor's mean is fitted to a heuristic's actions on the states it visits.
    pretrain_policy: str = ""
    pretrain_steps: int = 64
    pretrain_epochs: int = 10
    pretrain_lr: float = 1e-3
    # Kickstarting: weight of the squared distance between the actor's mean and the
    # teacher's action on each PPO minibatch (0 = behaviour cloning only at the start).
    pretrain_coef: float = 0.0

    @property
    def rollout(self) -> int:
        return self.n_envs * self.n_steps

    @property
    def n_minibatches(self) -> int:
        return self.rollout // self.batch_size

    def validate(self) -> None:
        pos = ("n_envs", "n_steps", "batch_size", "n_epochs")
        for k in pos:
            if int(getattr(self, k)) < 1:
                raise JaxPPOConfigError(f"{k} must be >= 1, got {getattr(self, k)}")
        if self.rollout % self.batch_size:
            raise JaxPPOConfigError(
                f"batch_size {self.batch_size} must divide n_steps x n_envs = {self.rollout}"
            )
        if not 0.0 < self.gamma <= 1.0 or not 0.0 <= self.gae_lambda <= 1.0:
            raise JaxPPOConfigError(
                f"gamma / gae_lambda out of range: {self.gamma}, {self.gae_lambda}"
            )
        if self.activation not in ACTIVATIONS:
            raise JaxPPOConfigError(
                f"policy_kwargs.activation_fn '{self.activation}' unknown; allowed: {sorted(ACTIVATIONS)}"
            )
        if not self.net_arch or any(int(h) < 1 for h in self.net_arch):
            raise JaxPPOConfigError(
                f"policy_kwargs.net_arch must list layer sizes, got {self.net_arch}"
            )
        if self.pretrain_policy:
            if self.pretrain_steps < 1 or self.pretrain_epochs < 1:
                raise JaxPPOConfigError(
                    "pretrain.steps and pretrain.epochs must be >= 1, got "
                    f"{self.pretrain_steps}, {self.pretrain_epochs}"
                )
            if (self.n_envs * self.pretrain_steps) % self.batch_size:
                raise JaxPPOConfigError(
                    f"batch_size {self.batch_size} must divide pretrain.steps x n_envs = "
                    f"{self.n_envs * self.pretrain_steps}"
                )
            if not self.pretrain_coef >= 0.0:
                raise JaxPPOConfigError(f"pretrain.coef must be >= 0, got {self.pretrain_coef}")
            if not self.pretrain_lr > 0.0:
                raise JaxPPOConfigError(
                    f"pretrain.learning_rate must be > 0, got {self.pretrain_lr}"
                )

    @classmethod
    def from_hyperparams(
        cls, hp: dict[str, Any], n_envs: int | None = None, check: bool = True
    ) -> PPOSettings:
        """From the merged PPO hyperparameters (the SB3 file's keys). `check=False` skips
        the rollout-shape checks (for rebuilding only the network)."""
        unknown = sorted(set(hp) - KNOWN_KEYS)
        if unknown:
            raise JaxPPOConfigError(
                f"the JAX PPO backend does not support {unknown}; allowed keys: {sorted(KNOWN_KEYS)}"
            )
        if hp.get("policy", "MlpPolicy") != "MlpPolicy":
            raise JaxPPOConfigError(f"policy must be MlpPolicy, got {hp['policy']!r}")
        pk = dict(hp.get("policy_kwargs") or {})
        bad = sorted(set(pk) - KNOWN_POLICY_KWARGS)
        if bad:
            raise JaxPPOConfigError(
                f"policy_kwargs {bad} not supported by the JAX backend; allowed: "
                f"{sorted(KNOWN_POLICY_KWARGS)}"
            )
        arch = pk.get("net_arch", [64, 64])
        if isinstance(arch, dict):  # SB3's dict(pi=[...], vf=[...]): must be the same
            if list(arch.get("pi", [])) != list(arch.get("vf", [])):
                raise JaxPPOConfigError("net_arch with different pi / vf sizes is not supported")
            arch = arch["pi"]
        norm = hp.get("normalize", True)
        norm_kw = dict(norm) if isinstance(norm, dict) else {}
        bad = sorted(set(norm_kw) - {"norm_obs", "norm_reward", "clip_obs", "clip_reward", "gamma"})
        if bad:
            raise JaxPPOConfigError(f"normalize keys {bad} not supported by the JAX backend")
        pre = hp.get("pretrain") or {}
        if not isinstance(pre, dict):
            raise JaxPPOConfigError(f"pretrain must be a mapping, got {pre!r}")
        bad = sorted(set(pre) - PRETRAIN_KEYS)
        if bad:
            raise JaxPPOConfigError(
                f"pretrain keys {bad} unknown; allowed: {sorted(PRETRAIN_KEYS)}"
            )
        if pre and not pre.get("policy"):
            raise JaxPPOConfigError("pretrain needs a policy (a heuristic of the role)")
        lr, lr_lin = _schedule(hp.get("learning_rate", 3e-4), "learning_rate")
        clip, clip_lin = _schedule(hp.get("clip_range", 0.2), "clip_range")
        s = cls(
            n_envs=int(n_envs or hp.get("n_envs", 64)),
            n_steps=int(hp.get("n_steps", 64)),
            batch_size=int(hp.get("batch_size", 512)),
            n_epochs=int(hp.get("n_epochs", 5)),
            gamma=float(hp.get("gamma", 0.99)),
            gae_lambda=float(hp.get("gae_lambda", 0.95)),
            learning_rate=lr,
            lr_linear=lr_lin,
            clip_range=clip,
            clip_linear=clip_lin,
            ent_coef=float(hp.get("ent_coef", 0.0)),
            vf_coef=float(hp.get("vf_coef", 0.5)),
            max_grad_norm=float(hp.get("max_grad_norm", 0.5)),
            net_arch=tuple(int(h) for h in arch),
            activation=str(pk.get("activation_fn", "tanh")),
            log_std_init=float(pk.get("log_std_init", 0.0)),
            norm_obs=bool(norm) and bool(norm_kw.get("norm_obs", True)),
            norm_reward=bool(norm) and bool(norm_kw.get("norm_reward", True)),
            clip_obs=float(norm_kw.get("clip_obs", 10.0)),
            clip_reward=float(norm_kw.get("clip_reward", 10.0)),
            normalize_advantage=bool(hp.get("normalize_advantage", True)),
            pretrain_policy=str(pre.get("policy") or ""),
            pretrain_steps=int(pre.get("steps", 64)),
            pretrain_epochs=int(pre.get("epochs", 10)),
            pretrain_lr=float(pre.get("learning_rate", 1e-3)),
            pretrain_coef=float(pre.get("coef", 0.0)),
        )
        if check:
            s.validate()
        return s


# ============================================================== network and statistics


class ActorCritic(nn.Module):
    """Separate policy and value MLPs (SB3's MlpPolicy for PPO) and a free log std."""

    action_dim: int
    net_arch: tuple[int, ...] = (64, 64)
    activation: str = "tanh"
    log_std_init: float = 0.0

    @nn.compact
    def __call__(self, x: Array) -> tuple[Array, Array, Array]:
        act = ACTIVATIONS[self.activation]
        hidden = nn.initializers.orthogonal(math.sqrt(2.0))
        pi, vf = x, x
        for i, h in enumerate(self.net_arch):
            pi = act(nn.Dense(h, kernel_init=hidden, name=f"pi_{i}")(pi))
            vf = act(nn.Dense(h, kernel_init=hidden, name=f"vf_{i}")(vf))
        mean = nn.Dense(
            self.action_dim, kernel_init=nn.initializers.orthogonal(0.01), name="pi_out"
        )(pi)
        value = nn.Dense(1, kernel_init=nn.initializers.orthogonal(1.0), name="vf_out")(vf)
        log_std = self.param(
            "log_std", nn.initializers.constant(self.log_std_init), (self.action_dim,)
        )
        return mean, log_std, value[..., 0]


@struct.dataclass
class RunningStats:
    """Running mean / variance over batches (Chan et al.'s parallel update, as SB3's
    `RunningMeanStd`, including its initial count of 1e-4)."""

    mean: Array
    var: Array
    count: Array

    @classmethod
    def create(cls, shape: tuple[int, ...]) -> RunningStats:
        return cls(jnp.zeros(shape), jnp.ones(shape), jnp.asarray(1e-4))

    def update(self, x: Array) -> RunningStats:
        b_mean, b_var, n = x.mean(0), x.var(0), x.shape[0]
        delta = b_mean - self.mean
        tot = self.count + n
        mean = self.mean + delta * n / tot
        m2 = self.var * self.count + b_var * n + delta**2 * self.count * n / tot
        return RunningStats(mean, m2 / tot, tot)


def normalize_obs(obs: Array, stats: RunningStats, s: PPOSettings) -> Array:
    if not s.norm_obs:
        return obs
    return jnp.clip((obs - stats.mean) / jnp.sqrt(stats.var + 1e-8), -s.clip_obs, s.clip_obs)


def gaussian_log_prob(x: Array, mean: Array, log_std: Array) -> Array:
    z = (x - mean) / jnp.exp(log_std)
    return jnp.sum(-0.5 * z**2 - log_std - 0.5 * jnp.log(2 * jnp.pi), axis=-1)


def gaussian_entropy(log_std: Array) -> Array:
    return jnp.sum(log_std + 0.5 * jnp.log(2 * jnp.pi * jnp.e), axis=-1)


def shuffled_minibatches(key: Array, data: Any, batch_size: int) -> Any:
    """`data` (a pytree of arrays with a common leading axis N) shuffled by one permutation
    and cut into N // batch_size minibatches: leaves of shape (N // batch_size, batch_size,
    ...). N must be a multiple of batch_size."""
    n = jax.tree_util.tree_leaves(data)[0].shape[0]
    perm = jax.random.permutation(key, n)
    return jax.tree_util.tree_map(
        lambda x: x[perm].reshape((n // batch_size, batch_size, *x.shape[1:])), data
    )


def gae(
    rewards: Array, values: Array, dones: Array, last_value: Array, gamma: float, lam: float
) -> tuple[Array, Array]:
    """Generalized advantage estimation over a (T, N) rollout.

    `dones[t]` marks that the episode ended at step t (the env auto-reset), so step t+1's
    value is not bootstrapped into step t. Returns (advantages, returns = adv + values).
    """

    def body(carry, xs):
        adv_next, v_next = carry
        r, v, d = xs
        nonterminal = 1.0 - d
        delta = r + gamma * v_next * nonterminal - v
        adv = delta + gamma * lam * nonterminal * adv_next
        return (adv, v), adv

    _, adv = jax.lax.scan(
        body,
        (jnp.zeros_like(last_value), last_value),
        (rewards, values, dones.astype(rewards.dtype)),
        reverse=True,
    )
    return adv, adv + values


# ============================================================== the trainer


@struct.dataclass
class Runner:
    train_state: TrainState
    env_state: Any
    obs: Array  # raw observations (N, D)
    obs_stats: RunningStats
    ret_stats: RunningStats
    ret_acc: Array  # discounted return per env, for reward normalisation
    ep_ret: Array  # raw episode return so far per env
    ep_len: Array
    key: Array
    update: Array  # updates done


def teacher_policy(env: Any, params: Any, name: str) -> tuple[Policy, Any]:
    """The heuristic `name` of the env's role and its parameters, for behaviour cloning.
    `params`: the env's `EnvParams`, or a distribution's `PoolParams` (the role settings
    the heuristic reads are the same in every member; the first member's are used).

    Raises:
        JaxPPOConfigError: no such heuristic for the role (the message lists them).
    """
    from agents.heuristics import heuristic

    role = getattr(env, "role", None) or env.inner.role
    try:
        pol = heuristic(role, name)
    except ValueError as e:
        raise JaxPPOConfigError(f"pretrain.policy: {e}") from None
    members = getattr(params, "members", None)
    one = params if members is None else jax.tree_util.tree_map(lambda x: x[0], members)
    return pol, pol.make_params(one)


def make_trainer(
    env: RoleEnv,
    params: EnvParams,
    s: PPOSettings,
    total_updates: int,
    teacher: tuple[Policy, Any] | None = None,
):
    """(init, run, pretrain) for one env configuration: `init(key) -> Runner`,
    `run(runner, n_updates) -> (runner, metrics per update)` (jit with n_updates static)
    and `pretrain(runner) -> (runner, metrics)` (None without `s.pretrain_policy`).

    `total_updates` sets the linear schedules (the budget they decay over). `teacher`:
    (policy, its params) for behaviour cloning and kickstarting; default the heuristic
    `s.pretrain_policy` of the env's role (`teacher_policy`).
    """
    s.validate()
    n_act = int(env.action_space(params).shape[0])
    n_obs = int(env.observation_space(params).shape[0])
    net = ActorCritic(n_act, s.net_arch, s.activation, s.log_std_init)
    n_grad = max(total_updates * s.n_epochs * s.n_minibatches, 1)
    lr = optax.linear_schedule(s.learning_rate, 0.0, n_grad) if s.lr_linear else s.learning_rate
    tx = optax.chain(optax.clip_by_global_norm(s.max_grad_norm), optax.adam(lr, eps=1e-5))
    v_reset = jax.vmap(env.reset, in_axes=(0, None))
    # Role envs build fresh episodes only on steps where one finished (same results).
    v_step = (
        functools.partial(env.step_batch, per_env_params=False)
        if hasattr(env, "step_batch")
        else jax.vmap(env.step, in_axes=(0, 0, 0, None))
    )

    t_params = v_teacher = None
    kickstart = bool(s.pretrain_policy) and s.pretrain_coef > 0.0
    if s.pretrain_policy:
        t_pol, t_params = teacher or teacher_policy(env, params, s.pretrain_policy)
        v_teacher = jax.vmap(t_pol.fn, in_axes=(0, 0, None))

    def init(key: Array) -> Runner:
        k_net, k_env, key = jax.random.split(key, 3)
        net_params = net.init(k_net, jnp.zeros((n_obs,)))
        ts = TrainState.create(apply_fn=net.apply, params=net_params, tx=tx)
        obs, env_state = v_reset(jax.random.split(k_env, s.n_envs), params)
        obs_stats = RunningStats.create((n_obs,))
        if s.norm_obs:
            obs_stats = obs_stats.update(obs)
        z = jnp.zeros((s.n_envs,))
        return Runner(
            ts, env_state, obs, obs_stats, RunningStats.create(()), z, z, z.astype(jnp.int32),
            key, jnp.zeros((), jnp.int32),
        )  # fmt: skip

    def env_step(r: Runner, _):
        key, k_act, k_env = jax.random.split(r.key, 3)
        nobs = normalize_obs(r.obs, r.obs_stats, s)
        mean, log_std, value = net.apply(r.train_state.params, nobs)
        action = mean + jnp.exp(log_std) * jax.random.normal(k_act, mean.shape)
        logp = gaussian_log_prob(action, mean, log_std)
        # Kickstarting: the teacher's action on the same state (its own key: the PPO
        # stream is the same with and without it).
        t_act = (
            jnp.clip(
                v_teacher(
                    jax.random.split(jax.random.fold_in(k_act, 1), s.n_envs), r.obs, t_params
                ),
                -1.0,
                1.0,
            )
            if kickstart
            else None
        )
        obs, env_state, reward, term, trunc, info = v_step(
            jax.random.split(k_env, s.n_envs), r.env_state, jnp.clip(action, -1.0, 1.0), params
        )
        reward = reward.astype(jnp.float32)
        done = term | trunc
        obs_stats = r.obs_stats.update(obs) if s.norm_obs else r.obs_stats
        # VecNormalize: reward / std of the discounted return (updated first), clipped.
        ret_acc = r.ret_acc * s.gamma + reward
        ret_stats = r.ret_stats.update(ret_acc) if s.norm_reward else r.ret_stats
        r_train = (
            jnp.clip(reward / jnp.sqrt(ret_stats.var + 1e-8), -s.clip_reward, s.clip_reward)
            if s.norm_reward
            else reward
        )
        # Time limit: bootstrap from the finished episode's last observation (SB3).
        fobs = normalize_obs(info["final_observation"], obs_stats, s)
        _, _, v_final = net.apply(r.train_state.params, fobs)
        r_train = r_train + jnp.where(trunc & ~term, s.gamma * v_final, 0.0)
        ep_ret = r.ep_ret + reward
        ep_len = r.ep_len + 1
        trans = {
            "obs": nobs,
            "action": action,
            "logp": logp,
            "value": value,
            "reward": r_train,
            "done": done,
            "ep_done": done,
            "ep_ret": ep_ret,
            "ep_len": ep_len,
        }
        if kickstart:
            trans["teacher"] = t_act.astype(mean.dtype)
        r = r.replace(
            env_state=env_state,
            obs=obs,
            obs_stats=obs_stats,
            ret_stats=ret_stats,
            ret_acc=jnp.where(done, 0.0, ret_acc),
            ep_ret=jnp.where(done, 0.0, ep_ret),
            ep_len=jnp.where(done, 0, ep_len),
            key=key,
        )
        return r, trans

    def loss_fn(net_params, batch, clip):
        mean, log_std, value = net.apply(net_params, batch["obs"])
        logp = gaussian_log_prob(batch["action"], mean, log_std)
        ratio = jnp.exp(logp - batch["logp"])
        adv = batch["adv"]
        if s.normalize_advantage:
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        pg = -jnp.minimum(ratio * adv, jnp.clip(ratio, 1 - clip, 1 + clip) * adv).mean()
        v_loss = jnp.mean((batch["ret"] - value) ** 2)
        ent = gaussian_entropy(log_std).mean()
        loss = pg + s.vf_coef * v_loss - s.ent_coef * ent
        if kickstart:
            loss = loss + s.pretrain_coef * jnp.mean((mean - batch["teacher"]) ** 2)
        approx_kl = jnp.mean((ratio - 1) - (logp - batch["logp"]))
        clip_frac = jnp.mean(jnp.abs(ratio - 1) > clip)
        return loss, (pg, v_loss, ent, approx_kl, clip_frac)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def one_update(r: Runner, _):
        r, traj = jax.lax.scan(env_step, r, None, s.n_steps)
        _, _, last_v = net.apply(r.train_state.params, normalize_obs(r.obs, r.obs_stats, s))
        adv, ret = gae(traj["reward"], traj["value"], traj["done"], last_v, s.gamma, s.gae_lambda)
        progress = jnp.minimum(r.update.astype(jnp.float32) / max(total_updates, 1), 1.0)
        clip = s.clip_range * (1.0 - progress) if s.clip_linear else s.clip_range
        flat = {
            "obs": traj["obs"],
            "action": traj["action"],
            "logp": traj["logp"],
            "adv": adv,
            "ret": ret,
        }
        if kickstart:
            flat["teacher"] = traj["teacher"]
        flat = jax.tree_util.tree_map(lambda x: x.reshape((s.rollout, *x.shape[2:])), flat)

        def epoch(carry, k):
            ts = carry
            mbs = shuffled_minibatches(k, flat, s.batch_size)

            def minibatch(ts, mb):
                (loss, aux), grads = grad_fn(ts.params, mb, clip)
                return ts.apply_gradients(grads=grads), (loss, *aux)

            ts, stats = jax.lax.scan(minibatch, ts, mbs)
            return ts, stats

        key, k_ep = jax.random.split(r.key)
        ts, stats = jax.lax.scan(epoch, r.train_state, jax.random.split(k_ep, s.n_epochs))
        loss, pg, v_loss, ent, kl, cf = (x[-1].mean() for x in stats)
        var_y = jnp.var(ret)
        explained = jnp.where(var_y > 0, 1.0 - jnp.var(ret - traj["value"]) / var_y, jnp.nan)
        n_done = traj["ep_done"].sum()
        metrics = {
            "loss": loss,
            "policy_loss": pg,
            "value_loss": v_loss,
            "entropy": ent,
            "approx_kl": kl,
            "clip_fraction": cf,
            "explained_variance": explained,
            "episodes": n_done,
            "ep_return": jnp.where(
                n_done > 0,
                jnp.sum(jnp.where(traj["ep_done"], traj["ep_ret"], 0.0)) / jnp.maximum(n_done, 1),
                jnp.nan,
            ),
            "ep_len": jnp.where(
                n_done > 0,
                jnp.sum(jnp.where(traj["ep_done"], traj["ep_len"], 0)) / jnp.maximum(n_done, 1),
                jnp.nan,
            ),
            "reward": traj["reward"].mean(),
            "std": jnp.exp(ts.params["params"]["log_std"]).mean(),
        }
        r = r.replace(train_state=ts, key=key, update=r.update + 1)
        return r, metrics

    def run(r: Runner, n_updates: int):
        return jax.lax.scan(one_update, r, None, n_updates)

    pretrain = None
    if s.pretrain_policy:
        n_bc = s.n_envs * s.pretrain_steps
        bc_tx = optax.adam(s.pretrain_lr, eps=1e-5)

        def collect(r: Runner, _):
            key, k_act, k_env = jax.random.split(r.key, 3)
            action = v_teacher(jax.random.split(k_act, s.n_envs), r.obs, t_params)
            action = jnp.clip(action.astype(jnp.float32), -1.0, 1.0)
            obs, env_state, _, _, _, _ = v_step(
                jax.random.split(k_env, s.n_envs), r.env_state, action, params
            )
            obs_stats = r.obs_stats.update(obs) if s.norm_obs else r.obs_stats
            r = r.replace(env_state=env_state, obs=obs, obs_stats=obs_stats, key=key)
            return r, (r.obs, action)

        def bc_loss(net_params, x, y):
            mean, _, _ = net.apply(net_params, x)
            return jnp.mean((mean - y) ** 2)

        bc_grad = jax.value_and_grad(bc_loss)

        def pretrain_fn(r: Runner):
            """Behaviour cloning: the teacher acts for `pretrain_steps` steps of every env
            (the observation statistics follow its states), then the actor's mean is
            fitted to its actions (mean squared error, `pretrain_epochs` passes, Adam).
            PPO then starts from a fresh optimizer state and fresh episodes."""
            obs0 = r.obs
            r, (obs, act) = jax.lax.scan(collect, r, None, s.pretrain_steps)
            # The state the teacher acted on is the one before each step.
            obs = jnp.concatenate([obs0[None], obs[:-1]], 0).reshape((n_bc, -1))
            x = normalize_obs(obs, r.obs_stats, s)
            y = act.reshape((n_bc, -1))
            key, k_fit, k_reset = jax.random.split(r.key, 3)

            def epoch(carry, k):
                p, opt = carry

                def mb(c, b):
                    p, opt = c
                    loss, g = bc_grad(p, *b)
                    upd, opt = bc_tx.update(g, opt, p)
                    return (optax.apply_updates(p, upd), opt), loss

                (p, opt), losses = jax.lax.scan(
                    mb, (p, opt), shuffled_minibatches(k, (x, y), s.batch_size)
                )
                return (p, opt), losses.mean()

            p0 = r.train_state.params
            (p, _), losses = jax.lax.scan(
                epoch, (p0, bc_tx.init(p0)), jax.random.split(k_fit, s.pretrain_epochs)
            )
            ts = TrainState.create(apply_fn=net.apply, params=p, tx=tx)
            obs, env_state = v_reset(jax.random.split(k_reset, s.n_envs), params)
            obs_stats = r.obs_stats.update(obs) if s.norm_obs else r.obs_stats
            z = jnp.zeros((s.n_envs,))
            r = r.replace(
                train_state=ts, env_state=env_state, obs=obs, obs_stats=obs_stats,
                ret_acc=z, ep_ret=z, ep_len=z.astype(jnp.int32), key=key,
            )  # fmt: skip
            return r, {"mse_first": losses[0], "mse_last": losses[-1], "samples": n_bc}

        pretrain = jax.jit(pretrain_fn)

    return init, jax.jit(run, static_argnums=1), pretrain


# ============================================================== saving and loading


def _payload(r: Runner) -> dict[str, Any]:
    return {
        "params": r.train_state.params,
        "obs_stats": {"mean": r.obs_stats.mean, "var": r.obs_stats.var, "count": r.obs_stats.count},
        "ret_stats": {"mean": r.ret_stats.mean, "var": r.ret_stats.var, "count": r.ret_stats.count},
        "opt_state": r.train_state.opt_state,
        "update": r.update,
    }


def save_runner(path: str | Path, r: Runner) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(serialization.to_bytes(jax.device_get(_payload(r))))


def restore_runner(path: str | Path, r: Runner) -> Runner:
    """Load params, optimiser state and statistics saved by `save_runner` into `r`."""
    data = serialization.from_bytes(_payload(r), Path(path).read_bytes())
    ts = r.train_state.replace(params=data["params"], opt_state=data["opt_state"])
    return r.replace(
        train_state=ts,
        obs_stats=RunningStats(**data["obs_stats"]),
        ret_stats=RunningStats(**data["ret_stats"]),
        update=jnp.asarray(data["update"], jnp.int32),
    )


def load_policy(
    run_dir: str | Path, role: str, hp: dict[str, Any], name: str = "ppo_jax"
) -> Policy:
    """The run's deterministic policy (clipped mean of the Gaussian) as an evaluation
    `Policy`: `fn(key, obs, params)` with params = (net params, obs mean, obs var).

    Raises:
        FileNotFoundError: no jax_model.msgpack in the run folder.
    """
    from envs.roles import make_role

    path = Path(run_dir) / MODEL_FILE
    if not path.exists():
        raise FileNotFoundError(
            f"no JAX model at {path}; train first (python train.py --backend jax)"
        )
    s = PPOSettings.from_hyperparams(hp, check=False)
    env = make_role(role)
    n_act = int(env.action_space().shape[0])
    n_obs = int(env.observation_space().shape[0])
    net = ActorCritic(n_act, s.net_arch, s.activation, s.log_std_init)
    template = {
        "params": net.init(jax.random.PRNGKey(0), jnp.zeros((n_obs,))),
        "obs_stats": {
            "mean": jnp.zeros((n_obs,)),
            "var": jnp.ones((n_obs,)),
            "count": jnp.zeros(()),
        },
    }
    raw = serialization.msgpack_restore(path.read_bytes())
    data = serialization.from_state_dict(template, {k: raw[k] for k in template})
    stats = RunningStats(
        data["obs_stats"]["mean"], data["obs_stats"]["var"], data["obs_stats"]["count"]
    )
    pparams = (data["params"], stats.mean, stats.var)

    def fn(key: Array, obs: Array, p: Any) -> Array:
        net_params, mu, var = p
        x = normalize_obs(obs, RunningStats(mu, var, jnp.zeros(())), s)
        mean, _, _ = net.apply(net_params, x)
        return jnp.clip(mean, -1.0, 1.0).astype(jnp.float32)

    def make_params(env_params=None, **overrides):
        if overrides:
            raise ValueError(f"a trained policy takes no parameters, got {sorted(overrides)}")
        return pparams

    return Policy(name, role, fn, make_params, "trained PPO policy (JAX backend)")


def numpy_actor(policy: Policy) -> Callable[[np.ndarray], np.ndarray]:
    """`act(obs (N, D)) -> actions (N, A)` of a loaded policy, for the NumPy loop engine."""
    pp = policy.make_params()
    key = jax.random.PRNGKey(0)
    f = jax.jit(jax.vmap(lambda o: policy.fn(key, o, pp)))
    return lambda obs: np.asarray(f(jnp.asarray(obs, jnp.float32)))


# ============================================================== training driver


_TRAINERS: dict[tuple, tuple] = {}


def episode_return_text(row: dict[str, Any]) -> str:
    """An update's mean episode return for the progress line; "n/a" when no episode ended
    in that update's rollout (progress.csv keeps NaN there)."""
    if int(row.get("episodes", 0)) == 0 or not math.isfinite(row["ep_return"]):
        return "n/a (no episode ended)"
    return f"{row['ep_return']:.4g}"


def _trainer(env: RoleEnv, params: EnvParams, s: PPOSettings, total_updates: int):
    """(jitted init, run, {updates per call: compiled run}) for this configuration, kept
    for the process: training the same configuration again (another seed, a resume to
    the same budget) reuses the compiled program instead of compiling it again."""
    leaves, tree = jax.tree_util.tree_flatten(params)
    digest = hashlib.sha1()
    for x in leaves:
        x = np.asarray(x)
        digest.update(f"{x.dtype}{x.shape}".encode())
        digest.update(x.tobytes())
    key = (env, s, int(total_updates), str(tree), digest.hexdigest())
    if key not in _TRAINERS:
        init, run, pretrain = make_trainer(env, params, s, total_updates)
        _TRAINERS[key] = (jax.jit(init), run, {}, pretrain)
    return _TRAINERS[key]


def checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    d = Path(run_dir) / CHECKPOINT_DIR
    out = []
    for p in d.glob(f"{CHECKPOINT_PREFIX}_*_steps.msgpack"):
        try:
            out.append((int(p.name.split("_")[1]), p))
        except ValueError:
            continue
    return sorted(out)


def train(
    *,
    role: str,
    scenario: str,
    variant: str | None,
    run_dir: str | Path,
    hp: dict[str, Any],
    n_timesteps: int,
    n_envs: int | None = None,
    seed: int = 0,
    updates_per_call: int | None = None,
    time_limit_s: float | None = None,
    resume: bool = False,
    previous: dict[str, Any] | None = None,
    verbose: bool = True,
) -> dict[str, Any]:
    """Train PPO in JAX; write the run folder; return the run config (as `sb3_train.train`).

    The budget is rounded up to whole updates (n_steps x n_envs env steps each). Updates
    run `updates_per_call` at a time in one compiled call (default: all of them in one
    call, i.e. the whole training inside one jit, unless a time limit asks for chunks).
    """
    from agents.sb3_train import _plain, write_run_config
    from envs.distribution import DistributionEnv, pool_params
    from envs.roles import build_params, make_role, split_static
    from jaxsim.config.distribution import is_distribution

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    s = PPOSettings.from_hyperparams(hp, n_envs=n_envs)
    env_kwargs = dict(hp.get("env_kwargs") or {})
    max_steps = env_kwargs.pop("max_episode_steps", None)
    static, settings = split_static(role, env_kwargs)
    env = make_role(role, **static)
    if is_distribution(scenario):
        # Each env draws its member of the distribution at every reset (envs.distribution).
        if variant is not None:
            raise JaxPPOConfigError(f"'{scenario}' is a distribution: it takes no variant")
        params = pool_params(env, scenario, None, max_steps, None, settings)
        env = DistributionEnv(env)
    else:
        params = build_params(env, scenario, variant, None, max_steps, None, None, settings)
    total_updates = max(1, math.ceil(int(n_timesteps) / s.rollout))
    done_before, done_updates, path = 0, 0, None
    if resume:
        found = checkpoints(run_dir)
        if not found:
            raise FileNotFoundError(
                f"--resume: no JAX checkpoint in {run_dir / CHECKPOINT_DIR} "
                f"(expected {CHECKPOINT_PREFIX}_<steps>_steps.msgpack)"
            )
        done_before, path = found[-1]
        done_updates = int(serialization.msgpack_restore(path.read_bytes())["update"])
    left = max(total_updates - done_updates, 0)
    if updates_per_call is None:
        updates_per_call = max(1, left // 10) if time_limit_s else max(left, 1)
    k = max(1, min(int(updates_per_call), max(left, 1)))
    # Whole calls only (a call size compiles once): the budget is rounded up to them, and
    # the linear schedules decay over the rounded budget.
    n_calls = math.ceil(left / k)
    total_updates = done_updates + n_calls * k

    t0 = time.perf_counter()
    init, run, compiled_by_k, pretrain = _trainer(env, params, s, total_updates)
    runner = init(jax.random.PRNGKey(seed))
    bc: dict[str, Any] = {}
    if resume:
        runner = restore_runner(path, runner)
        print(f"resuming from {path} ({done_before} steps done, target {n_timesteps})")
        if n_calls == 0:
            print(f"nothing to do: {done_before} steps done >= target {n_timesteps}")
    elif pretrain is not None:
        tb = time.perf_counter()
        runner, m = pretrain(runner)
        m = {k: float(v) for k, v in jax.device_get(m).items()}
        bc = {
            "policy": s.pretrain_policy,
            "samples": int(m["samples"]),
            "mse_first_epoch": round(m["mse_first"], 6),
            "mse_last_epoch": round(m["mse_last"], 6),
            "seconds": round(time.perf_counter() - tb, 1),
        }
        if verbose:
            print(
                f"behaviour cloning of {s.pretrain_policy}: {bc['samples']:,} samples, "
                f"action MSE {bc['mse_first_epoch']:.4g} -> {bc['mse_last_epoch']:.4g} "
                f"in {bc['seconds']:.0f} s (compile included)"
            )
    setup_s = time.perf_counter() - t0

    rows: list[dict[str, Any]] = []
    compile_s = 0.0
    learn_s = 0.0
    time_limited = False
    t_learn = None
    compiled = compiled_by_k.get(k)
    calls_done = 0
    for call in range(n_calls):
        if compiled is None:
            tc = time.perf_counter()
            compiled = compiled_by_k[k] = run.lower(runner, k).compile()
            compile_s = time.perf_counter() - tc
        tr = time.perf_counter()
        runner, metrics = compiled(runner)
        jax.block_until_ready(runner.update)
        dt = time.perf_counter() - tr
        learn_s += dt
        t_learn = t_learn or tr
        calls_done += 1
        m = jax.device_get(metrics)
        base = int(runner.update) - k
        for i in range(k):
            row = {
                "update": base + i + 1,
                "timesteps": done_before + ((call * k) + i + 1) * s.rollout,
            }
            row.update({name: float(v[i]) for name, v in m.items()})
            rows.append(row)
        if verbose:
            last = rows[-1]
            print(
                f"update {last['update']}/{total_updates}  steps {last['timesteps']}  "
                f"ep_return {episode_return_text(last)}  value_loss {last['value_loss']:.3g}  "
                f"{k * s.rollout / dt:,.0f} env-steps/s"
            )
        if time_limit_s is not None and time.perf_counter() - t_learn >= time_limit_s:
            time_limited = call + 1 < n_calls
            break

    steps_done = done_before + calls_done * k * s.rollout
    save_runner(run_dir / MODEL_FILE, runner)
    save_runner(
        run_dir / CHECKPOINT_DIR / f"{CHECKPOINT_PREFIX}_{steps_done}_steps.msgpack", runner
    )
    new_file = not (resume and (run_dir / PROGRESS_FILE).exists())
    if rows:
        with open(run_dir / PROGRESS_FILE, "w" if new_file else "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            if new_file:
                w.writeheader()
            w.writerows(rows)
    trained_now = steps_done - done_before
    sps = trained_now / learn_s if learn_s > 0 else float("nan")
    history = list((previous or {}).get("history") or [])
    history.append(
        {
            "timesteps": steps_done,
            "setup_s": round(setup_s, 1),
            "compile_s": round(compile_s, 1),
            "learn_s": round(learn_s, 1),
            "env_steps_per_s": round(sps, 1),
            "resumed": bool(resume),
            "time_limited": bool(time_limited),
            **({"pretrain": bc} if bc else {}),
        }
    )
    cfg = {
        "role": role,
        "scenario": scenario,
        "variant": variant,
        "algo": "ppo",
        "backend": "jax",
        "seed": seed,
        "n_envs": s.n_envs,
        "n_timesteps": int(n_timesteps),
        "trained_timesteps": steps_done,
        "eval_scenario": None,
        "hyperparams": _plain(hp),
        "history": history,
    }
    write_run_config(run_dir, cfg)
    if verbose:
        print(
            f"JAX PPO: {trained_now} env steps in {learn_s:.1f} s of training "
            f"({sps:,.0f} env-steps/s; compile {compile_s:.1f} s) with {s.n_envs} envs"
        )
    return cfg
