"""stable-baselines3 `VecEnv` over the whole JAX batch (no subprocesses, no per-env envs).

Importing this module imports stable-baselines3 (and torch); `import envs` does not.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices

from envs.core import RoleEnv
from envs.vector import CascadeVectorEnv

# Per-env scalars copied into each SB3 info dict.
SB3_INFO_KEYS = ("equity", "pnl", "penalty", "liquidated", "position", "time")


class CascadeSB3VecEnv(VecEnv):
    """SB3 `VecEnv` on a `CascadeVectorEnv` (one jitted batched step per `step_wait`).

    Finished envs reset in the same step (SB3's convention): their returned observation is
    the next episode's first, `infos[i]["terminal_observation"]` is the last one of the
    finished episode and `infos[i]["TimeLimit.truncated"]` is True when it ended by the
    time limit and not by liquidation.

    Args:
        role: role name or `RoleEnv` (ignored when `venv` is given).
        num_envs: batch size (ignored when `venv` is given).
        venv: an existing `CascadeVectorEnv` to wrap.
        **kwargs: `CascadeVectorEnv` arguments (scenario, variant, overrides, params,
            max_episode_steps, settings...).
    """

    def __init__(
        self,
        role: str | RoleEnv = "market_maker",
        num_envs: int = 1,
        *,
        venv: CascadeVectorEnv | None = None,
        **kwargs: Any,
    ):
        # The backend must exist before VecEnv.__init__ (it calls get_attr("render_mode")).
        self.venv = venv if venv is not None else CascadeVectorEnv(role, num_envs, **kwargs)
        self.render_mode = None
        self._actions: np.ndarray | None = None
        super().__init__(
            self.venv.num_envs, self.venv.single_observation_space, self.venv.single_action_space
        )

    # ------------------------------------------------------------ VecEnv API

    def reset(self) -> np.ndarray:
        seeds = [s for s in self._seeds]
        seed = None if all(s is None for s in seeds) else seeds
        options = self._options[0] if self._options and self._options[0] else None
        obs, _ = self.venv.reset(seed=seed, options=options)
        self._reset_seeds()
        self._reset_options()
        self.reset_infos = [{} for _ in range(self.num_envs)]
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions)

    def step_wait(self):
        obs, reward, terminated, truncated, infos = self.venv.step(self._actions)
        done = terminated | truncated
        per_env: list[dict[str, Any]] = [
            {k: infos[k][i].item() for k in SB3_INFO_KEYS} for i in range(self.num_envs)
        ]
        for i in np.flatnonzero(done):
            per_env[i]["terminal_observation"] = infos["final_obs"][i]
            per_env[i]["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
        return obs, reward, done, per_env

    def close(self) -> None:
        self.venv.close()

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        return [getattr(self.venv, attr_name) for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        setattr(self.venv, attr_name, value)

    def env_method(
        self, method_name: str, *method_args, indices: VecEnvIndices = None, **method_kwargs
    ) -> list[Any]:
        # There is one batched backend: the method runs once, its result is shared.
        out = getattr(self.venv, method_name)(*method_args, **method_kwargs)
        return [out for _ in self._get_indices(indices)]

    def env_is_wrapped(self, wrapper_class: type, indices: VecEnvIndices = None) -> list[bool]:
        return [False for _ in self._get_indices(indices)]

    def get_images(self) -> Sequence[np.ndarray | None]:
        return [None for _ in range(self.num_envs)]
