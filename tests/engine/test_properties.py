"""Property tests over random order flows and shocks (hypothesis).

Invariants: every asset is conserved across accounts, liquidity provider, outside world,
fees, insurance fund, book reserves and transfers in flight, the USDT ledger counting the
bad debt written off (`SimState.bad_debt`) explicitly; the fund's USDT is negative only
while its marked equity backs it; long OI = short OI; nothing
becomes NaN/inf whatever the orders (garbage included) or the shock; a vmapped batch equals
the same envs run one by one; the same key gives the same trajectory; the jitted rollout
of `step` traces and compiles once whatever the values.

Tolerance: float32 sums of ~1e8-sized ledgers carry rounding of a few 1e-7 relative per
operation, so conservation is asserted at 2e-6 of the ledger's gross size in float32 and at
1e-10 in the x64 audit run.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import TESTBED

import jaxsim
from jaxsim.types import KIND_POST_ONLY, N_KINDS, N_MARKETS, REJ_WOULD_TAKE, Orders

N_TICKS = 30
K = 3
OVERRIDES = {
    "dims": {"n_accounts": 10, "n_levels": 32, "max_orders": K, "cascade_rounds": 2},
    "markets": {"tick_size": {"spot": 100.0, "perp": 100.0, "stable": 0.001, "lst": 100.0}},
    "accounts": {
        "users": [
            {"name": "agent", "usdt": 200000.0, "base": 1.0, "stable": 50000.0},
            {"name": "long", "usdt": 30000.0, "position": 3.0, "leverage": 20},
            {"name": "short", "usdt": 30000.0, "position": -3.0, "leverage": 20},
            {
                "name": "iso_long",
                "usdt": 5000.0,
                "position": 1.0,
                "mode": "isolated",
                "isolated_margin": 6000.0,
                "leverage": 20,
            },
            {
                "name": "stable_long",
                "stable": 40000.0,
                "position": 2.0,
                "leverage": 20,
                "debt": {"stable": 10000.0},
            },
            {"name": "lst_short", "lst": 0.5, "usdt": 1000.0, "position": -3.0, "leverage": 20},
        ],
        "lp": {"usdt": 20000000.0, "base": 200.0, "stable": 20000000.0, "lst": 200.0},
        "outside": {"usdt": 1000000.0, "base": 10.0, "stable": 1000000.0, "lst": 10.0},
        "insurance_fund": 20000.0,
    },
}
LEDGER = ("usdt", "base", "stable", "lst")


@pytest.fixture(scope="module")
def params():
    return jaxsim.load_scenario(TESTBED, overrides=OVERRIDES)


def _run(key, params, orders_seq):
    """Reset then scan `step` over a (T, K) sequence of orders."""
    k0, k1 = jax.random.split(key)
    s0 = jaxsim.reset(k0, params)

    def body(s, xs):
        k, o = xs
        s, ev = jaxsim.step(k, s, o, params)
        return s, ev

    keys = jax.random.split(k1, orders_seq.kind.shape[0])
    s1, ev = jax.lax.scan(body, s0, (keys, orders_seq))
    return s0, s1, ev


@pytest.fixture(scope="module")
def run(params):
    return jax.jit(_run)


def _gross(state, params):
    """Scale of each ledger for the tolerance: sum of absolute holdings (+|pos*entry|)."""
    a = state.acct
    g = np.abs(np.asarray(a.bal)).sum(0) + np.abs(np.asarray(a.ext_bal)).sum(0)
    g[0] += np.abs(np.asarray(a.pos * a.entry)).sum() + np.abs(np.asarray(a.iso_margin)).sum()
    return g


# ------------------------------------------------------------------ strategies

n_accounts = OVERRIDES["dims"]["n_accounts"]
qty_st = st.one_of(
    st.floats(0.001, 5.0),
    st.floats(0.0, 1e9),
    st.sampled_from([0.0, -1.0, np.nan, np.inf, 1e12]),
)
order_row = st.tuples(
    st.integers(-1, n_accounts),  # account, incl. out of range and system accounts
    st.integers(-1, N_MARKETS),  # market
    st.sampled_from([-1, 1, 1, -1, 0, 2]),  # side
    st.integers(0, N_KINDS),  # kind (post-only included), incl. unknown N_KINDS
    qty_st,
    st.one_of(st.floats(0.2, 1.8), st.sampled_from([0.0, -1.0, np.nan, np.inf])),  # price x ref
)


def _orders(rows: list, params) -> Orders:
    """Rows of (account, market, side, kind, qty, price_factor) -> a (T, K) Orders pytree.

    price_factor multiplies the market's reference price (BASE or STABLE/LST start price).
    """
    ref = np.array([100000.0, 100000.0, 1.0, 105000.0, 1.0])
    arr = np.array(rows, dtype=np.float64).reshape(N_TICKS, K, 6)
    mkt = arr[..., 1].astype(np.int64)
    price = arr[..., 5] * ref[np.clip(mkt, 0, 4)]
    dt = params.dt.dtype
    return Orders(
        account=jnp.asarray(arr[..., 0], jnp.int32),
        market=jnp.asarray(mkt, jnp.int32),
        side=jnp.asarray(arr[..., 2], jnp.int32),
        kind=jnp.asarray(arr[..., 3], jnp.int32),
        qty=jnp.asarray(arr[..., 4], dt),
        price=jnp.asarray(price, dt),
    )


def _with_shock(params, ret: float, start_tick: int, asset: int = 0):
    exo = params.exo
    exo = exo.replace(
        shock_start_tick=exo.shock_start_tick.at[0].set(start_tick),
        shock_ticks=exo.shock_ticks.at[0].set(5),
        shock_asset=exo.shock_asset.at[0].set(asset),
        shock_log_return=exo.shock_log_return.at[0].set(np.log1p(ret)),
        shock_active=exo.shock_active.at[0].set(True),
    )
    return params.replace(exo=exo)


def _assert_fund_backed(a0, a1, ev, tol):
    """After every tick the insurance fund's USDT is not negative or its marked equity
    backs it (what neither covered was written off); the USDT ledger's bad-debt term is
    the sum of the ticks' write-offs."""
    fund, eq = np.asarray(ev.insurance_fund), np.asarray(ev.insurance_equity)
    worst = np.min(np.maximum(fund, eq))
    assert worst >= -tol, f"the fund's USDT and equity both negative: {worst}"
    written = float(a1["bad_debt"]) - float(a0["bad_debt"])
    assert written == pytest.approx(float(np.asarray(ev.bad_debt).sum()), rel=1e-5, abs=tol)


