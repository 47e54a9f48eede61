"""Pytrees and constants of the exchange: static dims, params, rules, state, orders, events.

Conventions: quantities are in base units, prices in quote (USDT) units, money in the
asset's own units. Shapes use A = accounts, M = markets (4), G = price levels per market
grid, Q = maker slots of the books, T = margin tiers, S = rule-schedule rows, K = external
orders per tick, V = external venues, W = basis moving-average window, X = transfer slots
per account.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

Array = jax.Array

# ---------------------------------------------------------------- assets and markets
USDT, BASE, STABLE, LST = 0, 1, 2, 3
N_ASSETS = 4
ASSET_NAMES = ("USDT", "BASE", "STABLE", "LST")

SPOT, PERP, STABLE_SPOT, LST_SPOT = 0, 1, 2, 3
N_MARKETS = 4
MARKET_NAMES = ("BASE/USDT", "BASE-USDT-PERP", "STABLE/USDT", "LST/USDT")
# Asset traded against USDT on each market (the perp is cash-settled: it moves no BASE).
MARKET_ASSET = (BASE, BASE, STABLE, LST)
SPOT_MARKETS = (SPOT, STABLE_SPOT, LST_SPOT)

# Index-priced assets (rows of the index tables): BASE, STABLE, LST.
N_INDEX = 3
INDEX_ASSETS = (BASE, STABLE, LST)
# Spot market that is the "internal" constituent of each index row.
INDEX_INTERNAL_MARKET = (SPOT, STABLE_SPOT, LST_SPOT)

BID, ASK = 0, 1

# ---------------------------------------------------------------- orders
KIND_NONE = 0
KIND_MARKET = 1  # walk the book (IOC), optional limit price (0 = none)
KIND_LIMIT = 2  # marketable part executes, remainder rests (GTC)
KIND_CANCEL = 3  # cancel the account's resting orders on `market` (side 0 = both sides)
KIND_TRANSFER_OUT = 4  # exchange -> external venue, `market` field = asset, arrives after delay
KIND_TRANSFER_IN = 5  # external venue -> exchange, arrives after the delay
KIND_SET_LEVERAGE = 6  # qty = new chosen leverage
KIND_BORROW = 7  # borrow `qty` of asset `market` from the lender (the outside world)
KIND_REPAY = 8  # repay `qty` of asset `market` debt
# Post-only limit (Binance timeInForce GTX): rests whole, rejected (REJ_WOULD_TAKE) if any
# part of it would fill on arrival.
KIND_POST_ONLY = 9
N_KINDS = 10
KIND_NAMES = (
    "none",
    "market",
    "limit",
    "cancel",
    "transfer_out",
    "transfer_in",
    "set_leverage",
    "borrow",
    "repay",
    "post_only",
)

# ---------------------------------------------------------------- reject reasons
OK = 0
REJ_INVALID = 1  # bad field: NaN/inf, qty <= 0, unknown market/kind/account
REJ_BALANCE = 2  # not enough free balance (spot, transfers, repay)
REJ_MARGIN = 3  # not enough margin for the initial margin after the order
REJ_POSITION_LIMIT = 4  # notional above the position limit in force
REJ_LEVERAGE = 5  # chosen leverage above the tier's max leverage for the new notional
REJ_PRICE_BAND = 6  # limit price outside the band around mark/last
REJ_OUT_OF_RANGE = 7  # limit price outside the book's price grid
REJ_NO_LIQUIDITY = 8  # market order found nothing to fill within its limit
REJ_SYSTEM = 9  # order from a system account (LP, outside world, insurance fund, fees)
REJ_QUEUE_FULL = 10  # a limit order would rest, but every maker slot (dims.n_makers) is taken
REJ_WOULD_TAKE = 11  # a post-only order would fill against the book on arrival (GTX)
N_REASONS = 12
REASON_NAMES = (
    "ok",
    "invalid",
    "balance",
    "margin",
    "position_limit",
    "leverage",
    "price_band",
    "out_of_range",
    "no_liquidity",
    "system_account",
    "queue_full",
    "would_take",
)

# ---------------------------------------------------------------- rule-change policies
POLICY_GRANDFATHER = 0  # existing positions keep their size; new orders obey the new rule
POLICY_FORCE_REDUCE = 1  # excess is cut by market order at the effective tick
POLICY_LIQUIDATE = 2  # breaching positions go to the liquidation engine
POLICY_NAMES = ("grandfather", "force_reduce", "liquidate")

# ---------------------------------------------------------------- margin modes
CROSS, ISOLATED = 0, 1

# Number of system accounts at the end of the account axis.
N_SYSTEM = 4

# Maker slot of the liquidity provider in the book's owner axis (it always holds one).
LP_SLOT = 0


@dataclasses.dataclass(frozen=True)
class Dims:
    """Static sizes. They fix array shapes, so they are not vmapped or swept."""

    n_accounts: int = 16  # including the N_SYSTEM system accounts at the end
    n_levels: int = 64  # price levels per market grid (bids and asks share the grid)
    max_orders: int = 4  # external orders per tick
    n_tiers: int = 12
    n_schedule: int = 8
    cascade_rounds: int = 3
    liq_per_round: int = 4  # accounts the liquidation engine handles per cascade round
    n_venues: int = 3
    basis_window: int = 30  # samples in the basis moving average ring buffer
    transfer_slots: int = 2
    n_shocks: int = 4
    n_programs: int = 8  # scripted order-flow rows (whale, outflows, manipulator)
    # Owner slots of the books: the LP's plus n_makers - 1 for user accounts with resting
    # orders at the same time (a slot is taken by an account's first resting order and
    # freed once it has none left on any book).
    n_makers: int = 4

    @property
    def lp(self) -> int:
        """Liquidity provider: owns the replenished background depth."""
        return self.n_accounts - 4

    @property
    def outside(self) -> int:
        """Outside world: other venues, lenders, exogenous flows."""
        return self.n_accounts - 3

    @property
    def insurance(self) -> int:
        """Insurance fund: its USDT balance is the fund; it holds taken-over positions."""
        return self.n_accounts - 2

    @property
    def fees(self) -> int:
        """The exchange's fee account."""
        return self.n_accounts - 1

    @property
    def n_constituents(self) -> int:
        """Index constituents per asset: external venues, internal spot, redemption."""
        return self.n_venues + 2


