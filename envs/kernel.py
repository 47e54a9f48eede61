"""What the adapters run: one compiled step shared by all fixed-shape roles.

Compiling the exchange step dominates an env's start-up (tens of seconds on a small CPU),
and the three roles differ only in small pieces (action decoding, four observation
entries, the penalty). `FusedRoles` is a `RoleEnv` that holds all three and picks one
with `lax.switch` on a traced role index in its params, so the gymnasium, vector, SB3 and
PettingZoo adapters of every role share one executable per (single / batched, number of
learners, static dims). Under vmap with per-env params the switch becomes a select, so a
batch could even mix roles.

A role is fused when its action has at most `FUSED_ACTIONS` entries, it uses
`FUSED_ORDERS` order rows per learner and has `FUSED_ROLE_OBS` role observation entries
(market maker with `quote_spot=True` does not; it runs its own compiled step). Actions are
zero-padded to `FUSED_ACTIONS`; the observation vector is the role's own (same layout).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from envs.arbitrageur import Arbitrageur, ArbitrageurSettings
from envs.core import (
    EnvParams,
    EnvState,
    RoleEnv,
    batch_size_of,
    jitted,
    jitted_batch,
    with_shared_name,
)
from envs.distribution import DistributionEnv, is_pool
from envs.leveraged_trader import LeveragedTrader, LeveragedTraderSettings
from envs.market_maker import MarketMaker, MarketMakerSettings
from jaxsim.types import Orders

Array = jax.Array

FUSED_MEMBERS: tuple[type[RoleEnv], ...] = (MarketMaker, Arbitrageur, LeveragedTrader)
FUSED_ACTIONS = 5
FUSED_ORDERS = 4
FUSED_ROLE_OBS = 4


@struct.dataclass
class FusedSettings:
    """Settings of every member role plus the index of the one that acts."""

    role_id: Array  # () int32 index into FUSED_MEMBERS
    market_maker: MarketMakerSettings
    arbitrageur: ArbitrageurSettings
    leveraged_trader: LeveragedTraderSettings


class FusedRoles(RoleEnv):
    """The three roles behind one step; `params.role.role_id` picks the acting one.

    Observation: the acting role's vector (47 common + 4 role entries, named `role_0..3`
    here). Action: float32 (5,), the acting role reads its first A entries.
    """

    role = "fused"
    settings_cls = FusedSettings
    action_names = tuple(f"a{i}" for i in range(FUSED_ACTIONS))
    orders_per_agent = FUSED_ORDERS
    role_obs = tuple((f"role_{i}", "the acting role's entry") for i in range(FUSED_ROLE_OBS))

    def __init__(self, n_agents: int = 1):
        super().__init__(n_agents)
        self.members = tuple(cls(n_agents) for cls in FUSED_MEMBERS)

    def _member_params(self, params: EnvParams, member: RoleEnv) -> EnvParams:
        return params.replace(role=getattr(params.role, member.role))

    def decode_one(
        self, action: Array, state: EnvState, params: EnvParams, account: Array
    ) -> Orders:
        def branch(m):
            def f(action, state, params, account):
                p = self._member_params(params, m)
                return m.decode_one(action[: m.num_actions], state, p, account)

            return f

        branches = [branch(m) for m in self.members]
        return jax.lax.switch(params.role.role_id, branches, action, state, params, account)

    def role_features(
        self, state: EnvState, params: EnvParams, account: Array, equity0: Array
    ) -> dict[str, Array]:
        dtype = state.sim.px.mark.dtype

        def branch(m):
            def f(state, params, account, equity0):
                d = m.role_features(state, self._member_params(params, m), account, equity0)
                return jnp.stack([jnp.asarray(d[n], dtype) for n, _ in m.role_obs])

            return f

        branches = [branch(m) for m in self.members]
        v = jax.lax.switch(params.role.role_id, branches, state, params, account, equity0)
        return {f"role_{i}": v[i] for i in range(FUSED_ROLE_OBS)}

    def penalty(self, state: EnvState, params: EnvParams, account: Array, equity0: Array) -> Array:
        dtype = state.sim.px.mark.dtype

        def branch(m):
            def f(state, params, account, equity0):
                p = self._member_params(params, m)
                return jnp.asarray(m.penalty(state, p, account, equity0), dtype)

            return f

        branches = [branch(m) for m in self.members]
        return jax.lax.switch(params.role.role_id, branches, state, params, account, equity0)


def fusable(core: RoleEnv) -> bool:
    """Whether `core` can run inside `FusedRoles`."""
    return (
        type(core) in FUSED_MEMBERS
        and core.num_actions <= FUSED_ACTIONS
        and core.orders_per_agent == FUSED_ORDERS
        and len(core.role_obs) == FUSED_ROLE_OBS
    )


def fuse_params(core: RoleEnv, params: EnvParams) -> EnvParams:
    """`params` of a member role as `FusedRoles` params (other members get defaults)."""
    idx = FUSED_MEMBERS.index(type(core))
    dtype = params.sim.dt.dtype
    n = batch_size_of(params)
    shape = () if n is None else (n,)
    members: dict[str, Any] = {}
    for j, cls in enumerate(FUSED_MEMBERS):
        if j == idx:
            members[cls.role] = params.role
        else:
            s = cls.settings_cls.create(dtype)
            members[cls.role] = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, shape), s)
    role = FusedSettings(role_id=jnp.full(shape, idx, jnp.int32), **members)
    return params.replace(role=role)


class Kernel:
    """A role's compiled reset/step as the adapters call them.

    Args:
        core: the role env (its obs_names and action shape are what users see).
        params: the role's `EnvParams` (stacked with a leading axis when `batched`).
        batched: vmapped over a leading env axis with per-env params.

    Attributes:
        env: the `RoleEnv` actually compiled (`FusedRoles` or `core` itself).
        params: the params it runs with (fused if needed, under the shared name).
    """

    def __init__(self, core: RoleEnv, params: EnvParams, batched: bool = False):
        self.core = core
        self.batched = batched
        if is_pool(params):
            # A scenario distribution: the pool is shared by the batch, each env draws
            # its member at reset (envs.distribution).
            inner: RoleEnv = FusedRoles(core.n_agents) if fusable(core) else core
            members = fuse_params(core, params.members) if fusable(core) else params.members
            self.env = DistributionEnv(inner)
            self.params = params.replace(members=with_shared_name(members))
            self.reset_fn, self.step_fn = (
                jitted_batch(self.env, False) if batched else jitted(self.env)
            )
            self._pad = inner.num_actions - core.num_actions
            return
        if fusable(core):
            self.env: RoleEnv = FusedRoles(core.n_agents)
            run = fuse_params(core, params)
        else:
            self.env = core
            run = params
        self.params = with_shared_name(run)
        self.reset_fn, self.step_fn = jitted_batch(self.env, True) if batched else jitted(self.env)
        self._pad = self.env.num_actions - core.num_actions

    def set_max_steps(self, n: int) -> None:
        """Change the time limit (a traced value: no recompilation)."""
        if is_pool(self.params):
            m = self.params.members
            shape = np.shape(m.max_steps_in_episode)
            m = m.replace(max_steps_in_episode=jnp.full(shape, int(n), jnp.int32))
            self.params = self.params.replace(members=m)
            return
        shape = np.shape(self.params.max_steps_in_episode)
        self.params = self.params.replace(max_steps_in_episode=jnp.full(shape, int(n), jnp.int32))

    def pad(self, action: Any) -> Array:
        """The role's action(s) zero-padded to the compiled action size."""
        action = jnp.asarray(action)
        if self._pad == 0:
            return action
        width = [(0, 0)] * (action.ndim - 1) + [(0, self._pad)]
        return jnp.pad(action, width)

    def reset(self, key: Array, params: EnvParams | None = None):
        """(obs, state) with the kernel's params (or the given run params)."""
        return self.reset_fn(key, self.params if params is None else params)

    def step(self, key: Array, state: EnvState, action: Any, params: EnvParams | None = None):
        """The 6-tuple step (auto-reset) of the role, action in the role's shape."""
        return self.step_fn(key, state, self.pad(action), self.params if params is None else params)
