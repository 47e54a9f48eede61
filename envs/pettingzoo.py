"""PettingZoo `ParallelEnv`: several learners of one role share one exchange.

Learner i is account i. By default every learner starts with a copy of the scenario's
account 0 (`agent`): the copies are inserted after it and the account axis grows, so the
scenario's background traders keep their accounts and behaviours. All learners' orders
go into the same tick, learner 0's rows first.
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium
import jax
import numpy as np
from pettingzoo import ParallelEnv

from envs import spaces
from envs.core import EnvParams, RoleEnv
from envs.gym_adapter import INFO_KEYS
from envs.kernel import Kernel
from envs.render import History, render_frame
from envs.roles import build_params, make_role, split_static, validate_actions

# Step-info entries with one value per learner (the rest are market-wide).
PER_AGENT = ("equity", "pnl", "penalty", "liquidated", "position", "fees")


class CascadeParallelEnv(ParallelEnv):
    """`n_agents` learners of one role on one exchange (PettingZoo parallel API).

    Args:
        role: "market_maker", "arbitrageur" or "leveraged_trader".
        n_agents: number of learners, agents "agent_0" .. "agent_{n-1}" = accounts 0..n-1.
        scenario, variant, overrides, dtype: as in `jaxsim.load_scenario`.
        max_episode_steps: time limit (None = the scenario's horizon).
        params: ready `EnvParams` built for this role and n_agents (then accounts
            0..n-1 are used as the scenario defines them).
        render_mode: None or "rgb_array" (agent_0's view).
        **kwargs: `quote_spot` (market maker) and role settings.

    Each agent's observation, action, reward and termination are the role's (see its
    docstring). A liquidated agent is terminated and leaves `agents`; its account stays
    on the exchange without orders. All agents are truncated at the time limit. Actions
    must be float arrays of the action shape without NaN/inf (ValueError otherwise);
    values outside [-1, 1] are clipped. Agents missing from the action dict submit
    nothing that step.
    """

    metadata: ClassVar[dict] = {
        "name": "cascade_v0",
        "render_modes": ["rgb_array"],
        "is_parallelizable": True,
        "render_fps": 10,
    }

    def __init__(
        self,
        role: str = "market_maker",
        n_agents: int = 2,
        scenario: str | None = None,
        variant: str | None = None,
        overrides: dict | None = None,
        *,
        max_episode_steps: int | None = None,
        params: EnvParams | None = None,
        dtype: Any = None,
        render_mode: str | None = None,
        render_window: int = 300,
        **kwargs: Any,
    ):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        static, settings = split_static(role, kwargs)
        self.core: RoleEnv = make_role(role, n_agents=n_agents, **static)
        params = build_params(
            self.core, scenario, variant, overrides, max_episode_steps, dtype, params, settings
        )
        self.scenario = params.sim.name
        self.params = params
        self.kernel = Kernel(self.core, params)
        self.render_mode = render_mode
        self.possible_agents = [f"agent_{i}" for i in range(self.core.n_agents)]
        self.agents: list[str] = []
        self._index = {a: i for i, a in enumerate(self.possible_agents)}
        n_obs = len(self.core.obs_names)
        self._obs_space = spaces.to_gymnasium(spaces.Box(-10.0, 10.0, (n_obs,)))
        self._act_space = spaces.to_gymnasium(spaces.Box(-1.0, 1.0, (self.core.num_actions,)))
        self._obs_spaces = {a: self._obs_space for a in self.possible_agents}
        self._act_spaces = {
            a: gymnasium.spaces.Box(-1.0, 1.0, self._act_space.shape, np.float32)
            for a in self.possible_agents
        }
        self.obs_names = self.core.obs_names
        self.action_names = self.core.action_names
        self._state = None
        self._key = None
        self._np_random = None
        self._history = History(render_window)

    def observation_space(self, agent: str) -> gymnasium.spaces.Box:
        return self._obs_spaces[agent]

    def action_space(self, agent: str) -> gymnasium.spaces.Box:
        return self._act_spaces[agent]

    def reset(self, seed: int | None = None, options: dict | None = None):
        if seed is not None or self._np_random is None:
            self._np_random, _ = gymnasium.utils.seeding.np_random(seed)
        seed_int = int(self._np_random.integers(0, 2**31 - 1))
        k_reset, self._key = jax.random.split(jax.random.PRNGKey(seed_int))
        obs, self._state = self.kernel.reset(k_reset)
        obs = np.array(jax.device_get(obs), np.float32)
        self.agents = list(self.possible_agents)
        self._history.clear()
        return (
            {a: obs[i].copy() for i, a in enumerate(self.agents)},
            {a: {} for a in self.agents},
        )

    def step(self, actions: dict[str, Any]):
        if self._state is None:
            raise gymnasium.error.ResetNeeded("call reset() before step()")
        n, na = self.core.n_agents, self.core.num_actions
        batch = np.zeros((n, na), np.float32)
        for agent, act in actions.items():
            if agent not in self._index:
                raise ValueError(f"unknown agent {agent!r}; agents: {self.possible_agents}")
            batch[self._index[agent]] = validate_actions(act, (na,), f"{agent} step")
        self._key, k = jax.random.split(self._key)
        _, self._state, reward, terminated, truncated, info = self.kernel.step(
            k, self._state, batch
        )
        final_obs, reward, terminated, truncated, info_np = jax.device_get(
            (
                info["final_observation"],
                reward,
                terminated,
                truncated,
                {key: info[key] for key in INFO_KEYS},
            )
        )
        if n == 1:  # the core squeezes a single learner's axis
            final_obs = final_obs[None]
            reward, terminated, truncated = (
                np.atleast_1d(x) for x in (reward, terminated, truncated)
            )
            info_np = {k: (np.atleast_1d(v) if k in PER_AGENT else v) for k, v in info_np.items()}
        self._history.append({k: np.asarray(v)[0] if np.ndim(v) else v for k, v in info_np.items()})
        live = list(self.agents)
        obs, rew, term, trunc, infos = {}, {}, {}, {}, {}
        for a in live:
            i = self._index[a]
            obs[a] = np.array(final_obs[i], np.float32)
            rew[a] = float(reward[i])
            term[a] = bool(terminated[i])
            trunc[a] = bool(truncated[i])
            infos[a] = {
                k: (np.asarray(v)[i].item() if k in PER_AGENT else np.asarray(v).item())
                for k, v in info_np.items()
                if k != "order_reason"
            }
        self.agents = [a for a in live if not (term[a] or trunc[a])]
        return obs, rew, term, trunc, infos

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        return render_frame(self._history, f"{self.core.role} x{self.core.n_agents} (agent_0)")

    def close(self) -> None:
        pass

    @property
    def core_state(self):
        """The core's `EnvState` of all learners (`state()` is PettingZoo's global obs)."""
        return self._state

    def set_core_state(self, state) -> None:
        """Replace the core state; the next `step` continues from it."""
        self._state = state
