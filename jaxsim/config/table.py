"""The table of config fields: every checked scenario value, one `Field` row each.

A row: `row(path, range, kind, target=..., unit=..., default=..., help=...)`. The range is
written as the error messages print it (`"(0, 0.1]"`: round = open end; `inf]` admits
+inf, as the loader always has); kind is num unless given; `target` is the `Params`
attribute filled; `unit` converts YAML units to Params units. Rows are in the order the
loader checks them. `[]` in a path is a list index, `*` a mapping key.

Cross-field rules (tier monotonicity, index weights summing to 1, ...) are the named
`check_*` functions of the builder modules. The tests check that every `ExchangeRules`
field and every cohort parameter has a row.
"""

from __future__ import annotations

from jaxsim.config.fields import (
    ANNUAL_VOL,
    BPS_PER_MUSDT,
    HALFLIFE_H,
    HOURS,
    PER_DAY,
    PER_HOUR,
    PER_SQRT_HOUR,
    PERCENT,
    Table,
    row,
)
from jaxsim.types import N_SYSTEM, POLICY_NAMES

MARKET_KEYS = ("spot", "perp", "stable", "lst")
ASSET_KEYS = ("usdt", "base", "stable", "lst")
INDEX_KEYS = ("base", "stable", "lst")
MK = dict(kind="keyed", keys=MARKET_KEYS)  # a mapping market -> number
AS = dict(kind="keyed", keys=ASSET_KEYS)  # a mapping asset -> number
IX = dict(kind="keyed", keys=INDEX_KEYS)  # a mapping index asset -> number

TOP = [
    row("dt_s", "(0, 3600]", target="dt", help="seconds per tick"),
    row("basis_window_s", "(0, inf]", target="basis_window_s", help="mark basis window, s"),
    row(
        "first_funding_h",
        "[0, 24]",
        target="first_funding_s",
        unit=HOURS,
        default=0.0,
        help="time from the start to the first funding settlement, h (0 = one interval)",
    ),
]

DIMS = [
    row(f"dims.{name}", rng, "int", target=f"dims.{name}", help=help)
    for name, rng, help in [
        ("n_accounts", f"[{N_SYSTEM + 1}, 4096]", "users + 4 system accounts"),
        ("n_levels", "[8, 4096]", "price levels per market grid"),
        ("max_orders", "[1, 1024]", "external orders per tick"),
        ("n_tiers", "[1, 64]", "rows of the bracket table (padded)"),
        ("n_schedule", "[1, 1024]", "rule-change rows"),
        ("cascade_rounds", "[1, 64]", "liquidation rounds per tick"),
        ("liq_per_round", "[1, 4096]", "accounts liquidated per round at most"),
        ("n_venues", "[1, 32]", "external venues in the index"),
        ("basis_window", "[1, 4096]", "basis moving-average slots"),
        ("transfer_slots", "[1, 64]", "transfers per tick"),
        ("n_shocks", "[1, 256]", "exogenous.shocks rows"),
        ("n_programs", "[1, 256]", "population.programs rows"),
        ("n_makers", "[2, 4097]", "book owner slots: the LP's + users resting orders"),
    ]
]

_E = "exogenous"
EXOGENOUS = [
    row(f"{_E}.price0", "(0, inf]", **IX, target="exo.price0", help="start prices"),
    row(f"{_E}.vol_annual", "[0, 20]", **IX, unit=ANNUAL_VOL, target="exo.vol_per_sqrt_s"),
    row(f"{_E}.vol_ref_annual", "(0, 20]", **IX, unit=ANNUAL_VOL, target="exo.vol_ref"),
    row(f"{_E}.lst_rate", "(0, inf]", target="exo.lst_rate", help="BASE one LST redeems for"),
    row(f"{_E}.venue_dispersion", "[0, 0.5]", target="exo.venue_dispersion"),
    row(
        f"{_E}.stable_reversion_per_h",
        "[0, inf]",
        unit=PER_HOUR,
        target="exo.stable_reversion_per_s",
        help="pull of STABLE (and the LST premium) back to redemption",
    ),
    row(
        f"{_E}.vol_of_vol_per_h",
        "[0, 100]",
        **IX,
        unit=PER_SQRT_HOUR,
        target="exo.vol_of_vol_per_sqrt_s",
        help="stochastic volatility: vol of the log-vol factor",
    ),
    row(f"{_E}.sv_reversion_per_h", "[0, 3600]", unit=PER_HOUR, target="exo.sv_reversion_per_s"),
    row(f"{_E}.jumps_per_day", "[0, 1e5]", **IX, unit=PER_DAY, target="exo.jump_rate_per_s"),
    row(f"{_E}.jump_std_pct", "[0, 50]", **IX, unit=PERCENT, target="exo.jump_std"),
    row(
        f"{_E}.venue_impact_bps_per_musdt",
        "[0, 1e3]",
        unit=BPS_PER_MUSDT,
        target="exo.venue_impact",
        help="venue BASE move per 1M USDT of the exchange's net taker flow",
    ),
    row(
        f"{_E}.venue_impact_halflife_h",
        "[0, inf]",
        unit=HALFLIFE_H,
        target="exo.venue_impact_decay_per_s",
        help="half-life of the venue impact (0 = permanent)",
    ),
]

