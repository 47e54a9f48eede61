"""Helpers shared by the test files, imported as `from support import ...` (tests/ is on
sys.path through tests/conftest.py; several conftest.py files exist, so nothing is imported
from `conftest`).

- `TESTBED`: the engine tests' fixed market (static accounts, no background traders).
- The testbed scenarios of tests/mechanisms/ and tests/population/: `make` loads the
  testbed with the shared overrides, `Sim` runs `jaxsim.step` on injected `orders` (the
  session-scoped `sim` fixture of tests/conftest.py), `assert_conserved` checks the ledger.
- `f32` for the formula tests of tests/engine/.

Testbed scenarios share one shape (12 accounts = 8 users + 4 system, 32 levels, 4 orders
per tick, 3 cascade rounds), so the jitted `step` compiles once per test process (a second
time only for the `cascade_rounds=1` comparison in test_liquidation.py): `Sim`'s cache of
compiled programs is process-wide. Prices are deterministic: zero volatility, no venue
dispersion, LP depth not withdrawn on volatility; moves come from scripted shocks. System
balances are kept small (LP 1e7 USDT) so float32 audits resolve a few USDT.

Tolerances (float32): USDT balances ~1e5 -> 0.05; audit totals -> relative 2e-6 (about
25 USDT on the ~1.2e7 USDT ledger, 4 STABLE on ~2e6); positions -> 1e-5 BTC.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsim
from jaxsim import margin as mg
from jaxsim.mechanisms.accounts import asset_prices
from jaxsim.types import USDT, Orders

# The engine tests' fixed market: static accounts, no background traders (loaded by path).
TESTBED = str(Path(__file__).resolve().parent / "configs" / "testbed.yaml")


# ================================================================== formulas


def f32(x):
    return jnp.asarray(np.asarray(x, np.float64), jnp.float32)


# ================================================================== testbed scenarios

N_ACCOUNTS = 12
DT = 10.0  # dt_s of the defaults
ZERO4 = {"spot": 0.0, "perp": 0.0, "stable": 0.0, "lst": 0.0}
BASE_OVERRIDES = {
    "dims.n_accounts": N_ACCOUNTS,
    "dims.n_levels": 32,
    "exogenous.vol_annual": {"base": 0.0, "stable": 0.0, "lst": 0.0},
    "exogenous.venue_dispersion": 0.0,
    "markets.lp_vol_withdraw": ZERO4,
    "accounts.lp": {"usdt": 1.0e7, "base": 100.0, "stable": 1.0e6, "lst": 100.0},
    "accounts.outside": {"usdt": 1.0e6, "base": 10.0, "stable": 1.0e6, "lst": 10.0},
}
# -10% on BASE during tick 1 (the tick starting at 10 s).
SHOCK_T1 = [{"start_s": 10.0, "duration_s": 10.0, "asset": "base", "return_pct": -10.0}]

USD_TOL = 0.05
POS_TOL = 1e-5


def make(users, **over):
    o = dict(BASE_OVERRIDES)
    o["accounts.users"] = users
    o.update(over)
    return jaxsim.load_scenario(TESTBED, overrides=o)


# Compile-time savings for the test suite only (LLVM's expensive passes off: ~40% faster
# compiles, same semantics); falls back to a plain compile if the backend refuses them.
# conftest.py's `jax_disable_most_optimizations` applies the same options to every program
# outside tests/scenarios/; these keep `fast_compiled` fast when that is turned off.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def fast_compiled(fn, *args):
    """`jax.jit(fn)` compiled for `args` with `FAST_COMPILE` (a plain compile if the
    backend refuses the options): the same semantics, a shorter compile for the tests'
    few calls. The result takes arguments of the same shapes and dtypes as `args`."""
    lowered = jax.jit(fn).lower(*args)
    try:
        return lowered.compile(compiler_options=FAST_COMPILE)
    except Exception:  # noqa: BLE001 - option names are backend-specific
        return lowered.compile()


class Sim:
    """`step` compiled once per Dims (with `FAST_COMPILE`; a plain compile if the backend
    refuses the options) and shared by every test of the process: the cache is a class
    attribute. `reset` called eagerly is compiled once per Dims by the engine itself."""

    compiled: dict = {}

    def start(self, p):
        return jaxsim.reset(jax.random.PRNGKey(0), p)

    def _step(self, key, st, o, p):
        fn = self.compiled.get(p.dims)
        if fn is None:
            fn = fast_compiled(jaxsim.step, key, st, o, p)
            self.compiled[p.dims] = fn
        return fn(key, st, o, p)

    def tick(self, st, p, rows=()):
        o = orders(p, rows) if rows else jaxsim.no_orders(p)
        return self._step(jax.random.PRNGKey(int(st.t) + 1), st, o, p)

    def run(self, p, n, orders_at=None, st=None):
        """n ticks; returns (states after each tick, events of each tick, initial state)."""
        st0 = self.start(p) if st is None else st
        st, states, evs = st0, [], []
        for i in range(n):
            st, ev = self.tick(st, p, (orders_at or {}).get(i, ()))
            states.append(st)
            evs.append(ev)
        return states, evs, st0


def orders(p, rows):
    """Orders pytree from a list of dicts (missing fields 0)."""
    k = p.dims.max_orders
    assert len(rows) <= k
    ints = ("account", "market", "side", "kind")
    cols = {
        f: np.zeros(k, np.int32 if f in ints else np.float32)
        for f in ("account", "market", "side", "kind", "qty", "price")
    }
    for i, r in enumerate(rows):
        for f, v in r.items():
            cols[f][i] = v
    return Orders(**{f: jnp.asarray(v) for f, v in cols.items()})


def assert_conserved(p, st0, st1, debts_fixed=True):
    """Ledger totals of `jaxsim.audit` unchanged; open interest balanced; total debt
    unchanged unless someone borrowed or repaid (`debts_fixed=False`)."""
    a0 = {k: np.asarray(v, np.float64) for k, v in jaxsim.audit(st0, p).items()}
    a1 = {k: np.asarray(v, np.float64) for k, v in jaxsim.audit(st1, p).items()}
    for k in ("usdt", "base", "stable", "lst"):
        np.testing.assert_allclose(a1[k], a0[k], rtol=2e-6, atol=1e-4, err_msg=k)
    assert a1["oi_long"] == pytest.approx(a1["oi_short"], abs=1e-4)
    if debts_fixed:
        np.testing.assert_allclose(a1["debt"], a0["debt"], atol=1e-4)


def usdt(st, a):
    return float(st.acct.bal[a, USDT])


def pos(st, a):
    return float(st.acct.pos[a])


def asset_px(st):
    return asset_prices(st.px)


def mb_and_mm(st):
    """Margin balance and maintenance margin of every account at the state's mark."""
    a = st.acct
    mb = mg.margin_balance(
        a.bal,
        a.debt,
        a.pos,
        a.entry,
        a.iso_margin,
        a.mode,
        asset_px(st),
        st.px.mark,
        st.rules.haircut,
    )
    mm = mg.maint_margin(jnp.abs(a.pos) * st.px.mark, st.rules)
    return np.asarray(mb, np.float64), np.asarray(mm, np.float64)


# Used by test_insurance.py and test_engine.py.
def bankrupt_users():
    # 0.4 BTC long at 100,000 with 2,000 USDT (20x). After the -10% shock (mark ~90,009)
    # MB = 0.9999 x 2,000 - 0.4 x 9,991 < 0: bankrupt. Bankruptcy price (MB + Q (p - mark)
    # = 0, USDT haircut 0.01%): p_bk = 100,000 - 1,999.8 / 0.4 = 95,000.5, above every bid,
    # so the IOC at p_bk fills nothing and the rest goes to the fund (or ADL) at 95,000.5.
    return [{"name": "bust_cross", "usdt": 2000.0, "position": 0.4, "leverage": 20}]
