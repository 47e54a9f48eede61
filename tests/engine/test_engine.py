"""`jaxsim.engine`: reset compiled once per Dims.

On the testbed (tests/support.py).
"""

from __future__ import annotations

import jax
import pytest
from support import bankrupt_users, make

import jaxsim


def test_eager_reset_compiles_once_per_dims():
    """`jaxsim.reset` outside a trace is one program per Params structure: a second call
    with other values (users' balances and positions, key) compiles nothing. (Run eagerly
    op by op, its loop over the markets compiled afresh at every call: 2-4 s each.)"""
    p1 = make(bankrupt_users())
    p2 = make([{"name": "other", "usdt": 5000.0, "position": -0.1, "leverage": 10}])
    k1, k2 = jax.random.PRNGKey(1), jax.random.PRNGKey(2)
    jax.block_until_ready(jaxsim.reset(k1, p1))
    seen = []

    def listen(event, secs, **kw):
        seen.append(event)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        st = jax.block_until_ready(jaxsim.reset(k2, p2))
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    assert "/jax/core/compile/backend_compile_duration" not in seen, seen
    assert float(st.acct.pos[0]) == pytest.approx(-0.1)  # p2's values, not p1's
