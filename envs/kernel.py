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

import functools
from collections.abc import Callable
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

    Observation: the acting role's vector (49 common + 4 role entries, named `role_0..3`
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
        self._packed = None

    def single(self, host_reset: Callable, host_step: Callable) -> tuple[SingleProgram, tuple]:
        """The single-env `SingleProgram` for these params and the params packed for it
        (packed again only when `self.params` is replaced)."""
        if self.batched:
            raise ValueError("single() is for an unbatched kernel")
        if self._packed is None or self._packed[0] is not self.params:
            layout = Layout(self.params)
            flat = tuple(jax.device_put(x) for x in layout.pack_host(self.params))
            self._packed = (self.params, layout, flat)
        _, layout, flat = self._packed
        return single_program(self.env, layout, host_reset, host_step), flat

    def pad_host(self, action: np.ndarray) -> np.ndarray:
        """A role's action zero-padded to the compiled action size, in NumPy."""
        if self._pad == 0:
            return action
        width = [(0, 0)] * (action.ndim - 1) + [(0, self._pad)]
        return np.pad(action, width)

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


# ============================================================== single-env fast path


class Layout:
    """Static layout of a pytree packed into one flat array per dtype.

    A jitted call pays per argument and, more, per output leaf (about 1-2 us each on a
    CPU): an `EnvState` has ~80 leaves and `EnvParams` ~120, a whole exchange tick at
    batch 1 a few hundred us. Packed, a state is 3-4 arrays. `pack` runs on JAX arrays
    (inside jit or eagerly); `unpack` on JAX arrays or on NumPy arrays (host side: views,
    no copies). Hashable, so jitted functions can be cached per layout.
    """

    def __init__(self, tree: Any):
        leaves, self.treedef = jax.tree_util.tree_flatten(tree)
        dts = {np.dtype(x.dtype) for x in leaves}
        self.dtypes: tuple[np.dtype, ...] = tuple(sorted(dts, key=lambda d: d.str))
        offsets = dict.fromkeys(self.dtypes, 0)
        slots = []
        for x in leaves:
            d = np.dtype(x.dtype)
            shape = tuple(int(n) for n in np.shape(x))
            slots.append((self.dtypes.index(d), offsets[d], int(np.prod(shape)), shape))
            offsets[d] += slots[-1][2]
        self.slots: tuple[tuple[int, int, int, tuple[int, ...]], ...] = tuple(slots)
        self.sizes = tuple(offsets[d] for d in self.dtypes)

    def _key(self):
        return (self.treedef, self.dtypes, self.slots)

    def __hash__(self) -> int:
        return hash(self._key())

    def __eq__(self, other) -> bool:
        return isinstance(other, Layout) and self._key() == other._key()

    def pack(self, tree: Any) -> tuple[Array, ...]:
        """One flat array per dtype (in `self.dtypes` order)."""
        leaves = self.treedef.flatten_up_to(tree)
        groups: list[list[Array]] = [[] for _ in self.dtypes]
        for (g, _, _, _), x in zip(self.slots, leaves, strict=True):
            groups[g].append(jnp.ravel(jnp.asarray(x, self.dtypes[g])))
        return tuple(
            jnp.concatenate(xs) if xs else jnp.zeros((0,), d)
            for xs, d in zip(groups, self.dtypes, strict=True)
        )

    def pack_host(self, tree: Any) -> tuple[np.ndarray, ...]:
        """`pack` in NumPy (on the host, no dispatches)."""
        leaves = self.treedef.flatten_up_to(tree)
        groups: list[list[np.ndarray]] = [[] for _ in self.dtypes]
        for (g, _, _, _), x in zip(self.slots, leaves, strict=True):
            groups[g].append(np.asarray(x, self.dtypes[g]).reshape(-1))
        return tuple(
            np.concatenate(xs) if xs else np.zeros((0,), d)
            for xs, d in zip(groups, self.dtypes, strict=True)
        )

    def unpack(self, flat: tuple) -> Any:
        """The pytree back from `pack`'s arrays (JAX or NumPy)."""
        leaves = [flat[g][o : o + n].reshape(shape) for g, o, n, shape in self.slots]
        return self.treedef.unflatten(leaves)