def _assert_finite(tree, what):
    for path, x in jax.tree_util.tree_leaves_with_path(tree):
        x = np.asarray(x)
        if np.issubdtype(x.dtype, np.floating):
            assert np.all(np.isfinite(x)), f"{what}{jax.tree_util.keystr(path)} is not finite"


# ------------------------------------------------------------------ properties


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(order_row, min_size=N_TICKS * K, max_size=N_TICKS * K),
    shock=st.floats(-0.35, 0.3),
    shock_asset=st.integers(0, 2),
    seed=st.integers(0, 2**31 - 1),
    impact=st.sampled_from([0.0, 1000.0]),  # venues' move, bps per 1M USDT (the config's max)
)
def test_conservation_oi_and_finiteness(run, params, rows, shock, shock_asset, seed, impact):
    p = _with_shock(params, shock, start_tick=3, asset=shock_asset)
    lam = jnp.asarray(impact * 1e-10, p.exo.venue_impact.dtype)
    p = p.replace(exo=p.exo.replace(venue_impact=lam))
    s0, s1, ev = run(jax.random.PRNGKey(seed), p, _orders(rows, p))
    a0, a1 = jaxsim.audit(s0, p), jaxsim.audit(s1, p)
    gross = np.maximum(_gross(s0, p), _gross(s1, p))
    for i, name in enumerate(LEDGER):
        x0, x1 = float(a0[name]), float(a1[name])
        assert abs(x1 - x0) <= 2e-6 * gross[i], f"{name} not conserved: {x0} -> {x1}"
    _assert_fund_backed(a0, a1, ev, 2e-6 * float(gross[0]))
    np.testing.assert_allclose(
        np.asarray(ev.oi_long), np.asarray(ev.oi_short), rtol=1e-5, atol=1e-4
    )
    _assert_finite(s1, "state")
    _assert_finite(ev, "events")
    # Non-USDT balances never go negative beyond float32 rounding of the balance itself:
    # selling a whole balance (a liquidation's collateral sale) can debit it by the book's
    # rounding dust, one ulp of the balance (0.0039 at 40,000 STABLE). 8 ulp of the
    # account's larger of start / gross holding, at least 1e-3.
    bal = np.asarray(s1.acct.bal[:, 1:])
    ref = np.maximum(np.abs(np.asarray(s0.acct.bal[:, 1:])), np.abs(bal))
    tol = np.maximum(8 * np.finfo(np.float32).eps * ref, 1e-3)
    worst = np.unravel_index(np.argmin(bal + tol), bal.shape)
    assert np.all(bal >= -tol), (
        f"non-USDT balance negative: account, asset-1 = {worst}, {bal[worst]} (tol {tol[worst]})"
    )


