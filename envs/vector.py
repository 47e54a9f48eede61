"""JAX-batched `gymnasium.vector.VectorEnv`: one jit-of-vmap call per step for the batch.

Params are always per env (stacked along a leading axis), so one compiled step serves any
batch of the same size and static dims: the same scenario everywhere, or a mix of
scenarios and variants. Autoreset happens in the same step (`AutoresetMode.SAME_STEP`):
a finished env's returned observation is already the first one of its next episode, the
finished episode's last observation is in `infos["final_obs"][i]` (an object array, None
for envs that did not finish, mask `infos["_final_obs"]`) and its step info in
`infos["final_info"]` (mask `infos["_final_info"]`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from envs import spaces
from envs.core import EnvParams, RoleEnv, batch_size_of, stack_params
from envs.distribution import PoolParams, pool_params
from envs.gym_adapter import INFO_KEYS
from envs.kernel import Kernel
from envs.roles import build_params, make_role, split_static, validate_actions
from jaxsim.config.distribution import is_distribution


def _per_env(value: Any, n: int, what: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{what} has {len(value)} entries for num_envs = {n}")
        return list(value)
    return [value] * n


class CascadeVectorEnv(gymnasium.vector.VectorEnv):
    """A batch of `num_envs` independent exchanges, each with one learner.

    Args:
        role: "market_maker", "arbitrageur" or "leveraged_trader" (or a `RoleEnv`).
        num_envs: batch size.
        scenario: one scenario name for all envs, or a sequence of `num_envs` names, or
            a scenario distribution (a name under configs/distributions/ or its YAML
            path): each env then draws its own member at every reset.
        variant: None, one variant, or a sequence of `num_envs` variants (None entries
            allowed).
        overrides: config overrides applied to every env.
        max_episode_steps: time limit (None = each scenario's horizon).
        params: ready `EnvParams`, unbatched (copied to every env), stacked with a
            leading axis of `num_envs`, a list of `num_envs` EnvParams, or a
            `envs.distribution.PoolParams` (a distribution's pool).
        dtype: float dtype of the exchange.
        quote_spot: market maker only.
        **settings: role settings, `notional_scale`, `min_equity_frac`.

    Raises:
        ValueError: scenarios whose static dims differ (they cannot share a batch), bad
            settings, or (in `step`) an action batch that is not float of shape
            (num_envs, A) or holds NaN/inf. Out-of-range actions are clipped to [-1, 1].
    """

    metadata: ClassVar[dict] = {"render_modes": [], "autoreset_mode": AutoresetMode.SAME_STEP}
    default_role: ClassVar[str] = "market_maker"

    def __init__(
        self,
        role: str | RoleEnv | None = None,
        num_envs: int = 1,
        scenario: str | Sequence[str] | None = None,
        variant: str | Sequence[str | None] | None = None,
        overrides: dict | None = None,
        *,
        max_episode_steps: int | None = None,
        params: EnvParams | Sequence[EnvParams] | None = None,
        dtype: Any = None,
        render_mode: str | None = None,
        **kwargs: Any,
    ):
        role = self.default_role if role is None else role
        if int(num_envs) < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if render_mode is not None:
            raise ValueError("the batched env does not render; use CascadeEnv(render_mode=...)")
        self.num_envs = int(num_envs)
        static, settings = split_static(role, kwargs)
        self.core = make_role(role, **static)
        self.params = self._batch_params(
            scenario, variant, overrides, max_episode_steps, dtype, params, settings
        )
        self.render_mode = None
        self.single_observation_space = spaces.to_gymnasium(self.core.observation_space())
        self.single_action_space = spaces.to_gymnasium(self.core.action_space())
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.obs_names = self.core.obs_names
        self.action_names = self.core.action_names
        self.kernel = Kernel(self.core, self.params, batched=True)
        self._state = None
        self._obs = None
        self._keys = None

    def _batch_params(self, scenario, variant, overrides, max_steps, dtype, params, settings):
        n = self.num_envs
        if params is None and isinstance(scenario, str) and is_distribution(scenario):
            # A scenario distribution: one pool shared by the batch, each env draws its
            # member at every reset (envs.distribution).
            if variant is not None:
                raise ValueError(f"'{scenario}' is a distribution: it takes no variant")
            pool = pool_params(self.core, scenario, overrides, max_steps, dtype, settings)
            self.scenarios = [pool.members.sim.name] * n
            return pool
        if isinstance(params, PoolParams):
            self.scenarios = [params.members.sim.name] * n
            return params
        if params is not None:
            if isinstance(params, (list, tuple)):
                plist = [
                    build_params(self.core, None, None, None, max_steps, None, p, settings)
                    for p in _per_env(params, n, "params")
                ]
                self.scenarios = [p.sim.name for p in plist]
                stacked = stack_params(plist)
            elif batch_size_of(params) is None:
                p = build_params(self.core, None, None, None, max_steps, None, params, settings)
                self.scenarios = [p.sim.name] * n
                stacked = stack_params([p] * n)
            else:
                if batch_size_of(params) != n:
                    raise ValueError(
                        f"stacked params hold {batch_size_of(params)} envs, num_envs = {n}"
                    )
                stacked = build_params(
                    self.core, None, None, None, max_steps, None, params, settings
                )
                self.scenarios = [stacked.sim.name] * n
        else:
            scen = _per_env(scenario, n, "scenario")
            vari = _per_env(variant, n, "variant")
            cache: dict[tuple, EnvParams] = {}
            plist = []
            for s, v in zip(scen, vari, strict=True):
                key = (s, v)
                if key not in cache:
                    cache[key] = build_params(
                        self.core, s, v, overrides, max_steps, dtype, None, settings
                    )
                plist.append(cache[key])
            self.scenarios = [p.sim.name for p in plist]
            stacked = stack_params(plist)
        return stacked

    # ------------------------------------------------------------ gymnasium API

    def _keys_from_seed(self, seed) -> jax.Array:
        """(num_envs, 2) per-env keys: each env owns a key stream, so an env's episode
        depends only on its own seed and actions."""
        n = self.num_envs
        if seed is None:
            if self._keys is None:
                entropy = np.random.SeedSequence().generate_state(1)[0]
                return jax.random.split(jax.random.PRNGKey(int(entropy)), n)
            return self._split(self._keys)[0]
        if isinstance(seed, (list, tuple, np.ndarray)):
            seeds = _per_env(list(seed), n, "seed")
            fresh = np.random.SeedSequence().generate_state(n)
            seeds = [int(fresh[i]) if s is None else int(s) for i, s in enumerate(seeds)]
            return jnp.stack([jax.random.PRNGKey(s) for s in seeds])
        return jax.random.split(jax.random.PRNGKey(int(seed)), n)

    @staticmethod
    def _split(keys: jax.Array) -> tuple[jax.Array, jax.Array]:
        both = jax.vmap(jax.random.split)(keys)
        return both[:, 0], both[:, 1]

    def reset(self, *, seed: int | Sequence[int] | None = None, options: dict | None = None):
        """Reset every env (or those in `options["reset_mask"]`, a (num_envs,) bool).

        `seed`: one int (per-env keys split from it), a sequence of num_envs ints (env i
        replays the same episode for the same seed and actions), or None (continue).
        """
        keys, reset_keys = self._split(self._keys_from_seed(seed))
        obs, state = self.kernel.reset(reset_keys)
        mask = None if options is None else options.get("reset_mask")
        if mask is not None and self._state is not None:
            mask = np.asarray(mask, bool)
            if mask.shape != (self.num_envs,):
                raise ValueError(f"reset_mask must have shape ({self.num_envs},), got {mask.shape}")
            m = jnp.asarray(mask)

            def sel(new, old):
                return jnp.where(m.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)

            state = jax.tree_util.tree_map(sel, state, self._state)
            obs = sel(obs, self._obs)
            keys = sel(keys, self._keys)
        self._keys = keys
        self._state = state
        self._obs = obs
        return np.array(jax.device_get(obs), np.float32), {}

    def step(self, actions):
        if self._state is None:
            raise gymnasium.error.ResetNeeded("call reset() before step()")
        act = validate_actions(actions, self.action_space.shape, f"{self.core.role} batch step")
        self._keys, keys = self._split(self._keys)
        obs, state, reward, terminated, truncated, info = self.kernel.step(keys, self._state, act)
        self._state = state
        self._obs = obs
        obs, final_obs, reward, terminated, truncated, info_np = jax.device_get(
            (
                obs,
                info["final_observation"],
                reward,
                terminated,
                truncated,
                {key: info[key] for key in INFO_KEYS},
            )
        )
        done = terminated | truncated
        ones = np.ones(self.num_envs, bool)
        infos: dict[str, Any] = {}
        for key, val in info_np.items():
            infos[key] = np.array(val)
            infos["_" + key] = ones
        if done.any():
            fo = np.full(self.num_envs, None, dtype=object)
            for i in np.flatnonzero(done):
                fo[i] = np.array(final_obs[i], np.float32)
            infos["final_obs"] = fo
            infos["_final_obs"] = done
            final_info = {}
            for key, val in info_np.items():
                final_info[key] = val
                final_info["_" + key] = done
            infos["final_info"] = final_info
            infos["_final_info"] = done
        # Host copies are writable (device_get may return read-only views).
        return (
            np.array(obs, np.float32),
            np.array(reward, np.float32),
            np.array(terminated, bool),
            np.array(truncated, bool),
            infos,
        )

    @property
    def state(self):
        """The batched core `EnvState` (leading axis num_envs)."""
        return self._state

    def set_state(self, state) -> None:
        """Replace the batched core state; the next `step` continues from it."""
        self._state = state


class MarketMakerVectorEnv(CascadeVectorEnv):
    """`CascadeVectorEnv` with role "market_maker" (make_vec of cascade/MarketMaker-v0)."""

    default_role = "market_maker"


class ArbitrageurVectorEnv(CascadeVectorEnv):
    """`CascadeVectorEnv` with role "arbitrageur"."""

    default_role = "arbitrageur"


class LeveragedTraderVectorEnv(CascadeVectorEnv):
    """`CascadeVectorEnv` with role "leveraged_trader"."""

    default_role = "leveraged_trader"