@struct.dataclass
class ExchangeRules:
    """Rules in force. All fields are arrays so a schedule can change any of them."""

    tier_floor: Array  # (T,) lower notional bound of each tier, USDT, increasing, [0] = 0
    tier_mmr: Array  # (T,) maintenance margin rate
    tier_max_lev: Array  # (T,) max leverage allowed for notionals in the tier
    position_limit: Array  # () max position notional per account, USDT
    depth_limit_mult: Array  # () >0: position limit also <= mult x perp depth (0 = off)
    depth_limit_band: Array  # () depth counted within mid * (1 +/- band)
    depth_limit_floor: Array  # () USDT; the depth-scaled limit never falls below it
    index_weights: Array  # (3, V + 2) weights: venues..., internal spot, redemption
    index_clip: Array  # (3,) constituents clipped to median * (1 +/- clip)
    price_floor: Array  # (3,) index floor (0 = none)
    haircut: Array  # (4,) collateral haircut per asset (USDT, BASE, STABLE, LST)
    funding_interest: Array  # () interest rate I per 8 h
    funding_clamp: Array  # () clamp band on (I - P) per 8 h
    funding_cap: Array  # () |F| cap per interval; 0 = auto (prices.funding_cap)
    funding_interval_s: Array  # () seconds between funding settlements
    imn_quote: Array  # () impact margin notional numerator: IMN = imn_quote * max_lev_1
    maker_fee: Array  # () fee rate on maker notional (negative = rebate)
    taker_fee: Array  # () fee rate on taker notional
    liq_fee: Array  # () clearance fee rate on liquidated notional, to the insurance fund
    adl_on: Array  # () 1 = auto-deleveraging enabled
    if_position_cap: Array  # () insurance-fund position notional cap, x fund balance
    withdrawal_delay_s: Array  # () delay of transfers to/from external venues
    partial_liquidation: Array  # () 1 = reduce by tier before closing fully
    price_band: Array  # (M,) limit price within ref * (1 +/- band)
    if_unwind_per_s: Array  # () fraction of the fund's position unwound per second
    sale_band: Array  # () engine sales fill no worse than the tick's index (mark) x (1 -/+ band)
    borrow_interest: Array  # () interest per 8 h on debts and negative USDT balances