def test_garbage_orders_are_rejected_not_applied(run, params):
    """NaN/inf/negative quantities, unknown kinds and out-of-range accounts change nothing;
    nor do malformed post-only rows or a post-only bid that would take."""
    po = KIND_POST_ONLY
    rows = []
    bad = [
        (0, 1, 1, 1, np.nan, 0.0),
        (0, 1, 1, 2, np.inf, 1.0),
        (0, 1, 1, 1, -5.0, 0.0),
        (-1, 1, 1, 1, 1.0, 0.0),
        (0, 7, 1, 1, 1.0, 0.0),
        (0, 1, 3, 1, 1.0, 0.0),
        (0, 1, 1, 2, 1.0, np.nan),
        (0, 1, 1, 12, 1.0, 0.0),
        (8, 1, 1, 1, 1.0, 0.0),
        (0, 1, 1, po, np.nan, 1.0),
        (0, 1, 1, po, 1.0, 0.0),  # no limit price
        (0, 1, 0, po, 1.0, 1.0),  # no side
        (0, 0, 1, po, 1.0, np.inf),
        (0, 1, 1, po, 1.0, 1.01),  # bid 1% above the mark: crosses the LP's asks
    ]
    for i in range(N_TICKS * K):
        rows.append(bad[i % len(bad)])
    p = params.replace(exo=params.exo.replace(vol_per_sqrt_s=params.exo.vol_per_sqrt_s * 0))
    s0, s1, ev = run(jax.random.PRNGKey(1), p, _orders(rows, p))
    reasons = np.asarray(ev.order_reason)
    assert np.all(reasons != 0), "a garbage order was accepted"
    crossing = np.array([r[3] == po and r[5] == 1.01 for r in rows]).reshape(N_TICKS, K)
    assert crossing.any() and np.all(reasons[crossing] == REJ_WOULD_TAKE)
    np.testing.assert_array_equal(np.asarray(ev.order_filled), 0.0)
    np.testing.assert_allclose(np.asarray(s1.acct.pos), np.asarray(s0.acct.pos))
    np.testing.assert_allclose(np.asarray(s1.acct.bal[0]), np.asarray(s0.acct.bal[0]))


def _random_batch(params, n=3):
    rng = np.random.default_rng(0)
    batch_params, batch_orders = [], []
    for b in range(n):
        rows = [
            (
                int(rng.integers(0, 6)),
                int(rng.integers(0, 4)),
                int(rng.choice([-1, 1])),
                int(rng.choice([1, 2, 3])),
                float(rng.uniform(0.01, 2.0)),
                float(rng.uniform(0.97, 1.03)),
            )
            for _ in range(N_TICKS * K)
        ]
        batch_params.append(_with_shock(params, [-0.2, 0.0, 0.1][b % 3], start_tick=4))
        batch_orders.append(_orders(rows, params))
    return batch_params, batch_orders


