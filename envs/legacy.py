"""gymnax-style 5-tuple wrapper and `make` for PureJaxRL-style trainers.

PureJaxRL's PPO calls `env.reset(key, params)` and `env.step(key, state, action, params)
-> (obs, state, reward, done, info)`, vmaps them with in_axes (0, None) and (0, 0, 0, None),
and reads `env.observation_space(params).shape` and `env.action_space(params).shape /
.low / .high`. `make(role, ...)` returns such an env and its params, so those trainers run
unmodified.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from envs import spaces
from envs.core import EnvParams, EnvState, RoleEnv
from envs.roles import make_role, split_static

Array = jax.Array


class LegacyWrapper:
    """5-tuple view of a role core: `done = terminated | truncated`, auto-reset inside.

    `info` keeps the core's entries plus "terminated", "truncated" and "discount"
    (0 on termination, 1 otherwise).
    """

    def __init__(self, env: RoleEnv):
        self._env = env

    def __getattr__(self, name: str):
        if name == "_env":
            raise AttributeError(name)
        return getattr(self._env, name)

    @property
    def default_params(self) -> EnvParams:
        return self._env.default_params

    @property
    def num_actions(self) -> int:
        return self._env.num_actions

    @property
    def name(self) -> str:
        return self._env.name

    def reset(self, key: Array, params: EnvParams | None = None) -> tuple[Array, EnvState]:
        return self._env.reset(key, params)

    def step(
        self, key: Array, state: EnvState, action: Array, params: EnvParams | None = None
    ) -> tuple[Array, EnvState, Array, Array, dict[str, Any]]:
        obs, state, reward, terminated, truncated, info = self._env.step(key, state, action, params)
        info["terminated"] = terminated
        info["truncated"] = truncated
        info["discount"] = 1.0 - terminated.astype(jnp.float32)
        return obs, state, reward, terminated | truncated, info

    def observation_space(self, params: EnvParams | None = None) -> spaces.Box:
        return self._env.observation_space(params)

    def action_space(self, params: EnvParams | None = None) -> spaces.Box:
        return self._env.action_space(params)


def make(
    role: str,
    scenario: str = "calm",
    variant: str | None = None,
    overrides: dict | None = None,
    *,
    legacy: bool = True,
    n_agents: int = 1,
    dtype: Any = None,
    max_steps_in_episode: int | None = None,
    **kwargs: Any,
) -> tuple[LegacyWrapper | RoleEnv, EnvParams]:
    """A role env and its params, like `gymnax.make`.

    Args:
        role: "market_maker", "arbitrageur" or "leveraged_trader".
        scenario, variant, overrides, dtype: as in `jaxsim.load_scenario` (any scenario).
        legacy: True gives the 5-tuple `LegacyWrapper`; False the 6-tuple core.
        n_agents: learners sharing the exchange (accounts 0..n_agents-1).
        max_steps_in_episode: time limit (None = the scenario's horizon).
        **kwargs: static role options (`quote_spot`) and role settings.

    Returns:
        (env, params).
    """
    static, settings = split_static(role, kwargs)
    core = make_role(role, n_agents=n_agents, **static)
    params = core.make_params(
        scenario,
        variant,
        overrides,
        dtype=dtype,
        max_steps_in_episode=max_steps_in_episode,
        **settings,
    )
    return (LegacyWrapper(core) if legacy else core), params