@struct.dataclass
class Schedule:
    """Fixed-size table of rule changes; rows with active=False are padding."""

    announce_tick: Array  # (S,) int32
    effective_tick: Array  # (S,) int32
    flat_index: Array  # (S,) int32 offset into the flattened ExchangeRules
    value: Array  # (S,) new value
    policy: Array  # (S,) int32 POLICY_*
    active: Array  # (S,) bool


@struct.dataclass
class MarketParams:
    tick_size: Array  # (M,) price grid step
    lp_depth: Array  # (M,) LP target size per level at the touch, base units
    lp_decay_bps: Array  # (M,) target size decays as exp(-distance_bps / decay)
    lp_half_spread_ticks: Array  # (M,) LP quotes no closer than this to its centre
    lp_resilience_per_s: Array  # (M,) fraction of the gap to target refilled per second
    lp_ref_weight: Array  # (M,) weight of the reference price in the LP quote centre
    lp_vol_withdraw: Array  # (M,) depth /= 1 + k * max(vol / vol_ref - 1, 0)


@struct.dataclass
class ExoParams:
    price0: Array  # (3,) initial external price of BASE, STABLE, LST
    vol_per_sqrt_s: Array  # (3,) diffusion of the external log price
    vol_ref: Array  # (3,) reference vol used by LP withdrawal
    venue_dispersion: Array  # () relative noise of each venue around the common price
    stable_reversion_per_s: Array  # () pull of STABLE back to its redemption price
    lst_rate: Array  # () LST redemption rate: 1 LST = lst_rate BASE
    shock_start_tick: Array  # (NS,) int32
    shock_ticks: Array  # (NS,) int32 duration
    shock_asset: Array  # (NS,) int32 index row (0 BASE, 1 STABLE, 2 LST)
    shock_log_return: Array  # (NS,) total log return spread over the duration
    shock_active: Array  # (NS,) bool
    vol_of_vol_per_sqrt_s: Array  # (3,) diffusion of the log stochastic-volatility factor
    sv_reversion_per_s: Array  # () mean reversion of the log volatility factor
    jump_rate_per_s: Array  # (3,) Poisson intensity of price jumps
    jump_std: Array  # (3,) std of a jump's log return (mean zero)
    venue_impact: Array  # () log move of the venues' BASE per USDT of net taker flow here
    venue_impact_decay_per_s: Array  # () decay rate of that move (0 = permanent)


# Background behaviours (PopParams.kind), one per account.
BEH_NONE = 0  # static account (the learning agent, or a passive holder)
BEH_RETAIL = 1  # leveraged perp trader: bias, trend/contrarian, funding, noise, re-entry
BEH_BASIS_ARB = 2  # perp vs spot when the basis exceeds the threshold
BEH_XVENUE_ARB = 3  # internal spot vs external venues, inventory moved with the delay
BEH_PANIC = 4  # sells spot when drawdown or liquidation volume crosses a threshold
BEH_LOOPER = 5  # borrows USDT against a collateral asset to buy more of it; unwinds on stress
N_BEHAVIOURS = 6
BEHAVIOUR_NAMES = ("none", "retail", "basis_arb", "xvenue_arb", "panic_seller", "looper")


