"""A trained stable-baselines3 policy behind the heuristics' interface.

`load_run(run_dir)` loads the model and VecNormalize statistics a `train.py` run saved;
`jax_policy(model, vecnorm)` turns its deterministic actor (an MLP) into a pure JAX
`Policy` (`policy(key, obs, params) -> action`, weights in `params`), so it is evaluated in
the same batched `lax.scan` as the heuristics. `numpy_actor(model, vecnorm)` is the plain
SB3 path (`model.predict` on normalized observations) for the loop engine and for
checking the conversion.

Supported: PPO / A2C (`ActorCriticPolicy`) and SAC / TD3 with MLP policies, flat
observations, no gSDE. Imports torch and stable-baselines3.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch
from stable_baselines3 import A2C, PPO, SAC, TD3
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import FlattenExtractor
from stable_baselines3.common.vec_env import VecNormalize

from agents.heuristics import Policy

Array = jax.Array

ALGOS: dict[str, type[BaseAlgorithm]] = {"ppo": PPO, "a2c": A2C, "sac": SAC, "td3": TD3}
MODEL_FILE = "model.zip"
VECNORM_FILE = "vecnormalize.pkl"

_ACTIVATIONS: dict[type, Callable[[Array], Array]] = {
    torch.nn.ReLU: jax.nn.relu,
    torch.nn.Tanh: jnp.tanh,
    torch.nn.ELU: jax.nn.elu,
    torch.nn.SiLU: jax.nn.silu,
    torch.nn.GELU: lambda x: jax.nn.gelu(x, approximate=False),
    torch.nn.Sigmoid: jax.nn.sigmoid,
    torch.nn.Softplus: jax.nn.softplus,
    torch.nn.Identity: lambda x: x,
    torch.nn.Flatten: lambda x: x,
}


def load_run(run_dir: str | Path, algo: str, device: str = "cpu"):
    """(model, VecNormalize or None) saved by `train.py` in `run_dir`.

    Raises:
        FileNotFoundError: no model.zip in the run folder.
    """
    run_dir = Path(run_dir)
    path = run_dir / MODEL_FILE
    if not path.exists():
        raise FileNotFoundError(f"no trained model at {path}; train first (python train.py ...)")
    model = ALGOS[algo].load(path, device=device)
    vn_path = run_dir / VECNORM_FILE
    vecnorm = load_vecnormalize(vn_path) if vn_path.exists() else None
    return model, vecnorm


def load_vecnormalize(path: str | Path) -> VecNormalize:
    """VecNormalize statistics without an env (what `VecNormalize.load` unpickles)."""
    with open(path, "rb") as f:
        return pickle.load(f)


def _layers(module: torch.nn.Module) -> list:
    """[("linear", W (in, out), b) | ("act", fn)] of a Linear / activation chain."""
    mods = list(module) if isinstance(module, torch.nn.Sequential) else [module]
    out: list = []
    for m in mods:
        if isinstance(m, torch.nn.Sequential):
            out += _layers(m)
        elif isinstance(m, torch.nn.Linear):
            w = m.weight.detach().cpu().numpy().T.astype(np.float32)
            b = m.bias.detach().cpu().numpy().astype(np.float32)
            out.append(("linear", w, b))
        elif isinstance(m, torch.nn.LeakyReLU):
            slope = float(m.negative_slope)
            out.append(("act", lambda x, s=slope: jax.nn.leaky_relu(x, s)))
        elif type(m) in _ACTIVATIONS:
            out.append(("act", _ACTIVATIONS[type(m)]))
        else:
            raise NotImplementedError(f"cannot convert layer {type(m).__name__} to JAX")
    return out


def actor_layers(model: BaseAlgorithm) -> tuple[list, bool]:
    """The deterministic actor as a layer list, and whether its output is squashed to
    [-1, 1] (then SB3 rescales it to the action space) rather than clipped.

    Raises:
        NotImplementedError: a policy this converter does not handle (gSDE, CNN, dict
            observations, unknown layers).
    """
    pol = model.policy
    if getattr(pol, "use_sde", False):
        raise NotImplementedError("gSDE policies are not converted")
    if isinstance(pol, ActorCriticPolicy):
        fe = pol.features_extractor if pol.share_features_extractor else pol.pi_features_extractor
        if not isinstance(fe, FlattenExtractor):
            raise NotImplementedError(f"features extractor {type(fe).__name__} not converted")
        layers = _layers(pol.mlp_extractor.policy_net) + _layers(pol.action_net)
        return layers, bool(pol.squash_output)
    actor = getattr(pol, "actor", None)
    if actor is None or not isinstance(actor.features_extractor, FlattenExtractor):
        raise NotImplementedError(f"policy {type(pol).__name__} not converted")
    if hasattr(actor, "latent_pi"):  # SAC: latent_pi -> mu -> tanh
        return _layers(actor.latent_pi) + _layers(actor.mu) + [("act", jnp.tanh)], True
    return _layers(actor.mu), True  # TD3: mu ends with Tanh


def _norm_stats(vecnorm: VecNormalize | None, dim: int):
    if vecnorm is None or not vecnorm.norm_obs:
        return np.zeros(dim, np.float32), np.ones(dim, np.float32), np.float32(np.inf)
    rms = vecnorm.obs_rms
    std = np.sqrt(rms.var + vecnorm.epsilon).astype(np.float32)
    return rms.mean.astype(np.float32), std, np.float32(vecnorm.clip_obs)


def jax_policy(
    model: BaseAlgorithm, vecnorm: VecNormalize | None, role: str, name: str = "trained"
) -> Policy:
    """The model's deterministic action as a pure JAX `Policy` (same as `model.predict(
    vecnorm.normalize_obs(obs), deterministic=True)` up to float rounding).

    params = (obs mean, obs std, clip, weights); `make_params` ignores the env params.
    """
    layers, squash = actor_layers(model)
    space = model.action_space
    low = np.asarray(space.low, np.float32)
    high = np.asarray(space.high, np.float32)
    dim = int(np.prod(model.observation_space.shape))
    mean, std, clip = _norm_stats(vecnorm, dim)
    weights = tuple((x[1], x[2]) for x in layers if x[0] == "linear")
    acts = [x[1] if x[0] == "act" else None for x in layers]

    def fn(key: Array, obs: Array, params: Any) -> Array:
        mu, sd, c, ws = params
        x = jnp.clip((obs - mu) / sd, -c, c)
        j = 0
        for a in acts:
            if a is None:
                w, b = ws[j]
                x = x @ w + b
                j += 1
            else:
                x = a(x)
        if squash:  # SB3 rescales squashed [-1, 1] outputs to the action space
            x = low + 0.5 * (x + 1.0) * (high - low)
        return jnp.clip(x, low, high).astype(jnp.float32)

    params = (
        jnp.asarray(mean),
        jnp.asarray(std),
        jnp.asarray(clip),
        tuple((jnp.asarray(w), jnp.asarray(b)) for w, b in weights),
    )

    def make_params(env_params=None, **overrides):
        if overrides:
            raise ValueError(f"a trained policy takes no parameters, got {sorted(overrides)}")
        return params

    return Policy(name, role, fn, make_params, f"trained {type(model).__name__} policy")


def numpy_actor(
    model: BaseAlgorithm, vecnorm: VecNormalize | None
) -> Callable[[np.ndarray], np.ndarray]:
    """`act(obs (N, D)) -> actions (N, A)`: SB3's deterministic predict behind VecNormalize."""

    def act(obs: np.ndarray) -> np.ndarray:
        x = vecnorm.normalize_obs(obs) if vecnorm is not None else obs
        a, _ = model.predict(x, deterministic=True)
        return np.asarray(a, np.float32)

    return act
