"""Gymnasium / SB3 / PettingZoo / pure-JAX environments for the three roles.

Roles (functional cores in the gymnax shape, `envs.core.RoleEnv`): `MarketMaker`,
`Arbitrageur`, `LeveragedTrader`. Adapters on the one core:

- `gymnasium.make("cascade/MarketMaker-v0", scenario=..., variant=..., ...)` (also
  `Arbitrageur-v0`, `LeveragedTrader-v0`): `envs.gym_adapter.CascadeEnv`. The ids are
  registered by `import envs`; gymnasium >= 1.0 no longer loads the `gymnasium.envs`
  entry point, so without importing envs first use `gymnasium.make("envs:cascade/...")`.
- `gymnasium.make_vec(id, num_envs=N, ...)`: `envs.vector.CascadeVectorEnv`, one
  jit-of-vmap call per step, same-step autoreset.
- `envs.sb3.CascadeSB3VecEnv`: an SB3 `VecEnv` over the batch (imports SB3 / torch).
- `envs.make(role, scenario=...) -> (env, params)`: 5-tuple `LegacyWrapper` for
  PureJaxRL-style trainers (`legacy=False` gives the 6-tuple core).
- `envs.pettingzoo.CascadeParallelEnv`: several learners on one exchange.
"""

from __future__ import annotations

from envs.arbitrageur import Arbitrageur, ArbitrageurSettings
from envs.core import (
    COMMON_OBS,
    COMMON_OBS_NAMES,
    EnvParams,
    EnvState,
    RoleEnv,
    jitted,
    jitted_batch,
    stack_params,
)
from envs.legacy import LegacyWrapper, make
from envs.leveraged_trader import LeveragedTrader, LeveragedTraderSettings
from envs.market_maker import MarketMaker, MarketMakerSettings
from envs.roles import ROLES, make_role

ENV_IDS: dict[str, str] = {
    "market_maker": "cascade/MarketMaker-v0",
    "arbitrageur": "cascade/Arbitrageur-v0",
    "leveraged_trader": "cascade/LeveragedTrader-v0",
}
_CLASS = {
    "market_maker": "MarketMaker",
    "arbitrageur": "Arbitrageur",
    "leveraged_trader": "LeveragedTrader",
}


def register_envs() -> None:
    """Register the gymnasium ids (idempotent). Called on `import envs`."""
    from gymnasium.envs.registration import register, registry

    for role, env_id in ENV_IDS.items():
        if env_id in registry:
            continue
        cls = _CLASS[role]
        register(
            id=env_id,
            entry_point=f"envs.gym_adapter:{cls}Env",
            vector_entry_point=f"envs.vector:{cls}VectorEnv",
        )


register_envs()

__all__ = [
    "COMMON_OBS",
    "COMMON_OBS_NAMES",
    "ENV_IDS",
    "ROLES",
    "Arbitrageur",
    "ArbitrageurSettings",
    "EnvParams",
    "EnvState",
    "LegacyWrapper",
    "LeveragedTrader",
    "LeveragedTraderSettings",
    "MarketMaker",
    "MarketMakerSettings",
    "RoleEnv",
    "jitted",
    "jitted_batch",
    "make",
    "make_role",
    "register_envs",
    "stack_params",
]
