"""What one tick records for its events, by name: the accumulators its phases add to
(`TickAcc`), each order row's result (`OrderResults`), what the background traders' orders
did (`Background`) and the funding settlement (`Funding`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from jaxsim.types import (
    N_ASSETS,
    N_MARKETS,
)

Array = jax.Array


@struct.dataclass
class TickAcc:
    """Per-tick accumulators carried through the phases of a step (A accounts, M markets),
    and the tick's reference for the engine's own sales (`sale_ref`)."""

    volume: Array  # (M,)
    fees: Array
    fees_acct: Array  # (A,) trading fees each account paid (maker + taker)
    liq_long: Array
    liq_short: Array
    liq_mask: Array  # (A,) accounts liquidated at least once this tick
    coll_sold: Array  # (4,)
    coll_sold_usdt: Array
    takeover: Array
    adl_count: Array
    adl_notional: Array
    bad_debt: Array
    liq_backlog: Array  # () int32 accounts still queued for liquidation when the rounds end
    forced: Array
    rules_changed: Array
    flow: Array  # () signed taker notional on the BASE books (buys +)
    # (4,) USDT value of each asset at the tick's opening index (USDT 1): collateral the
    # engine sells fills no lower than this x (1 - rules.sale_band), whatever later sales
    # in the tick did to the index (0 = no floor, until the step sets it).
    sale_ref: Array


def zero(dtype, n_accounts: int) -> TickAcc:
    """Accumulators at the start of a tick."""
    z = jnp.zeros((), dtype)
    return TickAcc(
        volume=jnp.zeros((N_MARKETS,), dtype),
        fees=z,
        fees_acct=jnp.zeros((n_accounts,), dtype),
        liq_long=z,
        liq_short=z,
        liq_mask=jnp.zeros((n_accounts,), bool),
        coll_sold=jnp.zeros((N_ASSETS,), dtype),
        coll_sold_usdt=z,
        takeover=z,
        adl_count=jnp.zeros((), jnp.int32),
        adl_notional=z,
        bad_debt=z,
        liq_backlog=jnp.zeros((), jnp.int32),
        forced=z,
        rules_changed=jnp.zeros((), jnp.int32),
        flow=z,
        sale_ref=jnp.zeros((N_ASSETS,), dtype),
    )


@struct.dataclass
class OrderResults:
    """Each order row's result, (K,) each: reason code (`OK` or a `REJ_*`), quantity
    filled, average fill price (0 when nothing filled) and quantity left unfilled."""

    reason: Array
    filled: Array
    avg_px: Array
    unfilled: Array

    def rows(self, sl: slice) -> OrderResults:
        """The results of the rows in `sl`."""
        return jax.tree_util.tree_map(lambda x: x[sl], self)


@struct.dataclass
class Background:
    """What the background traders' orders did this tick."""

    volume: Array  # (M,) base units traded per market
    rejects: Array  # () orders rejected
    arb_volume: Array  # () base units traded by the arbitrage cohorts
    prog_filled: Array  # (P,) base units each scripted program traded
    arb_flow: Array  # () signed notional of arbitrage trades on the BASE books (buys +)


@struct.dataclass
class Funding:
    """Funding at the end of the tick: whether an interval settled, and its rate (else 0)."""

    settled: Array  # () bool
    paid_rate: Array  # ()
