"""Role lookup by name and the keyword handling the adapters share."""

from __future__ import annotations

from typing import Any

import numpy as np

from envs.arbitrageur import Arbitrageur
from envs.core import EnvParams, RoleEnv
from envs.leveraged_trader import LeveragedTrader
from envs.market_maker import MarketMaker

ROLES: dict[str, type[RoleEnv]] = {
    "market_maker": MarketMaker,
    "arbitrageur": Arbitrageur,
    "leveraged_trader": LeveragedTrader,
}
# Constructor options that change shapes (static), per role.
STATIC_OPTIONS: dict[str, tuple[str, ...]] = {"market_maker": ("quote_spot",)}


def make_role(role: str | RoleEnv, n_agents: int = 1, **static: Any) -> RoleEnv:
    """The functional env of a role by name (or pass a `RoleEnv` through).

    Raises:
        ValueError: unknown role or an option the role does not have.
    """
    if isinstance(role, RoleEnv):
        if static or n_agents != role.n_agents:
            raise ValueError("pass options to the RoleEnv constructor, not with an instance")
        return role
    if role not in ROLES:
        raise ValueError(f"unknown role '{role}'; allowed: {sorted(ROLES)}")
    allowed = STATIC_OPTIONS.get(role, ())
    bad = set(static) - set(allowed)
    if bad:
        raise ValueError(f"role '{role}' has no option {sorted(bad)}; allowed: {list(allowed)}")
    return ROLES[role](n_agents=n_agents, **static)


def split_static(role: str | RoleEnv, kwargs: dict[str, Any]) -> tuple[dict, dict]:
    """Split adapter kwargs into (static role options, params keywords)."""
    name = role.role if isinstance(role, RoleEnv) else role
    allowed = STATIC_OPTIONS.get(name, ())
    static = {k: kwargs[k] for k in allowed if k in kwargs}
    rest = {k: v for k, v in kwargs.items() if k not in static}
    return static, rest


def build_params(
    core: RoleEnv,
    scenario: str | None,
    variant: str | None,
    overrides: dict | None,
    max_episode_steps: int | None,
    dtype: Any,
    params: EnvParams | None,
    settings: dict[str, Any],
) -> EnvParams:
    """Params for an adapter: given params (checked, optionally re-limited) or loaded."""
    if params is not None:
        if scenario is not None or variant is not None or overrides or settings:
            raise ValueError("pass either params or scenario/variant/overrides/settings, not both")
        core.check_params(params)
        if max_episode_steps is not None:
            params = params.replace(
                max_steps_in_episode=np.full(
                    np.shape(params.max_steps_in_episode), int(max_episode_steps), np.int32
                )
            )
        return params
    return core.make_params(
        scenario or "calm",
        variant,
        overrides,
        dtype=dtype,
        max_steps_in_episode=max_episode_steps,
        **settings,
    )


def validate_actions(action: Any, shape: tuple[int, ...], what: str) -> np.ndarray:
    """Check an action batch at an adapter boundary; return it as clipped float32.

    Raises:
        ValueError: non-float dtype, wrong shape, or NaN/inf entries.
    """
    a = np.asarray(action)
    if a.dtype == object or not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"{what}: action must be a float array in [-1, 1], got dtype {a.dtype}")
    if a.shape != shape:
        raise ValueError(f"{what}: action must have shape {shape}, got {a.shape}")
    bad = ~np.isfinite(a)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{what}: action has a non-finite entry {a[idx]} at index {idx}")
    return np.clip(a, -1.0, 1.0).astype(np.float32)