_S = "exogenous.shocks[]"
SHOCK = [
    row(f"{_S}.asset", kind="choice", keys=INDEX_KEYS, target="exo.shock_asset"),
    row(f"{_S}.start_s", "[0, inf]", target="exo.shock_start_tick"),
    row(f"{_S}.duration_s", "[0, inf]", target="exo.shock_ticks"),
    row(f"{_S}.return_pct", "[-99.9, 1000]", target="exo.shock_log_return", help="total, %"),
]

MARKETS = [
    row(f"markets.{name}", rng, **MK, target=f"markets.{name}", help=help)
    for name, rng, help in [
        ("tick_size", "(0, inf]", "price grid step"),
        ("lp_depth", "[0, inf]", "base units per level at the touch"),
        ("lp_decay_bps", "(0, inf]", "LP depth decay away from the touch, bp"),
        ("lp_half_spread_ticks", "[0, 1000]", "LP half spread, ticks"),
        ("lp_resilience_per_s", "[0, inf]", "LP depth refill rate"),
        ("lp_ref_weight", "[0, 1]", "weight of the external price in the LP's reference"),
        ("lp_vol_withdraw", "[0, inf]", "LP depth withdrawn per unit of excess vol"),
    ]
]


def _rule(path: str, rng: str, target: str, help: str = "", kind: str = "num", **kw):
    return row(f"rules.{path}", rng, kind, target=f"rules.{target}", help=help, **kw)


# The bracket table's and the index's rows check each element; scalar rules follow in the
# loader's order (`rules.build_rules` reads them in a loop).
RULES = [
    _rule("tiers[].floor", "[0, inf]", "tier_floor", "notional floor, USDT"),
    _rule("tiers[].max_leverage", "[1, 1000]", "tier_max_lev"),
    _rule("tiers[].mmr", "(0, 1]", "tier_mmr", "maintenance margin rate"),
    _rule("index.*.venues[]", "[0, 1]", "index_weights", "weight of each venue"),
    _rule("index.*.internal", "[0, 1]", "index_weights", "weight of the own book", default=0.0),
    _rule("index.*.redemption", "[0, 1]", "index_weights", "redemption weight", default=0.0),
    _rule("index.*.clip", "(0, 1]", "index_clip", "clip of a source", default=0.01),
    _rule("index.*.floor", "[0, inf]", "price_floor", "lowest index price", default=0.0),
    _rule("funding.interest_8h", "[-0.01, 0.01]", "funding_interest", "interest per 8 h"),
    _rule("funding.clamp_8h", "[0, 0.01]", "funding_clamp", "clamp of premium - interest"),
    _rule(
        "funding.cap",
        "(0, 0.1]",
        "funding_cap",
        "per interval; auto = 0.75 x tier-1 MMR, 3% at <= 25x (follows the tiers in force)",
    ),
    _rule("funding.interval_h", "(0, 24]", "funding_interval_s", unit=HOURS),
    _rule("funding.imn_quote", "(0, inf]", "imn_quote", "impact margin notional, USDT"),
    _rule("price_band", "(0, 0.99]", "price_band", "order price band", **MK),
    _rule("position_limit", "(0, inf]", "position_limit", "USDT notional per account"),
    _rule("depth_limit.mult", "[0, 1000]", "depth_limit_mult", "per USDT in the band; 0 = off"),
    _rule("depth_limit.band", "(0, 0.5]", "depth_limit_band", "band around mid"),
    _rule("depth_limit.floor", "[0, inf]", "depth_limit_floor", "USDT"),
    _rule("haircut", "[0, 1)", "haircut", "collateral haircut", **AS),
    _rule("fees.maker", "[-0.01, 0.01]", "maker_fee", "negative = rebate"),
    _rule("fees.taker", "[0, 0.01]", "taker_fee"),
    _rule("fees.liquidation", "[0, 0.1]", "liq_fee"),
    _rule("adl", "", "adl_on", "auto-deleveraging on", kind="bool"),
    _rule("if_position_cap", "[0, inf]", "if_position_cap", "insurance fund position cap"),
    _rule("withdrawal_delay_s", "[0, 2592000]", "withdrawal_delay_s", "at most 30 days"),
    _rule("partial_liquidation", "", "partial_liquidation", "liquidate in steps", kind="bool"),
    _rule("if_unwind_per_h", "[0, 3600]", "if_unwind_per_s", unit=PER_HOUR),
    _rule("sale_band", "[0, 1]", "sale_band", "engine sales vs the tick's index; 1 = none"),
    _rule(
        "borrow_interest_8h",
        "[0, 0.01]",
        "borrow_interest",
        "interest per 8 h on debts and negative USDT, charged at funding settlements",
        default=0.0001,
    ),
]