@struct.dataclass
class PopParams:
    """Background trader population: one behaviour and its parameters per account."""

    kind: Array  # (A,) int32 BEH_*
    side: Array  # (A,) allowed perp direction: +1 long only, -1 short only, 0 both
    bias: Array  # (A,) resting target exposure as a fraction of lev_target (signed)
    lev_target: Array  # (A,) target effective leverage (retail) / capital use (arbs)
    trend: Array  # (A,) weight of the momentum signal (negative = contrarian)
    funding: Array  # (A,) target fraction given up per 0.01%/8h of funding above baseline
    act_prob: Array  # (A,) probability of acting in a tick
    speed: Array  # (A,) fraction of the gap to target traded when acting
    noise: Array  # (A,) std of the per-decision noise on the target fraction
    threshold: Array  # (A,) entry threshold (basis, price gap, drawdown)
    exit: Array  # (A,) exit threshold (basis arb) / liquidation trigger USDT per s (panic)
    market: Array  # (A,) int32 arb's or looper's market; a retail cohort's PERP or SPOT
    reentry_per_h: Array  # (A,) fraction of the starting equity redeposited per hour
    reentry_below: Array  # (A,) redeposit while equity < this fraction of the starting one
    min_trade: Array  # (A,) smallest order, as a fraction of the target notional scale
    hold: Array  # (A,) 1: never cut a same-side position (a falling equity does not de-risk it)
    bid: Array  # (A,) 1: a cross-venue arb rests a standing bid at its reservation price
    trend_fast_s: Array  # () momentum: fast EWMA time constant
    trend_slow_s: Array  # () momentum: slow EWMA time constant
    trend_scale: Array  # () momentum normalisation (relative price gap)
    liq_ewma_s: Array  # () time constant of the liquidation-volume EWMA (panic sellers)
    prog_account: Array  # (P,) int32 scripted flows: account
    prog_market: Array  # (P,) int32
    prog_side: Array  # (P,) +1 buy / -1 sell
    prog_start: Array  # (P,) int32 first tick
    prog_end: Array  # (P,) int32 tick after the last
    prog_qty: Array  # (P,) base units per tick (market orders)
    prog_active: Array  # (P,) bool
    prog_limit: Array  # (P,) price limit as a fraction off the market's reference (0 = none)
    prog_carry: Array  # (P,) bool: a slice's unfilled part is carried to the next tick
    lp_skew_bps: Array  # (M,) LP quote-centre skew per unit of inventory deviation, bps
    lp_inv_unit: Array  # (M,) inventory deviation (base units) that moves the centre lp_skew_bps
    lp_perp_flat: Array  # () 1: perp skew against the LP's whole position; 0: against its start
    lp_loss_withdraw: Array  # () LP depth /= 1 + k * drawdown / lp_loss_ref
    lp_loss_ref: Array  # () LP equity drawdown (USDT) that counts as one unit of loss
    lp_widen: Array  # (M,) half spread *= 1 + k * max(vol / vol_ref - 1, 0)
    int_vol_ref: Array  # (M,) reference realized vol per sqrt-second of internal prices


@struct.dataclass
class AccountInit:
    bal: Array  # (A, 4)
    debt: Array  # (A, 4)
    ext_bal: Array  # (A, 4) balances held on external venues
    pos: Array  # (A,)
    entry: Array  # (A,)
    iso_margin: Array  # (A,)
    mode: Array  # (A,) int32 CROSS / ISOLATED
    lev: Array  # (A,) chosen leverage
    # An account's own trading-fee rates (a market-maker programme, a VIP level): where its
    # mask is set the rate replaces rules.maker_fee / rules.taker_fee for that account and
    # stays fixed when the schedule changes the rules; elsewhere the rules in force apply
    # (`mechanisms.accounts.fee_rates`). System accounts have none.
    maker_fee: Array  # (A,) own maker fee rate (negative = rebate), read where own_maker_fee
    taker_fee: Array  # (A,) own taker fee rate, read where own_taker_fee
    own_maker_fee: Array  # (A,) bool: the account pays maker_fee, not rules.maker_fee
    own_taker_fee: Array  # (A,) bool: the account pays taker_fee, not rules.taker_fee


@struct.dataclass
class Params:
    dims: Dims = struct.field(pytree_node=False)
    dt: Array  # () seconds per tick
    basis_window_s: Array  # () mark-price basis moving-average window
    markets: MarketParams
    exo: ExoParams
    rules: ExchangeRules
    schedule: Schedule
    accounts: AccountInit
    pop: PopParams
    first_funding_s: Array  # () time of the first funding settlement, seconds
    name: str = struct.field(pytree_node=False, default="custom")


