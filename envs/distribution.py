"""Training on a scenario distribution: each env of a batch draws its own member at reset.

A distribution (`configs/distributions/<name>.yaml`, `jaxsim.config.distribution`) is
loaded into a pool of M concrete members; their `EnvParams` are stacked along a leading
axis (`PoolParams.members`, static dims equal: the loader pads the capacity dims) with the
members' probabilities. `DistributionEnv` wraps a role env: `reset` draws a member
`jax.random.choice(fold_in(key, SALT), M, p=probs)` and resets the role env with that
member's params (gathered from the pool); the member index lives in the state
(`PoolState.member`) and every step runs with its member's params; an episode that ends
auto-resets into a freshly drawn member. So one compiled program (the pool is a traced
argument, shared by the batch) trains on the whole distribution.

The role env's reset and step get the same keys as they would alone: an env of the batch
equals its member run on its own with the same keys (tests/envs/test_distribution.py).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from envs.core import EnvParams, EnvState, RoleEnv, auto_reset_batch, stack_params

Array = jax.Array
SALT = 0x5CE7  # folded into the reset key for the member draw


@struct.dataclass
class PoolParams:
    """members: EnvParams stacked along a leading axis M; probs: (M,) member probabilities."""

    members: EnvParams
    probs: Array

    @property
    def size(self) -> int:
        return int(np.shape(self.probs)[0])


@struct.dataclass
class PoolState:
    env: EnvState
    member: Array  # () int32 index into the pool


def is_pool(params: Any) -> bool:
    return isinstance(params, PoolParams)


def member_params(pool: PoolParams, m: Array) -> EnvParams:
    """The params of member `m` (traced index) of the pool."""
    return jax.tree_util.tree_map(lambda x: x[m], pool.members)


def draw_member(key: Array, pool: PoolParams) -> Array:
    m = jax.random.choice(
        jax.random.fold_in(key, SALT), pool.probs.shape[0], p=pool.probs.astype(jnp.float32)
    )
    return m.astype(jnp.int32)


def pool_params(
    core: RoleEnv,
    distribution,
    overrides: dict | None = None,
    max_episode_steps: int | None = None,
    dtype: Any = None,
    settings: dict | None = None,
) -> PoolParams:
    """`PoolParams` of a distribution (name, YAML path or a loaded `Distribution`) for a
    role: one `core.make_params` per member (its overrides, then `overrides` on top)."""
    from jaxsim.config.distribution import Distribution, load_distribution

    dist = (
        distribution if isinstance(distribution, Distribution) else load_distribution(distribution)
    )
    plist = [
        core.make_params(
            m.scenario,
            m.variant,
            {**m.overrides, **(overrides or {})},
            dtype=dtype,
            max_steps_in_episode=max_episode_steps,
            **(settings or {}),
        )
        for m in dist.members
    ]
    members = stack_params(plist)
    members = members.replace(sim=members.sim.replace(name=dist.name))
    probs = jnp.asarray(dist.probs / dist.probs.sum(), members.sim.dt.dtype)
    return PoolParams(members=members, probs=probs)


class DistributionEnv:
    """A role env whose params are a `PoolParams` (gymnax API, auto-reset, `step_batch`
    with the pool shared by the batch)."""

    def __init__(self, inner: RoleEnv):
        self.inner = inner

    def __hash__(self) -> int:
        return hash((DistributionEnv, self.inner))

    def __eq__(self, other) -> bool:
        return isinstance(other, DistributionEnv) and self.inner == other.inner

    def __repr__(self) -> str:
        return f"DistributionEnv({self.inner!r})"

    def __getattr__(self, name: str):
        # role, n_agents, obs_names, action_names, num_actions, accounts, ...
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def observation_space(self, params=None):
        return self.inner.observation_space()

    def action_space(self, params=None):
        return self.inner.action_space()

    def reset_env(self, key: Array, params: PoolParams) -> tuple[Array, PoolState]:
        m = draw_member(key, params)
        obs, st = self.inner.reset_env(key, member_params(params, m))
        return obs, PoolState(env=st, member=m)

    def reset(self, key: Array, params: PoolParams) -> tuple[Array, PoolState]:
        return self.reset_env(key, params)

    def step_env(self, key: Array, state: PoolState, action: Array, params: PoolParams):
        p = member_params(params, state.member)
        obs, st, reward, terminated, info = self.inner.step_env(key, state.env, action, p)
        info["member"] = state.member
        return obs, state.replace(env=st), reward, terminated, info

    def _done(self, state: PoolState, params: PoolParams, terminated: Array):
        limit = state.env.time >= member_params(params, state.member).max_steps_in_episode
        return limit & ~terminated, jnp.all(~state.env.alive | limit)

    def step(self, key: Array, state: PoolState, action: Array, params: PoolParams):
        """gymnax step with auto-reset into a freshly drawn member (as `RoleEnv.step`)."""
        k_step, k_reset = jax.random.split(key)
        obs_st, st, reward, terminated, info = self.step_env(k_step, state, action, params)
        truncated, done = self._done(st, params, terminated)
        obs_re, st_re = self.reset_env(k_reset, params)
        state = jax.tree_util.tree_map(lambda r, s: jax.lax.select(done, r, s), st_re, st)
        obs = jax.lax.select(done, obs_re, obs_st)
        info["final_observation"] = obs_st
        info["done"] = done
        return obs, state, reward, terminated, truncated, info

    def step_batch(self, keys, state, action, params: PoolParams, per_env_params: bool = False):
        """`jax.vmap(self.step)` with the pool shared, fresh episodes built only on steps
        where some env finished (as `RoleEnv.step_batch`)."""
        if per_env_params:
            raise ValueError("a DistributionEnv batch shares one pool (per_env_params=False)")
        split = jax.vmap(jax.random.split)(keys)
        k_step, k_reset = split[:, 0], split[:, 1]
        obs_st, st, reward, terminated, info = jax.vmap(self.step_env, in_axes=(0, 0, 0, None))(
            k_step, state, action, params
        )
        truncated, done = jax.vmap(self._done, in_axes=(0, None, 0))(st, params, terminated)

        reset_batch = jax.vmap(self.reset_env, in_axes=(0, None))
        obs, new_state = auto_reset_batch(reset_batch, k_reset, params, done, obs_st, st)
        info["final_observation"] = obs_st
        info["done"] = done
        return obs, new_state, reward, terminated, truncated, info
