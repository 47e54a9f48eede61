"""Background traders: each user account may carry a behaviour (PopParams.kind) that turns
the market state into orders every tick, vectorized over the account axis.

Behaviours (one per account, parameters in `PopParams`, YAML under `population.cohorts`):

- retail: a leveraged perp cohort. Target exposure fraction
  `f = clip(bias + trend * momentum - funding * (F_8h - I_8h) / 1bp + noise * z)`, restricted
  to its side (long-only, short-only or both), target position `f * lev_target * equity /
  mark`; when it acts (probability `act_prob` per tick) it trades `speed` of the gap by
  market order. With `hold = 1` it never shrinks a same-side position (it adds, closes when
  the signal crosses zero, or flips): a losing position is ridden to its liquidation rather
  than cut as equity falls. Its margin is the engine's: a cohort that cannot afford the order is
  rejected like anyone else. While a cut of the position limit or the tiers' max leverage is
  announced and not yet in force (MECHANICS 5: existing positions affected, users
  deleverage or face liquidation), its target is also at most 95% of what the announced
  rules allow its equity (`view.announced_rules`, the strictest announced value per rule
  element), and a cohort above that allowance acts every tick until it is not. Re-entry:
  while it holds no perp position (it was liquidated or closed) and its equity is below
  `reentry_below` of the starting equity, new traders' money arrives from its external
  wallet at `reentry_per_h` of the starting equity per hour.
  With `market: spot` a retail cohort holds BASE instead: long only, its position is the
  BASE it holds, its target `f * lev_target * equity / spot mid` with `lev_target <= 1`; it
  buys with the USDT it holds and sells the BASE it holds, by market order on the spot book
  (momentum buyers who chase a pump, or dip buyers, and with `hold = 1` hold the bag).
  With `threshold > 0` its buys are limit bids that far under the spot mid instead: each
  time it acts it cancels its resting bids and bids again (the dip buyers a dump sells
  into); the USDT they reserve counts in its equity.
- basis_arb: when the perp/spot basis is beyond `threshold` it takes the side that earns
  the convergence (long perp + sell spot when the perp is cheap, short perp + buy spot when
  rich), sized `lev_target` x equity; it unwinds once |basis| < `exit`. Two orders per tick:
  the perp leg and the spot hedge of its current perp position.
- xvenue_arb: trades one internal spot book against the external venues' price. Internal
  below external by more than `threshold`: buy internally, withdraw the asset (the rule's
  withdrawal delay applies), sell it externally, bring the USDT back; the mirror trade when
  internal is above. External trades are against the outside world at the external price.
  With `bid = 1` it rests a standing limit bid at its reservation price (external x (1 -
  `threshold`), at the grid's top when the book has fallen further than the grid spans),
  topped up with `speed` of its free USDT each tick, and cancels it when the external
  price falls under it; it keeps its USDT on the other venues and sends for it only once
  the internal mid is under the reservation price, so the withdrawal delay decides when
  that capital can meet a fall.
- panic_seller: sells `speed` of its BASE per tick while the spot drawdown from its peak is
  above `threshold` or the liquidation EWMA is above `exit` USDT per second.
- looper: a collateral loop on its `market`'s asset (STABLE or LST): USDT borrowed against
  the asset and spent on more of it, to hold `lev_target` x its equity in the asset. When
  it acts and is below target while the asset trades within `exit` of its external price,
  it borrows USDT (slot 1) and buys the asset with it (slot 2). While the asset's
  internal price is more than `threshold` below the external venues' (a depeg scare) it
  unwinds: sells `speed` of its holding into the internal book (slot 1) and repays debt
  from the USDT it holds (slot 2), the pro-cyclical sales of a looped collateral. Over
  target because its equity fell, it holds on (if it fails, the liquidation engine sells
  its collateral).

Programs (`population.programs`): scripted market-order flows (a whale's block sale, ETF
outflows, a manipulator's legs), `qty` base units spread evenly over their window. With
`limit_pct` a program trades no worse than its market's reference price (`market_refs`) by
that percentage; with `carry` the unfilled part of a slice is sent again the next tick (what
is due by the end of the tick less what it traded), else it is dropped.

The LP (system account) is the market-making cohort: see `engine._liquidity`, which skews its
quote centre against its inventory (its deviation from its starting inventory, or for the
perp with `mm.perp_skew_vs: flat` its whole position: a maker short the crowd's longs quotes
the perp up, the premium that drives funding) and withdraws depth as realized volatility
and its own drawdown rise.


Layout (each behaviour reads a `view.View` of the tick and returns its rows; `orders`
assembles them). The package exports the engine's entry points and `level_prices`; the
behaviours are in their modules:

- `market`: level prices, best quotes, resting bids, reference and external prices.
- `view`: the per-tick snapshot shared by the behaviours (`View`, `view`).
- `state`: the population's memory (`init_pop_state`, `update_memory`, `momentum`), the
  LP's market-making PnL (`lp_equity`) and `n_background_orders`.
- `retail`, `arbitrage` (basis_arb, xvenue_arb), `panic`, `looper`: the behaviours.
- `programs`: the scripted flows' rows.
- `orders`: `background_orders`, the (K,) Orders batch of a tick.
- `external`: `external_moves`, the ledger moves outside the books.
"""

from jaxsim.population.external import external_moves
from jaxsim.population.market import (
    MARKET_ASSET_ARR,
    MARKET_INDEX_ROW,
    level_prices,
    market_refs,
)
from jaxsim.population.orders import background_orders
from jaxsim.population.retail import FUNDING_UNIT_8H, SECONDS_PER_8H
from jaxsim.population.state import (
    MOMENTUM_CLIP,
    VOL_EWMA_S,
    init_pop_state,
    lp_equity,
    momentum,
    n_background_orders,
    update_memory,
)

__all__ = [
    "FUNDING_UNIT_8H",
    "MARKET_ASSET_ARR",
    "MARKET_INDEX_ROW",
    "MOMENTUM_CLIP",
    "SECONDS_PER_8H",
    "VOL_EWMA_S",
    "background_orders",
    "external_moves",
    "init_pop_state",
    "level_prices",
    "lp_equity",
    "market_refs",
    "momentum",
    "n_background_orders",
    "update_memory",
]
