"""`gymnasium.Env` over a role's functional core (registered as cascade/*-v0).

One jitted call per `step` (the core's auto-resetting step, compiled once per role
configuration and shared by every instance), one device-to-host transfer per step.
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium
import jax
import numpy as np

from envs import spaces
from envs.core import EnvParams, RoleEnv
from envs.kernel import Kernel
from envs.render import History, render_frame
from envs.roles import build_params, make_role, split_static, validate_actions

# Step-info entries copied to the gymnasium info dict (all but the observation arrays).
INFO_KEYS = (
    "equity",
    "pnl",
    "penalty",
    "liquidated",
    "position",
    "mark_price",
    "index_price",
    "spot_price",
    "basis",
    "funding_rate",
    "liq_notional",
    "fees",
    "order_reason",
    "time",
)


class CascadeEnv(gymnasium.Env):
    """One learner on the exchange, as a `gymnasium.Env`.

    Args:
        role: "market_maker", "arbitrageur" or "leveraged_trader" (or a `RoleEnv`).
        scenario: scenario name or YAML path (default "calm"); any `jaxsim.load_scenario`
            name works.
        variant: scenario variant, or None.
        overrides: dict of config overrides (nested or dotted keys).
        max_episode_steps: time limit of the core (truncation); None = the scenario's
            horizon. `gymnasium.make` keeps this keyword for its own `TimeLimit` wrapper
            (which then truncates, while the core's `episode_progress` still counts
            against the horizon); pass `max_steps=n` through `gymnasium.make` to set the
            core's limit instead.
        max_steps: alias of max_episode_steps that `gymnasium.make` passes through.
        params: ready `EnvParams` instead of scenario/variant/overrides/settings.
        dtype: float dtype of the exchange (None = float32; float64 needs x64).
        render_mode: None or "rgb_array".
        render_window: steps shown by `render()`.
        quote_spot: market maker only, also quote the spot book.
        **settings: role settings (see the role's settings class), `notional_scale`,
            `min_equity_frac`.

    The env runs `env.kernel` (`envs.kernel.Kernel`): one compiled step shared by every
    role and scenario with the same static dims. `env.params` are the role's params,
    `env.scenario` the scenario label.

    Spaces, observation entries (`obs_names`), action decoding, reward and termination
    are those of the role (`env.core`'s docstring). `step` raises ValueError for an
    action that is not a float array of the action shape or holds NaN/inf; values
    outside [-1, 1] are clipped. The info dict holds equity, pnl, penalty, liquidated,
    position, prices, basis, funding rate, liquidated notional, the engine's reason code
    per order row (`order_reason`, `jaxsim.types.REASON_NAMES`) and the step count.
    """

    metadata: ClassVar[dict] = {"render_modes": ["rgb_array"], "render_fps": 10}
    default_role: ClassVar[str] = "market_maker"

    def __init__(
        self,
        role: str | RoleEnv | None = None,
        scenario: str | None = None,
        variant: str | None = None,
        overrides: dict | None = None,
        *,
        max_episode_steps: int | None = None,
        max_steps: int | None = None,
        params: EnvParams | None = None,
        dtype: Any = None,
        render_mode: str | None = None,
        render_window: int = 300,
        **kwargs: Any,
    ):
        role = self.default_role if role is None else role
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        if max_steps is not None and max_episode_steps not in (None, max_steps):
            raise ValueError(
                f"max_steps={max_steps} and max_episode_steps={max_episode_steps} differ"
            )
        max_episode_steps = max_steps if max_steps is not None else max_episode_steps
        static, settings = split_static(role, kwargs)
        self.core = make_role(role, **static)
        params = build_params(
            self.core, scenario, variant, overrides, max_episode_steps, dtype, params, settings
        )
        self.scenario = params.sim.name
        self.params = params
        self.kernel = Kernel(self.core, params)
        self.render_mode = render_mode
        self.observation_space = spaces.to_gymnasium(self.core.observation_space(self.params))
        self.action_space = spaces.to_gymnasium(self.core.action_space(self.params))
        self.obs_names = self.core.obs_names
        self.action_names = self.core.action_names
        self._state = None
        self._key = None
        self._history = History(render_window)

    # ------------------------------------------------------------ gymnasium API

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        seed_int = int(self.np_random.integers(0, 2**31 - 1))
        k_reset, self._key = jax.random.split(jax.random.PRNGKey(seed_int))
        obs, state = self.kernel.reset(k_reset)
        self._state = state
        obs, mark, index, spot, pos, eq = jax.device_get(
            (
                obs,
                state.sim.px.mark,
                state.sim.px.index[0],
                state.sim.px.last[0],
                state.sim.acct.pos[0],
                state.equity[0],
            )
        )
        self._history.clear()
        self._history.append(
            {
                "time": 0,
                "mark_price": mark,
                "index_price": index,
                "spot_price": spot,
                "basis": 0.0,
                "position": pos,
                "equity": eq,
            }
        )
        return np.array(obs, np.float32), {"scenario": self.scenario}

    def step(self, action):
        if self._state is None:
            raise gymnasium.error.ResetNeeded("call reset() before step()")
        act = validate_actions(action, self.action_space.shape, f"{self.core.role} step")
        self._key, k = jax.random.split(self._key)
        obs, state, reward, terminated, truncated, info = self.kernel.step(k, self._state, act)
        self._state = state
        host = jax.device_get(
            (
                info["final_observation"],
                reward,
                terminated,
                truncated,
                {key: info[key] for key in INFO_KEYS},
            )
        )
        final_obs, reward, terminated, truncated, info_np = host
        self._history.append(info_np)
        info_out = {k: (v if np.ndim(v) else v.item()) for k, v in info_np.items()}
        return (
            np.array(final_obs, np.float32),
            float(reward),
            bool(terminated),
            bool(truncated),
            info_out,
        )

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        title = f"{self.core.role} - {self.scenario}"
        return render_frame(self._history, title)

    # ------------------------------------------------------------ helpers

    @property
    def state(self):
        """The core's current `EnvState` (None before the first reset)."""
        return self._state

    def set_state(self, state) -> None:
        """Replace the core state (tests, scripted starts); the next `step` continues it."""
        self._state = state


class MarketMakerEnv(CascadeEnv):
    """`CascadeEnv` with role "market_maker" (cascade/MarketMaker-v0)."""

    default_role = "market_maker"


class ArbitrageurEnv(CascadeEnv):
    """`CascadeEnv` with role "arbitrageur" (cascade/Arbitrageur-v0)."""

    default_role = "arbitrageur"


class LeveragedTraderEnv(CascadeEnv):
    """`CascadeEnv` with role "leveraged_trader" (cascade/LeveragedTrader-v0)."""

    default_role = "leveraged_trader"
