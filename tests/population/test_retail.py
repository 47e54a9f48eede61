"""`jaxsim.population.retail`: spot retail cohorts (chaser, dip buyer, holder).

Testbed scenarios with injected orders through `jaxsim.step` (shape, price model and
tolerances: tests/support.py; the session-scoped `sim` fixture: tests/conftest.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from support import USD_TOL, assert_conserved, make, usdt

from jaxsim.mechanisms import accounts
from jaxsim.types import BASE, BID, KIND_LIMIT, OK, SPOT


def test_spot_retail_buys_bids_and_sells_what_it_holds(sim):
    # Three spot retail cohorts (`market: spot`) with a fixed signal (bias only):
    # - chaser: f = 1, lev 0.5 of 50k -> target 0.25 BASE, bought by market order at
    #   speed 0.5 of the gap per tick;
    # - dip: f = 1, lev 1 -> target 0.5 BASE, bid by a limit order 0.5% under the mid
    #   (cancelled and re-posted each tick) until a seller comes down to it;
    # - holder: f = 0 -> it sells its 0.4 BASE by market order at speed 0.5.
    users = [
        {"name": "chaser", "usdt": 50000.0},
        {"name": "dip", "usdt": 50000.0},
        {"name": "holder", "base": 0.4},
        {"name": "seller", "base": 30.0},
    ]
    common = {"behaviour": "retail", "market": "spot", "side": 1, "act_prob": 1.0, "speed": 0.5}
    cohorts = [
        {"account": "chaser", "bias": 1.0, "lev_target": 0.5, **common},
        {"account": "dip", "bias": 1.0, "lev_target": 1.0, "threshold": 0.005, **common},
        {"account": "holder", "bias": 0.0, "lev_target": 1.0, **common},
    ]
    p = make(users, **{"population.cohorts": cohorts})
    lvl = lambda st: np.asarray(accounts.level_prices(st, p, SPOT))
    bids = lambda st, a: np.asarray(accounts.own_orders(st, a, SPOT)[BID])
    states, evs, st0 = sim.run(p, 4)
    base = lambda st, a: float(st.acct.bal[a, BASE])
    # Chaser: half the gap each tick, by market order, paid from its USDT. (Targets are
    # valued at the spot mid, within a tick (5 bp) of 100k: rel 1e-3.)
    assert base(states[0], 0) == pytest.approx(0.125, rel=1e-3)
    assert base(states[1], 0) == pytest.approx(0.1875, rel=1e-3)
    assert 0.0 < usdt(states[1], 0) < 50000.0 - 0.1875 * 100000.0 * 0.999
    # Dip: one resting bid of half its gap, 0.5% under the mid (rounded down to the grid),
    # re-posted each tick: never two levels at once, no BASE bought yet.
    for st in states:
        b = bids(st, 1)
        assert np.count_nonzero(b) == 1 and b.sum() == pytest.approx(0.25, rel=1e-3)
        px = lvl(st)[np.flatnonzero(b)[0]]
        assert 0.994 * 100000.0 <= px <= 0.995 * 100000.0 + 1e-3
        assert base(st, 1) == 0.0
        # Its USDT and what the bid reserves add up to its 50k; the events' equity counts both.
        assert usdt(st, 1) + b.sum() * px == pytest.approx(50000.0, abs=USD_TOL)
    assert float(evs[-1].equity[1]) == pytest.approx(50000.0, abs=USD_TOL)
    # Holder: sells half of what it holds each tick.
    assert [round(base(st, 2), 6) for st in states] == [0.2, 0.1, 0.05, 0.025]
    assert usdt(states[-1], 2) > 0.37 * 99000.0
    # A seller walks the bids down to 99.4k (the grid's edge is 99.2k): the dip buyer's bid
    # is filled at its price.
    sell = {"account": 3, "market": SPOT, "side": -1, "kind": KIND_LIMIT, "qty": 30.0,
            "price": 99400.0}  # fmt: skip
    states2, evs2, _ = sim.run(p, 2, orders_at={0: [sell]}, st=states[-1])
    assert int(evs2[0].order_reason[0]) == OK and float(evs2[0].order_filled[0]) > 0.25
    assert base(states2[0], 1) == pytest.approx(0.25, rel=1e-3)
    paid = usdt(states[-1], 1) + bids(states[-1], 1).sum() * px - usdt(states2[0], 1)
    assert paid == pytest.approx(base(states2[0], 1) * px * (1 + float(p.rules.maker_fee)), abs=1.0)
    assert_conserved(p, st0, states2[-1])


def test_perp_retail_deleverages_to_an_announced_cut_before_it_takes_effect(sim):
    """MECHANICS 5: once a cut that affects existing positions is announced, traders
    deleverage or face liquidation. A long at 10x whose cohort never acts on its own
    (act_prob 0) cuts toward 95% of what the announced 5x cap allows its equity, at its
    speed, every tick from the announcement; with nothing announced it holds."""
    from jaxsim.population.view import announced_rules

    users = [{"name": "trader", "usdt": 10000.0, "position": 1.0, "leverage": 20}]
    cohort = {"account": "trader", "behaviour": "retail", "side": 1, "bias": 1.0,
              "lev_target": 10, "act_prob": 0.0, "speed": 0.5}  # fmt: skip
    cut = [
        {"announce_s": 0.0, "effective_s": 100.0, "field": "max_leverage_cap", "value": 5.0,
         "policy": "grandfather"},
        # Two announced limits: the stricter one counts; a change not yet announced does not.
        {"announce_s": 0.0, "effective_s": 100.0, "field": "position_limit", "value": 3e6,
         "policy": "grandfather"},
        {"announce_s": 0.0, "effective_s": 200.0, "field": "position_limit", "value": 2e6,
         "policy": "grandfather"},
        {"announce_s": 50.0, "effective_s": 300.0, "field": "position_limit", "value": 1e6,
         "policy": "grandfather"},
    ]  # fmt: skip
    p = make(users, **{"population.cohorts": [cohort], "schedule": cut})
    held = make(users, **{"population.cohorts": [cohort]})
    states, _, st0 = sim.run(p, 3)
    ann = announced_rules(st0, p)
    assert float(ann.position_limit) == 2e6
    np.testing.assert_array_equal(
        np.asarray(ann.tier_max_lev), np.minimum(np.asarray(st0.rules.tier_max_lev), 5.0)
    )
    # Its equity allows 5 x ~10k = ~50k of notional: target 0.95 x 50k / 100k = 0.475 BASE,
    # half the gap sold each tick (equity and mark move a little: rel 1e-2).
    pos = [float(st.acct.pos[0]) for st in states]
    want, q = [], 1.0
    for _ in range(3):
        q -= 0.5 * (q - 0.475)
        want.append(q)
    np.testing.assert_allclose(pos, want, rtol=1e-2)
    assert_conserved(p, st0, states[-1])
    states_h, _, _ = sim.run(held, 3)
    assert [float(st.acct.pos[0]) for st in states_h] == [1.0, 1.0, 1.0]