@struct.dataclass
class Orders:
    """Externally submitted orders for one tick, shape (K,) each. kind=0 rows are empty."""

    account: Array  # (K,) int32
    market: Array  # (K,) int32 (asset index for transfers/borrow/repay)
    side: Array  # (K,) int32 +1 buy, -1 sell (cancel: 0 both)
    kind: Array  # (K,) int32 KIND_*
    qty: Array  # (K,) float
    price: Array  # (K,) float limit price (0 = none for market orders)


@struct.dataclass
class Book:
    """Books of all markets. The owner axis Q = dims.n_makers holds maker slots, not
    accounts: `owner[q]` is the account of slot q (-1 = never used); slot LP_SLOT is the
    LP's. `engine.book_by_account` gives the (M, 2, G, A) per-account view."""

    qty: Array  # (M, 2, G, Q) resting size per maker slot
    ahead: Array  # (M, 2, G, Q) size queued ahead of the slot's order at that level
    origin: Array  # (M,) int32 grid tick index of level 0: price_j = (origin + j) * tick
    owner: Array  # (Q,) int32 account of each maker slot (-1 = free)


@struct.dataclass
class AccountState:
    bal: Array  # (A, 4) free balances (resting spot orders hold their reserve in the book)
    debt: Array  # (A, 4) borrowed amounts owed to the lender
    ext_bal: Array  # (A, 4) balances on external venues
    pos: Array  # (A,) signed perp position, base units
    entry: Array  # (A,) entry price
    iso_margin: Array  # (A,) isolated margin (0 for cross accounts)
    mode: Array  # (A,) int32
    lev: Array  # (A,) chosen leverage
    transit_amt: Array  # (A, X) amount in flight
    transit_asset: Array  # (A, X) int32
    transit_due: Array  # (A, X) int32 tick of arrival
    transit_in: Array  # (A, X) bool, True = towards the exchange


@struct.dataclass
class PriceState:
    ext: Array  # (3, V) external venue prices of BASE, STABLE, LST
    ext_common: Array  # (3,) common external price (venues disperse around it)
    last: Array  # (M,) last traded price per market
    last_trade_t: Array  # (M,) int32 tick of each market's last trade (reset: 0)
    index: Array  # (3,) index price of BASE, STABLE, LST
    mark: Array  # () perp mark price
    basis_buf: Array  # (W,) ring buffer of (perp mid - index) samples
    basis_count: Array  # () int32 samples written so far
    prem_wsum: Array  # () sum_i i * P_i over the current funding interval
    prem_w: Array  # () sum_i i
    prem_n: Array  # () int32 samples in the current interval
    funding_rate: Array  # () rate predicted for the next settlement
    last_funding_rate: Array  # () rate paid at the last settlement
    next_funding_s: Array  # () time of the next settlement, seconds
    vol: Array  # (3,) EWMA realized vol per sqrt-second of the external prices
    flow: Array  # () last tick's net taker notional on the BASE books, arbitrage left out (buys +)
    impact: Array  # () log offset of the venues' BASE price from that flow (decaying)


@struct.dataclass
class PopState:
    """Memory of the background population and of the exogenous volatility factor."""

    ema_fast: Array  # () fast EWMA of the perp mark (log)
    ema_slow: Array  # () slow EWMA of the perp mark (log)
    peak_spot: Array  # () running peak of the BASE spot last price
    liq_ewma: Array  # () EWMA of liquidated notional, USDT per second
    eq0: Array  # (A,) starting equity of each account (re-entry reference)
    sv: Array  # (3,) log stochastic-volatility factor of the external prices
    int_last: Array  # (M,) internal last prices at the previous tick
    int_vol: Array  # (M,) EWMA realized vol per sqrt-second of internal last prices
    lp_peak: Array  # () running peak of the LP's marked equity, USDT
    lp_eq: Array  # () LP's marked equity, USDT
    prog_done: Array  # (P,) base units each scripted program traded so far