def test_batch_equals_one_by_one():
    """vmap over keys, orders and per-env params (different shocks) = each env run alone.

    Run in x64: in float32 the batched and unbatched programs round reductions in a
    different order (differences ~1e-6 relative that later fills amplify), so exact
    agreement is checked where rounding cannot hide a real divergence.
    """
    with jax.enable_x64(True):
        params = jaxsim.load_scenario(TESTBED, overrides=OVERRIDES, dtype=jnp.float64)
        keys = jax.random.split(jax.random.PRNGKey(7), 3)
        batch_params, batch_orders = _random_batch(params)
        stack = lambda xs: jax.tree_util.tree_map(lambda *a: jnp.stack(a), *xs)
        bp, bo = stack(batch_params), stack(batch_orders)
        _, s_batch, ev_batch = jax.jit(jax.vmap(_run))(keys, bp, bo)
        run = jax.jit(_run)
        for b in range(3):
            _, s_one, ev_one = run(keys[b], batch_params[b], batch_orders[b])
            one = jax.tree_util.tree_leaves_with_path((s_one, ev_one))
            bat = jax.tree_util.tree_leaves(
                jax.tree_util.tree_map(lambda x: x[b], (s_batch, ev_batch))
            )
            for (path, x), y in zip(one, bat, strict=True):
                np.testing.assert_allclose(
                    np.asarray(x),
                    np.asarray(y),
                    rtol=1e-9,
                    atol=1e-9,
                    err_msg=f"env {b} {jax.tree_util.keystr(path)}",
                )
        # The shocked env really differs from the calm one (the comparison is not vacuous).
        assert not np.allclose(np.asarray(ev_batch.index_px[0]), np.asarray(ev_batch.index_px[1]))
        assert np.asarray(ev_batch.order_filled).sum() > 0