_SC = "schedule[]"
SCHEDULE = [
    row(
        f"{_SC}.announce_s", "[0, inf]", target="schedule.announce_tick", help="default: effective"
    ),
    row(f"{_SC}.effective_s", "[0, inf]", default=None, target="schedule.effective_tick"),
    row(f"{_SC}.field", kind="choice", help="a rule field, tiers or max_leverage_cap"),
    row(f"{_SC}.value", target="schedule.value", help="in the range of the rule field"),
    row(f"{_SC}.policy", kind="choice", keys=POLICY_NAMES, default="grandfather"),
    row(f"{_SC}.index", "[0, inf]", "int", target="schedule.flat_index", help="vector element"),
    row(f"{_SC}.max_leverage_cap", "[1, 1000]", help="the value of a max_leverage_cap row"),
]

_U = "accounts.users[]"
ACCOUNTS = [
    *(row(f"{_U}.{k}", "[0, inf]", default=0.0, target="accounts.bal") for k in ASSET_KEYS),
    row(f"{_U}.debt", "[0, inf]", **AS, key_default=0.0, default={}, target="accounts.debt"),
    row(f"{_U}.external", "[0, inf]", **AS, key_default=0.0, default={}, target="accounts.ext_bal"),
    row(f"{_U}.position", default=0.0, target="accounts.pos", help="perp position, BASE"),
    row(f"{_U}.entry", "(0, inf]", target="accounts.entry", help="default: the start price"),
    row(f"{_U}.mode", kind="choice", keys=("cross", "isolated"), default="cross"),
    row(f"{_U}.leverage", "[1, inf]", default=10.0, target="accounts.lev", help="<= tier 1's"),
    row(f"{_U}.isolated_margin", "[0, inf]", default=0.0, target="accounts.iso_margin"),
    # The account's own fee rates (ranges as rules.fees); absent = the regular schedule.
    row(
        f"{_U}.fees.maker",
        "[-0.01, 0.01]",
        default=None,
        target="accounts.maker_fee",
        help="own maker rate, negative = rebate; fixed (schedules move rules.fees only)",
    ),
    row(
        f"{_U}.fees.taker",
        "[0, 0.01]",
        default=None,
        target="accounts.taker_fee",
        help="own taker rate; fixed (schedules move rules.fees only)",
    ),
    row("accounts.lp", "[0, inf]", **AS, target="accounts.bal", help="LP balances"),
    row("accounts.outside", "[0, inf]", **AS, target="accounts.bal", help="outside world"),
    row("accounts.insurance_fund", "[0, inf]", target="accounts.bal", help="USDT"),
]