@functools.cache
def _packers(layout: Layout):
    """(jit(pack), jit(unpack)) of a layout (for reading / replacing a packed state)."""
    return jax.jit(layout.pack), jax.jit(layout.unpack)


class SingleProgram:
    """One jitted call per single-env reset / step, with small packed inputs and outputs.

    `reset(seed, params)` and `step(carry, action, params)` return `(carry, host)`: the
    carry is the packed (EnvState, PRNG key) that stays on the device (donated to the next
    step), `host` the packed pytree the Python side needs (`host_reset(obs, state)` /
    `host_step(obs, state, reward, terminated, truncated, info)`), fetched with one
    `jax.device_get` and read with `host_layout(...).unpack` (NumPy views). Key handling
    is that of the adapters: reset splits `PRNGKey(seed)` into (reset key, carried key),
    each step splits the carried key into (next carried key, step key). The action is the
    compiled env's (`Kernel.pad_host` pads a role's). Built once per (env, params layout,
    host functions) by `single_program`, so the fused roles share one program.
    """

    def __init__(
        self,
        env: RoleEnv,
        params_layout: Layout,
        host_reset: Callable,
        host_step: Callable,
    ):
        self.env = env
        self.params_layout = params_layout
        flat_shape = tuple(
            jax.ShapeDtypeStruct((n,), d)
            for n, d in zip(params_layout.sizes, params_layout.dtypes, strict=True)
        )
        p_shape = jax.eval_shape(params_layout.unpack, flat_shape)
        key0 = jax.ShapeDtypeStruct((2,), jnp.uint32)

        def reset_tree(seed, params):
            k_reset, key = jax.random.split(jax.random.PRNGKey(seed))
            obs, state = env.reset(k_reset, params)
            return (state, key), host_reset(obs, state)

        def step_tree(state, key, action, params):
            key, k = jax.random.split(key)
            out = env.step(k, state, action, params)
            return (out[1], key), host_step(*out)

        (carry_shape, host_r) = jax.eval_shape(
            reset_tree, jax.ShapeDtypeStruct((), jnp.int32), p_shape
        )
        self.carry_layout = Layout(carry_shape)
        state_shape = carry_shape[0]
        act = jax.ShapeDtypeStruct(env.action_space().shape, jnp.float32)
        _, host_s = jax.eval_shape(step_tree, state_shape, key0, act, p_shape)
        self.reset_host_layout = Layout(host_r)
        self.step_host_layout = Layout(host_s)
        pl, cl = params_layout, self.carry_layout
        rl, sl = self.reset_host_layout, self.step_host_layout

        def reset(seed, pflat):
            carry, host = reset_tree(seed, pl.unpack(pflat))
            return cl.pack(carry), rl.pack(host)

        def step(cflat, action, pflat):
            state, key = cl.unpack(cflat)
            carry, host = step_tree(state, key, action, pl.unpack(pflat))
            return cl.pack(carry), sl.pack(host)

        self.reset = jax.jit(reset)
        self.step = jax.jit(step, donate_argnums=0)

    def state(self, carry: tuple) -> EnvState:
        """The `EnvState` of a carry (fresh arrays)."""
        return _packers(self.carry_layout)[1](carry)[0]

    def with_state(self, carry: tuple, state: EnvState) -> tuple:
        """`carry` with its state replaced (the PRNG key kept)."""
        key = _packers(self.carry_layout)[1](carry)[1]
        return _packers(self.carry_layout)[0]((state, key))


@functools.cache
def single_program(
    env: RoleEnv, params_layout: Layout, host_reset: Callable, host_step: Callable
) -> SingleProgram:
    """The `SingleProgram` of a configuration, built once and shared by adapters."""
    return SingleProgram(env, params_layout, host_reset, host_step)