def test_same_key_same_trajectory(run, params):
    """Bit-identical replays in float32; a different key gives a different path."""
    keys = jax.random.split(jax.random.PRNGKey(7), 2)
    batch_params, batch_orders = _random_batch(params, n=1)
    _, s_a, ev_a = run(keys[0], batch_params[0], batch_orders[0])
    _, s_b, ev_b = run(keys[0], batch_params[0], batch_orders[0])
    for x, y in zip(
        jax.tree_util.tree_leaves((s_a, ev_a)), jax.tree_util.tree_leaves((s_b, ev_b)), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    _, _, ev_c = run(keys[1], batch_params[0], batch_orders[0])
    assert not np.array_equal(np.asarray(ev_a.ext_px), np.asarray(ev_c.ext_px))


def test_step_compiles_once(run, params):
    """Different values (orders, params with other shocks, keys) never retrace or recompile
    the module's jitted rollout of `step`: after the first call, JAX reports no trace and no
    backend compilation."""
    batch_params, batch_orders = _random_batch(params, n=3)
    run(jax.random.PRNGKey(0), batch_params[0], batch_orders[0])  # compiled here or earlier
    # Inputs made before listening: building them runs eager ops, which compile too.
    later = [
        (jax.random.PRNGKey(i), _with_shock(batch_params[i], -0.05 * i, start_tick=i), o)
        for i, o in enumerate(batch_orders[1:], start=1)
    ]
    seen = []

    def listen(event, secs, **kw):
        seen.append(event)

    events = (
        "/jax/core/compile/jaxpr_trace_duration",
        "/jax/core/compile/backend_compile_duration",
    )
    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        # The listener sees a fresh program's trace and compilation (the check can fail).
        jax.block_until_ready(jax.jit(lambda x: x * 3 + 1)(jnp.arange(7)))
        assert all(e in seen for e in events), seen
        seen.clear()
        for key, p, o in later:
            jax.block_until_ready(run(key, p, o))
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    for event in events:
        assert event not in seen, f"a call with new values triggered {event}"


def test_conservation_in_x64():
    """The audit run in float64: the ledger is conserved to rounding (1e-10 relative)."""
    with jax.enable_x64(True):
        p = jaxsim.load_scenario(TESTBED, overrides=OVERRIDES, dtype=jnp.float64)
        p = _with_shock(p, -0.3, start_tick=2)
        assert p.dt.dtype == jnp.float64
        rng = np.random.default_rng(3)
        rows = [
            (
                int(rng.integers(0, 6)),
                int(rng.integers(0, 4)),
                int(rng.choice([-1, 1])),
                int(rng.choice([1, 2, 3])),
                float(rng.uniform(0.01, 3.0)),
                float(rng.uniform(0.95, 1.05)),
            )
            for _ in range(N_TICKS * K)
        ]
        s0, s1, ev = jax.jit(_run)(jax.random.PRNGKey(5), p, _orders(rows, p))
        a0, a1 = jaxsim.audit(s0, p), jaxsim.audit(s1, p)
        gross = np.maximum(_gross(s0, p), _gross(s1, p))
        for i, name in enumerate(LEDGER):
            assert abs(float(a1[name]) - float(a0[name])) <= 1e-10 * gross[i], name
        _assert_fund_backed(a0, a1, ev, 1e-10 * float(gross[0]))
        assert float(np.asarray(ev.liq_accounts).sum()) > 0, "the shock liquidated nobody"


def test_tie_hints_change_no_value(params):
    """`ops.tie` and `engine.tie_to_key` (trace-time batching hints) return their inputs
    bit for bit: signed zeros, NaN, inf, ints and bools, under jit and vmap, with a NaN
    reference too; the tied reset state equals the reset state."""
    from jaxsim.engine import tie_to_key
    from jaxsim.ops import tie

    x = jnp.array([-0.0, 0.0, jnp.nan, jnp.inf, -jnp.inf, 1.5e-38, -3.0], jnp.float32)
    tree = (x, jnp.array([-7, 0, 2**31 - 1], jnp.int32), jnp.array([True, False]))
    for ref in (jnp.float32(1.0), jnp.float32(jnp.nan), jnp.int32(3)):
        out = jax.jit(tie)(tree, ref)
        for a, b in zip(
            jax.tree_util.tree_leaves(tree), jax.tree_util.tree_leaves(out), strict=True
        ):
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(
                np.asarray(a).view(np.uint8), np.asarray(b).view(np.uint8)
            )
    refs = jnp.array([1.0, jnp.nan, -0.0], jnp.float32)
    outs = jax.vmap(tie, in_axes=(None, 0))(tree, refs)
    for a, b in zip(jax.tree_util.tree_leaves(tree), jax.tree_util.tree_leaves(outs), strict=True):
        for row in np.asarray(b):
            np.testing.assert_array_equal(np.asarray(a).view(np.uint8), row.view(np.uint8))
    key = jax.random.PRNGKey(3)
    s0 = jaxsim.reset(key, params)
    s1 = jax.jit(tie_to_key)(s0, key)
    for a, b in zip(jax.tree_util.tree_leaves(s0), jax.tree_util.tree_leaves(s1), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_materialize_changes_no_value():
    """`ops.materialize` (computed once, not fused into its consumers) returns its inputs
    bit for bit, in place: signed zeros, NaN, inf, subnormals, ints, bools and shapes,
    under jit and vmap; and the compiled program holds the sort that keeps it unfused."""
    from jaxsim.ops import materialize

    x = jnp.array([-0.0, 0.0, jnp.nan, jnp.inf, -jnp.inf, 1.5e-38, -3.0], jnp.float32)
    xs = (
        x,
        jnp.float32(2.5),
        jnp.array([[-7, 0], [2**31 - 1, 5]], jnp.int32),
        jnp.array([True, False, True]),
        x[::-1].reshape(7, 1),
    )

    def same(a, b):
        assert a.dtype == b.dtype and a.shape == b.shape
        a, b = np.atleast_1d(np.asarray(a)), np.atleast_1d(np.asarray(b))
        np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))

    for out in (materialize(*xs), jax.jit(materialize)(*xs)):
        for a, b in zip(xs, out, strict=True):
            same(a, b)
    same(x, jax.jit(materialize)(x))  # one argument: one array back
    batch = jnp.stack([x, -x, x * 2])
    same(batch, jax.vmap(materialize)(batch))
    hlo = jax.jit(lambda v: materialize(v * 2.0) + 1.0).lower(x).compile().as_text()
    assert " sort(" in hlo
