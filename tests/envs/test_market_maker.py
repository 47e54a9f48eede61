"""The market maker's venue economics: its fee programme, post-only quotes that keep their
place in the queue, and the queue-ahead observations."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

import envs
import jaxsim
from envs.core import book_view, level_prices
from jaxsim.mechanisms.accounts import own_orders
from jaxsim.types import (
    ASK,
    BID,
    KIND_CANCEL,
    KIND_NONE,
    KIND_POST_ONLY,
    LP_SLOT,
    PERP,
    REJ_WOULD_TAKE,
)

SCENARIO = "calm"
BPS = 1e-4


@pytest.fixture(scope="module")
def mm():
    env, params = envs.make("market_maker", scenario=SCENARIO, legacy=False)
    step = jax.jit(env.step_env)
    obs, state = jax.jit(env.reset_env)(jax.random.PRNGKey(0), params)
    return env, params, step, state


def _action(env, params, offsets_bps, size_u=0.25):
    """The action quoting bid/ask `offsets_bps` from the reference mid with size fraction
    `size_u`, no hedge."""
    s = params.role
    lo, hi = float(s.min_offset_bps), float(s.max_offset_bps)
    off = [2.0 * (o - lo) / (hi - lo) - 1.0 for o in offsets_bps]
    return jnp.array([off[0], off[1], 2 * size_u - 1, 2 * size_u - 1, -1.0], jnp.float32)


def _offsets_to(price_bid, price_ask, state, params):
    """Offsets (bp) that put the quotes at the given grid prices from this state (aimed
    0.3 tick inside them: the engine rounds bids down and asks up to the grid)."""
    _, _, mid, _, _ = book_view(state.sim, params.sim, PERP, exclude=0)
    mid, tick = float(mid), float(params.sim.markets.tick_size[PERP])
    bid, ask = price_bid + 0.3 * tick, price_ask - 0.3 * tick
    return [(1.0 - bid / mid) / BPS, (ask / mid - 1.0) / BPS]


def test_learner_fee_programme(tmp_path):
    """The market maker's account has the programme's maker rebate and VIP taker rate; a
    scenario that sets the account's rates keeps its own; other accounts pay the schedule."""
    _, p = envs.make("market_maker", scenario=SCENARIO, legacy=False)
    acc = p.sim.accounts
    assert bool(acc.own_maker_fee[0]) and bool(acc.own_taker_fee[0])
    np.testing.assert_allclose(float(acc.maker_fee[0]), -0.00005)
    np.testing.assert_allclose(float(acc.taker_fee[0]), 0.00017)
    assert not np.asarray(acc.own_maker_fee[1:]).any()
    cfg = yaml.safe_load(open(Path(jaxsim.__file__).parent.parent / "configs" / "calm.yaml"))
    cfg["accounts"]["users"][0]["fees"] = {"maker": 0.0001}
    path = tmp_path / "calm_own_fees.yaml"
    path.write_text(yaml.safe_dump(cfg))
    _, p2 = envs.make("market_maker", scenario=str(path), legacy=False)
    acc2 = p2.sim.accounts
    np.testing.assert_allclose(float(acc2.maker_fee[0]), 0.0001)
    assert not bool(acc2.own_taker_fee[0])  # the scenario's row: taker follows the schedule


def test_unchanged_quotes_keep_their_place(mm):
    """A side whose resting quote is at the new price (and about the new size) sends no
    cancel and no new order; moving one side cancels and re-quotes that side only."""
    env, params, step, state = mm
    obs, s1, _, _, _ = step(jax.random.PRNGKey(1), state, _action(env, params, [6, 6]), params)
    own = np.asarray(own_orders(s1.sim, 0, PERP))
    px = np.asarray(level_prices(s1.sim, params.sim, PERP))
    assert (own[BID] > 0).sum() == 1 and (own[ASK] > 0).sum() == 1
    pb, pa = px[own[BID] > 0][0], px[own[ASK] > 0][0]

    same = _action(env, params, _offsets_to(pb, pa, s1, params))
    o = env.decode_one(same, s1, params, jnp.int32(0))
    assert np.asarray(o.kind).tolist() == [KIND_NONE] * 4

    tick = float(params.sim.markets.tick_size[PERP])
    lower_bid = _action(env, params, _offsets_to(pb - 2 * tick, pa, s1, params))
    o = env.decode_one(lower_bid, s1, params, jnp.int32(0))
    assert int(o.kind[0]) == KIND_CANCEL and int(o.side[0]) == 1  # bids only
    assert int(o.kind[2]) == KIND_POST_ONLY and int(o.kind[3]) == KIND_NONE
    assert pb - 2 * tick <= float(o.price[2]) < pb - tick

    # A quote much smaller than the resting one is sent again (both sides here).
    small = _action(env, params, _offsets_to(pb, pa, s1, params), size_u=0.05)
    o = env.decode_one(small, s1, params, jnp.int32(0))
    assert int(o.kind[0]) == KIND_CANCEL and int(o.side[0]) == 0
    assert int(o.kind[2]) == KIND_POST_ONLY and int(o.kind[3]) == KIND_POST_ONLY


def test_crossing_quote_is_rejected_not_taken(mm):
    """With offsets allowed below zero, a bid 50 bp above the mid would take: post-only
    rejects it (would_take) and the learner trades nothing, pays no fee. The offsets are
    settings (params), so the module's compiled step runs it."""
    env, params, step, state = mm
    params = params.replace(role=params.role.replace(min_offset_bps=jnp.float32(-50.0)))
    act = _action(env, params, [-50.0, 10.0])
    _, new, _, _, info = step(jax.random.PRNGKey(1), state, act, params)
    reason = np.asarray(info["order_reason"])[:4]
    assert reason[2] == REJ_WOULD_TAKE
    assert float(new.sim.acct.pos[0]) == 0.0 and float(info["fees"]) == 0.0
    own = np.asarray(own_orders(new.sim, 0, PERP))
    assert own[BID].sum() == 0 and own[ASK].sum() > 0  # the ask rests


def test_queue_ahead_observation(mm):
    """perp_bid_queue = the notional resting ahead of the learner's best bid at its level
    (here: the LP's size there, all placed before the learner's order) / initial equity."""
    env, params, step, state = mm
    _, _, mid0, _, _ = book_view(state.sim, params.sim, PERP, exclude=0)
    obs, s1, _, _, _ = step(jax.random.PRNGKey(1), state, _action(env, params, [4, 40]), params)
    ix = {n: i for i, n in enumerate(env.obs_names)}
    own = np.asarray(own_orders(s1.sim, 0, PERP))
    px = np.asarray(level_prices(s1.sim, params.sim, PERP))
    lvl = int(np.argmax(own[BID] > 0))
    lp_there = float(s1.sim.book.qty[PERP, BID, lvl, LP_SLOT])
    eq0 = float(s1.equity0[0])
    assert lp_there > 0  # the learner joined the LP's level: the check is not 0 == 0
    np.testing.assert_allclose(
        float(obs[ix["perp_bid_queue"]]), lp_there * px[lvl] / eq0, rtol=1e-5
    )
    assert float(obs[ix["perp_ask_queue"]]) >= 0.0