@struct.dataclass
class SimState:
    t: Array  # () int32 tick
    book: Book
    acct: AccountState
    px: PriceState
    rules: ExchangeRules
    enforce: Array  # (A,) int32 pending rule-enforcement policy per account (0 = none)
    pop: PopState
    # () USDT written off so far: deficits the insurance fund could not back (bad debt).
    # The write-off credits the fund, so the USDT ledger (`engine.audit`) counts it.
    bad_debt: Array


@struct.dataclass
class TickEvents:
    """Per-tick record. Stacked over ticks by `rollout`."""

    t: Array  # () int32
    time_s: Array  # ()
    ext_px: Array  # (3,) mean external price of BASE, STABLE, LST
    spot_px: Array  # () BASE/USDT last
    perp_px: Array  # () perp last
    index_px: Array  # (3,) index of BASE, STABLE, LST
    mark_px: Array  # ()
    basis: Array  # () (perp mid - spot mid) / spot mid
    mark_index_gap: Array  # () (mark - index) / index
    funding_rate: Array  # () predicted rate for the next settlement
    funding_paid: Array  # () rate settled this tick (0 when none)
    funding_settled: Array  # () bool
    oi_long: Array  # ()
    oi_short: Array  # ()
    depth_1pct: Array  # (M, 2) resting base units within 1% of mid, bid / ask
    best_bid: Array  # (M,)
    best_ask: Array  # (M,)
    volume: Array  # (M,) base units traded
    liq_notional_long: Array  # () liquidated long notional (book fills + takeover + ADL)
    liq_notional_short: Array  # ()
    liq_accounts: Array  # () int32 accounts liquidated this tick (rounds summed)
    liq_mask: Array  # (A,) bool accounts liquidated this tick
    liq_backlog: Array  # () int32 accounts still queued for liquidation after the last round
    equity: Array  # (A,) each account's marked equity in USDT (engine.marked_equity), end of tick
    collateral_sold: Array  # (4,) units of each asset sold by the engine
    collateral_sold_usdt: Array  # () proceeds of those sales
    insurance_fund: Array  # () fund balance after the tick
    insurance_equity: (
        Array  # () fund's marked equity: USDT + position at mark + collateral at index
    )
    insurance_draw: Array  # () fund paid out this tick (>0 = fund shrank from losses)
    if_takeover_notional: Array  # ()
    adl_count: Array  # () int32 counterparty positions hit by ADL
    adl_notional: Array  # ()
    bad_debt: Array  # () deficit the fund could not back, written off this tick
    forced_reduce_notional: Array  # () cut by rule enforcement
    collateral_px: Array  # (2,) internal spot price of STABLE, LST
    collateral_index: Array  # (2,) index of STABLE, LST
    fees: Array  # () fees collected this tick
    fees_paid: Array  # (A,) trading fees each account paid this tick (maker + taker, USDT)
    rejects: Array  # (N_REASONS,) int32 count of external orders per reason
    bg_volume: Array  # (M,) base units traded by background orders (scripted flows included)
    bg_rejects: Array  # () int32 background orders rejected (margin, balance, liquidity)
    arb_volume: Array  # () base units traded by basis and cross-venue arbitrageurs
    prog_filled: Array  # (P,) base units each scripted program (population.programs row) traded
    grid_edge: Array  # (M,) bool: the book traded and its last trade is on its grid's end level
    venue_impact: Array  # () log offset of the venues' BASE price caused by the flow traded here
    order_reason: Array  # (K,) int32 reason of each external order (0 ok)
    order_filled: Array  # (K,) base units filled
    order_avg_px: Array  # (K,) average fill price (0 if none)
    order_unfilled: Array  # (K,) remainder not filled (market) or not rested
    rules_changed: Array  # () int32 schedule rows that took effect this tick
    next_change_s: Array  # () seconds to the next announced change (-1 = none)


def zeros_like_tree(tree):
    return jax.tree_util.tree_map(jnp.zeros_like, tree)