# Behaviour parameters a cohort row may set (besides account, behaviour, market).
COHORT = [
    row(f"population.cohorts[].{name}", rng, default=default, target=f"pop.{name}", help=help)
    for name, default, rng, help in [
        ("side", 0.0, "[-1, 1]", "direction: +1 long, -1 short"),
        ("bias", 0.0, "[-1, 1]", "constant tilt of the target"),
        ("lev_target", 1.0, "[0, 125]", "target leverage (spot retail: at most 1)"),
        ("trend", 0.0, "[-10, 10]", "trend-following weight"),
        ("funding", 0.0, "[0, 10]", "funding-chasing weight"),
        ("act_prob", 1.0, "[0, 1]", "probability of acting per tick"),
        ("speed", 0.5, "[0, 1]", "share of the gap to target traded per action"),
        ("noise", 0.0, "[0, 10]", "noise on the target"),
        ("threshold", 0.0, "[0, 1]", "trigger (panic drawdown, spot dip, ...)"),
        ("exit", 0.0, "[0, 1e12]", "exit level"),
        ("reentry_per_h", 0.0, "[0, 100]", "re-entry rate after an exit"),
        ("reentry_below", 0.0, "[0, 1]", "re-enter only below this drawdown"),
        ("min_trade", 0.01, "[0, 1]", "smallest trade / equity"),
        ("hold", 0.0, "[0, 1]", "share held back"),
        ("bid", 0.0, "[0, 1]", "xvenue_arb only: rest a limit bid"),
    ]
]

_P = "population.programs[]"
PROGRAM = [
    row(f"{_P}.limit_pct", "[0, 99]", default=0.0, unit=PERCENT, target="pop.prog_limit"),
    row(f"{_P}.carry", kind="bool", default=False, target="pop.prog_carry"),
    row(f"{_P}.market", kind="choice", keys=MARKET_KEYS, target="pop.prog_market"),
    row(f"{_P}.side", kind="choice", keys=("buy", "sell"), target="pop.prog_side"),
    row(f"{_P}.start_s", "[0, inf]", target="pop.prog_start"),
    row(f"{_P}.duration_s", "(0, inf]", target="pop.prog_end"),
    row(f"{_P}.qty", "(0, inf]", target="pop.prog_qty", help="total over the window"),
]

POPULATION = [
    row("population.trend_fast_s", "(0, inf]", default=600.0, target="pop.trend_fast_s"),
    row("population.trend_slow_s", "[0, inf]", default=3600.0, target="pop.trend_slow_s"),
    row("population.trend_scale", "(0, inf]", default=0.005, target="pop.trend_scale"),
    row("population.liq_ewma_s", "(0, inf]", default=600.0, target="pop.liq_ewma_s"),
]

_MM = "population.mm"
MM = [
    row(f"{_MM}.skew_bps", "[0, inf]", **MK, default=0.0, target="pop.lp_skew_bps"),
    row(f"{_MM}.inv_unit", "(0, inf]", **MK, default=1.0, target="pop.lp_inv_unit"),
    row(
        f"{_MM}.perp_skew_vs",
        kind="choice",
        keys=("start", "flat"),
        default="start",
        target="pop.lp_perp_flat",
        help="'start': skew against the LP's starting perp position, 'flat': its whole one",
    ),
    row(f"{_MM}.loss_withdraw", "[0, inf]", default=0.0, target="pop.lp_loss_withdraw"),
    row(f"{_MM}.loss_ref_usdt", "(0, inf]", default=1e6, target="pop.lp_loss_ref"),
    row(f"{_MM}.widen", "[0, inf]", **MK, default=0.0, target="pop.lp_widen"),
    row(
        f"{_MM}.int_vol_ref_annual",
        "[0, inf]",
        **MK,
        default=0.5,
        unit=ANNUAL_VOL,
        target="pop.int_vol_ref",
    ),
]

FIELDS = Table(
    [
        *TOP,
        *DIMS,
        *EXOGENOUS,
        *SHOCK,
        *MARKETS,
        *RULES,
        *SCHEDULE,
        *ACCOUNTS,
        *COHORT,
        *PROGRAM,
        *POPULATION,
        *MM,
    ]
)

# name -> (default, lo, hi) of the cohort behaviour parameters (as before the table).
COHORT_PARAMS: dict[str, tuple[float, float, float]] = {
    f.key: (f.default, f.lo, f.hi) for f in FIELDS.under("population.cohorts[]")
}
