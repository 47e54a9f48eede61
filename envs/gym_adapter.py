"""`gymnasium.Env` over a role's functional core (registered as cascade/*-v0).

One jitted call per `reset` / `step` (`envs.kernel.SingleProgram`: key split, the core's
auto-resetting step, observation, reward and info together, compiled once per role
configuration and shared by every instance). The state stays on the device, packed into
a few flat arrays and donated to the next step; what Python reads (observation, reward,
flags, info) comes back packed, with one device-to-host transfer per call.
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


def _host_reset(obs, state):
    """What `CascadeEnv.reset` reads from the device (one transfer)."""
    sim = state.sim
    return obs, sim.px.mark, sim.px.index[0], sim.px.last[0], sim.acct.pos[0], state.equity[0]


def _host_step(obs, state, reward, terminated, truncated, info):
    """What `CascadeEnv.step` reads from the device (one transfer)."""
    return (
        info["final_observation"],
        reward,
        terminated,
        truncated,
        {key: info[key] for key in INFO_KEYS},
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
        self._carry = None  # packed (EnvState, PRNG key) on the device
        self._prog = None
        self._history = History(render_window)

    # ------------------------------------------------------------ gymnasium API

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        seed_int = int(self.np_random.integers(0, 2**31 - 1))
        prog, pflat = self.kernel.single(_host_reset, _host_step)
        self._carry, host = prog.reset(np.int32(seed_int), pflat)
        self._prog = prog
        obs, mark, index, spot, pos, eq = prog.reset_host_layout.unpack(jax.device_get(host))
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
        if self._carry is None:
            raise gymnasium.error.ResetNeeded("call reset() before step()")
        act = validate_actions(action, self.action_space.shape, f"{self.core.role} step")
        prog, pflat = self.kernel.single(_host_reset, _host_step)
        if prog is not self._prog:  # kernel.params replaced by params of another layout
            if prog.carry_layout != self._prog.carry_layout:
                raise gymnasium.error.ResetNeeded("params changed shapes: call reset()")
            self._prog = prog
        # One call: key split, action padding, tick with auto-reset, observation, reward,
        # info; the state stays on the device (donated), one transfer of what is read.
        self._carry, host = prog.step(self._carry, self.kernel.pad_host(act), pflat)
        final_obs, reward, terminated, truncated, info_np = prog.step_host_layout.unpack(
            jax.device_get(host)
        )
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
        return None if self._carry is None else self._prog.state(self._carry)

    def set_state(self, state) -> None:
        """Replace the core state (tests, scripted starts); the next `step` continues it.

        Raises:
            gymnasium.error.ResetNeeded: before the first `reset` (which seeds the keys).
        """
        if self._carry is None:
            raise gymnasium.error.ResetNeeded("call reset() before set_state()")
        self._carry = self._prog.with_state(self._carry, state)


class MarketMakerEnv(CascadeEnv):
    """`CascadeEnv` with role "market_maker" (cascade/MarketMaker-v0)."""

    default_role = "market_maker"


class ArbitrageurEnv(CascadeEnv):
    """`CascadeEnv` with role "arbitrageur" (cascade/Arbitrageur-v0)."""

    default_role = "arbitrageur"


class LeveragedTraderEnv(CascadeEnv):
    """`CascadeEnv` with role "leveraged_trader" (cascade/LeveragedTrader-v0)."""

    default_role = "leveraged_trader"
