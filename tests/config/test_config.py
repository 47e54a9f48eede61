"""`load_scenario` validation: bad values raise ConfigError naming the field; overrides,
variants and derived values (LP net position, auto funding cap) apply."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
from support import TESTBED

import jaxsim
from jaxsim import ConfigError, list_scenarios, list_variants, load_scenario, margin
from jaxsim.config import COHORT_PARAMS, FIELDS, RULE_RANGES, build_params, scenario_config
from jaxsim.config.fields import REQUIRED, get_path
from jaxsim.mechanisms.funding import cap_in_force
from jaxsim.types import PERP, SPOT, Dims, ExchangeRules, ExoParams, MarketParams, PopParams

BTC_TIERS = [[0, 125, 0.004], [50000, 100, 0.005], [600000, 75, 0.0065]]


def _raises(overrides=None, *fields, name=TESTBED, variant=None):
    """load_scenario must raise ConfigError whose message names every string in `fields`."""
    with pytest.raises(ConfigError) as ei:
        load_scenario(name, variant=variant, overrides=overrides)
    msg = str(ei.value)
    for f in fields:
        assert f in msg, f"{f!r} not in error message {msg!r}"
    return msg


# ------------------------------------------------------------------ bad values


def test_negative_user_leverage():
    users = [{"name": "x", "usdt": 1000.0, "leverage": -5}]
    _raises({"accounts.users": users}, "accounts.users[0].leverage")


def test_user_leverage_above_tier1_max():
    users = [{"name": "ok", "usdt": 1.0}, {"name": "x", "usdt": 1000.0, "leverage": 200}]
    _raises({"accounts.users": users}, "accounts.users[1].leverage")


def test_unknown_user_key():
    _raises(
        {"accounts.users": [{"name": "x", "usdt": 1.0, "colour": "red"}]},
        "accounts.users[0]",
        "colour",
    )


def test_user_fee_rates_name_field_and_range():
    """`accounts.users[].fees` takes maker (rules.fees.maker's range) and taker (rules.fees.taker's)."""

    def user_fees(fees):
        return {"accounts.users": [{"name": "x", "usdt": 1.0, "fees": fees}]}

    _raises(user_fees({"maker": 0.02}), "accounts.users[0].fees.maker", "[-0.01, 0.01]")
    _raises(user_fees({"maker": -0.05}), "accounts.users[0].fees.maker", "[-0.01, 0.01]")
    _raises(user_fees({"taker": -0.0001}), "accounts.users[0].fees.taker", "[0.0, 0.01]")
    _raises(user_fees({"taker": "vip9"}), "accounts.users[0].fees.taker", "number")
    _raises(user_fees({"rebate": 0.0001}), "accounts.users[0].fees.rebate", "maker", "taker")
    _raises(user_fees(0.0001), "accounts.users[0].fees", "mapping")


def test_user_fee_rates_fill_the_account_params():
    """A rate given replaces the regular one for that account (the mask says which);
    missing rates and the system accounts follow rules.fees."""
    users = [
        {"name": "lpp", "usdt": 1.0, "fees": {"maker": -0.00005}},
        {"name": "vip", "usdt": 1.0, "fees": {"maker": 0.0, "taker": 0.00017}},
        {"name": "plain", "usdt": 1.0, "fees": {}},
        {"name": "none", "usdt": 1.0},
    ]
    p = load_scenario(TESTBED, overrides={"accounts.users": users})
    a, n = p.accounts, p.dims.n_accounts
    own_m = np.asarray(a.own_maker_fee)
    own_t = np.asarray(a.own_taker_fee)
    assert own_m.dtype == bool and own_m.shape == own_t.shape == (n,)
    assert own_m.tolist() == [True, True] + [False] * (n - 2)
    assert own_t.tolist() == [False, True] + [False] * (n - 2)
    assert float(a.maker_fee[0]) == pytest.approx(-0.00005)
    assert float(a.maker_fee[1]) == 0.0  # a rate of zero is a rate (the mask is set)
    assert float(a.taker_fee[1]) == pytest.approx(0.00017)


def test_index_weights_must_sum_to_one():
    _raises({"rules.index.base.venues": [0.5, 0.3, 0.3]}, "rules.index.base", "sum to 1")
    _raises({"rules.index.lst": {"internal": 0.5, "redemption": 0.4}}, "rules.index.lst")


def test_index_weights_wrong_count():
    _raises({"rules.index.base.venues": [0.5, 0.5]}, "rules.index.base.venues")


def test_tiers_floor_not_monotone():
    tiers = [[0, 125, 0.004], [50000, 100, 0.005], [40000, 75, 0.0065]]
    _raises({"rules.tiers": tiers}, "rules.tiers", "floor")


def test_tiers_mmr_not_monotone():
    tiers = [[0, 125, 0.004], [50000, 100, 0.003]]
    _raises({"rules.tiers": tiers}, "rules.tiers", "mmr")


def test_tiers_max_leverage_not_monotone():
    tiers = [[0, 100, 0.004], [50000, 125, 0.005]]
    _raises({"rules.tiers": tiers}, "rules.tiers", "max_leverage")


def test_tiers_first_floor_zero():
    _raises({"rules.tiers": [[10, 125, 0.004]]}, "rules.tiers[0].floor")


def test_mmr_not_below_initial_margin():
    # 125x -> IMR 0.8%; MMR 0.8% is not below it.
    _raises({"rules.tiers": [[0, 125, 0.008]]}, "rules.tiers[0]", "mmr")
    _raises({"rules.tiers": [[0, 125, 0.004], [50000, 10, 0.2]]}, "rules.tiers[1]", "mmr")


def test_too_many_tiers_for_dims():
    tiers = [[i * 1000, 10, 0.01] for i in range(5)]
    _raises({"rules.tiers": tiers, "dims.n_tiers": 4}, "rules.tiers", "dims.n_tiers")


def test_unknown_top_level_key():
    _raises({"bogus_key": 1}, "bogus_key")


def test_unknown_nested_key():
    _raises({"rules.fees.bogus": 0.1}, "rules.fees.bogus")
    _raises({"rules": {"funding": {"interval": 4}}}, "rules.funding.interval")
    _raises({"markets.tick_size.futures": 1.0}, "markets.tick_size.futures")


def test_unknown_scenario():
    _raises(None, "no_such_scenario_xyz", name="no_such_scenario_xyz")


def test_unknown_variant():
    _raises(None, "variant", "nope", variant="nope")


def test_scenario_files_reread_when_changed_and_never_shared(tmp_path):
    """Parsed YAML is cached per file content: an edited file gives its new values, a
    caller editing the dict it got changes nobody else's, syntax errors name the file."""
    path = tmp_path / "mine.yaml"
    path.write_text("extends: calm\nrules:\n  fees:\n    taker: 0.0007\n")
    cfg = scenario_config(path)
    assert cfg["rules"]["fees"]["taker"] == 0.0007
    want = copy.deepcopy(cfg)
    cfg["rules"]["fees"]["taker"] = 1.0
    assert scenario_config(path) == want
    path.write_text("extends: calm\nrules:\n  fees:\n    taker: 0.0009\n")
    assert scenario_config(path)["rules"]["fees"]["taker"] == 0.0009
    path.write_text("extends: calm\nrules: [1,\n")
    with pytest.raises(Exception, match="mine.yaml"):
        scenario_config(path)


def test_schedule_bad_field():
    rows = [{"effective_s": 100.0, "field": "max_fun", "value": 1.0}]
    _raises({"schedule": rows}, "schedule[0].field", "max_fun")


def test_schedule_bad_policy():
    rows = [{"effective_s": 100.0, "field": "position_limit", "value": 1e6, "policy": "nuke"}]
    _raises({"schedule": rows}, "schedule[0].policy", "nuke")


def test_schedule_unknown_key():
    rows = [{"effective_s": 100.0, "field": "position_limit", "value": 1e6, "when": 3}]
    _raises({"schedule": rows}, "schedule[0]")


def test_schedule_effective_before_announce():
    rows = [{"announce_s": 100.0, "effective_s": 50.0, "field": "position_limit", "value": 1e6}]
    _raises({"schedule": rows}, "schedule[0].effective_s", "announce_s")


def test_schedule_two_values_for_one_field_at_one_time():
    rows = [
        {"effective_s": 100.0, "field": "position_limit", "value": 1e6},
        {"effective_s": 100.0, "field": "position_limit", "value": 2e6},
    ]
    _raises({"schedule": rows}, "position_limit twice", "effective_s=100")
    # A leverage cap and a tier table at one time both set the tiers' max leverage.
    rows = [
        {"effective_s": 100.0, "field": "max_leverage_cap", "value": 20.0},
        {"effective_s": 100.0, "field": "tiers", "value": [[0, 50, 0.01]]},
    ]
    _raises({"schedule": rows}, "tier_max_lev[0] twice")


def test_schedule_too_many_rows_for_dims():
    rows = [{"effective_s": 10.0 * i, "field": "position_limit", "value": 1e6} for i in range(3)]
    _raises({"schedule": rows, "dims.n_schedule": 2}, "schedule", "dims.n_schedule")


def test_too_many_users_for_dims():
    # calm has 8 users; 10 accounts leave room for 6 (4 are system accounts).
    _raises({"dims.n_accounts": 10}, "accounts.users", "dims.n_accounts")


def test_tick_grid_covering_under_one_percent():
    # 64 levels x 1 USDT = 64 USDT < 1% of 100,000.
    _raises({"markets.tick_size.perp": 1.0}, "markets.tick_size.perp")
    # Same with fewer levels: 8 x 50 = 400 < 1,000.
    _raises({"dims.n_levels": 8}, "markets.tick_size", "dims.n_levels")


@pytest.mark.parametrize(
    "key, value",
    [
        ("rules.fees.taker", -0.001),
        ("rules.funding.interval_h", 0.0),
        ("rules.funding.cap", -0.01),
        ("rules.adl", "yes"),
        ("dt_s", 0.0),
        ("exogenous.vol_annual.base", -0.1),
        ("dims.cascade_rounds", 0),
        ("rules.price_band.perp", 1.5),
        ("exogenous.venue_impact_bps_per_musdt", -1.0),
        ("exogenous.venue_impact_bps_per_musdt", 2000.0),
        ("exogenous.venue_impact_halflife_h", -1.0),
    ],
)
def test_out_of_range_scalars(key, value):
    _raises({key: value}, key)


def test_bad_perp_skew_reference():
    _raises({"population.mm.perp_skew_vs": "mark"}, "population.mm.perp_skew_vs", "mark")
    assert float(load_scenario(TESTBED).pop.lp_perp_flat) == 0.0
    p = load_scenario(TESTBED, overrides={"population.mm.perp_skew_vs": "flat"})
    assert float(p.pop.lp_perp_flat) == 1.0


def test_bad_program_rows():
    """A program row has the six required keys and may add `limit_pct` (0-99) and `carry`
    (a bool); anything else names the row and field."""
    row = dict(account="agent", market="spot", side="sell", start_s=0.0, duration_s=60.0, qty=1.0)
    f = "population.programs[0]"
    _raises({"population.programs": [{**row, "limit": 1.0}]}, f, "limit_pct", "carry")
    _raises({"population.programs": [{**row, "limit_pct": -1.0}]}, f"{f}.limit_pct")
    _raises({"population.programs": [{**row, "limit_pct": 100.0}]}, f"{f}.limit_pct")
    _raises({"population.programs": [{**row, "carry": "yes"}]}, f"{f}.carry", "yes")
    no_qty = {k: v for k, v in row.items() if k != "qty"}
    _raises({"population.programs": [no_qty]}, f, "qty")
    p = load_scenario(
        TESTBED, overrides={"population.programs": [{**row, "limit_pct": 2.5, "carry": True}]}
    )
    assert float(p.pop.prog_limit[0]) == pytest.approx(0.025) and bool(p.pop.prog_carry[0])
    assert float(p.pop.prog_limit[1]) == 0.0 and not bool(p.pop.prog_carry[1])


def test_bad_spot_retail_cohort():
    """A retail cohort trades the perp (default) or spot; on spot it is long only and
    unlevered (it buys with the USDT it holds)."""
    row = {"account": "agent", "behaviour": "retail", "market": "spot", "side": 1}
    f = "population.cohorts[0]"
    _raises({"population.cohorts": [{**row, "market": "stable"}]}, f"{f}.market", "stable")
    _raises({"population.cohorts": [{**row, "side": -1}]}, f"{f}.side")
    _raises({"population.cohorts": [{**row, "side": 0}]}, f"{f}.side")
    _raises({"population.cohorts": [{**row, "lev_target": 2}]}, f"{f}.lev_target", "2")
    p = load_scenario(TESTBED, overrides={"population.cohorts": [row]})
    assert int(p.pop.market[0]) == SPOT
    p = load_scenario(
        TESTBED, overrides={"population.cohorts": [{**row, "market": "perp", "side": -1}]}
    )
    assert int(p.pop.market[0]) == PERP
    no_market = {k: v for k, v in row.items() if k != "market"}
    assert (
        int(load_scenario(TESTBED, overrides={"population.cohorts": [no_market]}).pop.market[0])
        == PERP
    )


def test_maker_slots_cover_the_limit_bidders():
    """dims.n_makers: at least 2; enough for the LP, every limit-bidding cohort and one
    learning account."""
    _raises({"dims.n_makers": 1}, "dims.n_makers", "1")
    row = {"account": "agent", "behaviour": "retail", "market": "spot", "side": 1}
    bidder = {**row, "threshold": 0.01}
    _raises({"dims.n_makers": 2, "population.cohorts": [bidder]}, "dims.n_makers", "at least 3")
    assert load_scenario(TESTBED, overrides={"dims.n_makers": 3, "population.cohorts": [bidder]})
    # A market-order cohort rests nothing: two slots do.
    assert load_scenario(TESTBED, overrides={"dims.n_makers": 2, "population.cohorts": [row]})
    # A bidding cross-venue arb rests a bid too; `bid` on any other behaviour is an error.
    arb = {"account": "agent", "behaviour": "xvenue_arb", "market": "stable", "bid": 1}
    _raises({"dims.n_makers": 2, "population.cohorts": [arb]}, "dims.n_makers", "at least 3")
    assert load_scenario(TESTBED, overrides={"dims.n_makers": 3, "population.cohorts": [arb]})
    _raises({"population.cohorts": [{**row, "bid": 1}]}, "bid", "xvenue_arb")


def test_bad_shock():
    shock = {"start_s": 0.0, "duration_s": 10.0, "asset": "gold", "return_pct": -10.0}
    _raises({"exogenous.shocks": [shock]}, "exogenous.shocks[0].asset", "gold")


# ------------------------------------------------------------------ positive cases


def test_list_scenarios_and_variants():
    assert "calm" in list_scenarios()
    assert "defaults" not in list_scenarios()
    assert "wide_fees" in list_variants(TESTBED)


def test_dotted_override_applies():
    p = load_scenario(TESTBED, overrides={"rules.fees.taker": 0.001})
    assert float(p.rules.taker_fee) == pytest.approx(0.001)
    # Untouched neighbours keep the defaults (maker 0.02%).
    assert float(p.rules.maker_fee) == pytest.approx(0.0002)


def test_nested_override_applies():
    p = load_scenario(
        TESTBED,
        overrides={
            "rules": {"fees": {"maker": -0.0001}},
            "dims": {"n_accounts": 12, "n_levels": 32},
        },
    )
    assert float(p.rules.maker_fee) == pytest.approx(-0.0001)
    assert float(p.rules.taker_fee) == pytest.approx(0.0005)
    assert p.dims.n_accounts == 12 and p.dims.n_levels == 32
    assert p.accounts.bal.shape == (12, 4)


def test_dotted_and_nested_mix():
    p = load_scenario(
        TESTBED, overrides={"rules.funding": {"interval_h": 4.0}, "rules.funding.interest_8h": 0.0}
    )
    assert float(p.rules.funding_interval_s) == pytest.approx(4 * 3600.0)
    assert float(p.rules.funding_interest) == 0.0


def test_variant_applies():
    base = load_scenario(TESTBED)
    v = load_scenario(TESTBED, variant="wide_fees")
    assert float(v.rules.maker_fee) == pytest.approx(0.0004)
    assert float(v.rules.taker_fee) == pytest.approx(0.001)
    assert float(base.rules.taker_fee) == pytest.approx(0.0005)
    # Overrides go on top of the variant.
    vo = load_scenario(TESTBED, variant="wide_fees", overrides={"rules.fees.taker": 0.002})
    assert float(vo.rules.taker_fee) == pytest.approx(0.002)
    assert float(vo.rules.maker_fee) == pytest.approx(0.0004)


def test_lp_takes_net_of_user_positions():
    users = [
        {"name": "a", "usdt": 1e5, "position": 5.0},
        {"name": "b", "usdt": 1e5, "position": -2.0},
        {"name": "c", "usdt": 1e5, "position": 1.5, "entry": 90000.0},
    ]
    p = load_scenario(TESTBED, overrides={"accounts.users": users})
    pos = np.asarray(p.accounts.pos, np.float64)
    lp = p.dims.lp
    assert pos[lp] == pytest.approx(-(5.0 - 2.0 + 1.5))
    assert pos.sum() == pytest.approx(0.0, abs=1e-6)
    assert np.maximum(pos, 0).sum() == pytest.approx(np.maximum(-pos, 0).sum())
    # LP enters at the BASE start price; user c keeps its own entry; a defaults to price0.
    assert float(p.accounts.entry[lp]) == pytest.approx(100000.0)
    assert float(p.accounts.entry[2]) == pytest.approx(90000.0)
    assert float(p.accounts.entry[0]) == pytest.approx(100000.0)


def test_calm_is_balanced():
    p = load_scenario(TESTBED)
    pos = np.asarray(p.accounts.pos, np.float64)
    assert pos[p.dims.lp] == 0.0
    assert pos.sum() == pytest.approx(0.0)


def test_funding_cap_auto():
    # auto loads as 0 and is computed from the tiers in force (funding.cap_in_force):
    # 0.75 x tier-1 MMR, 0.75 x 0.4% = 0.3% for the BTC table.
    p = load_scenario(TESTBED)
    assert float(p.rules.funding_cap) == 0.0
    assert float(cap_in_force(p.rules)) == pytest.approx(0.003)
    # A table with MMR1 = 1% gives 0.75%.
    p = load_scenario(
        TESTBED,
        overrides={"rules.tiers": [[0, 50, 0.01], [100000, 20, 0.025]], "accounts.users": []},
    )
    assert float(cap_in_force(p.rules)) == pytest.approx(0.0075)
    # Tier 1 at <= 25x: 3%.
    p = load_scenario(TESTBED, overrides={"rules.tiers": [[0, 25, 0.02]], "accounts.users": []})
    assert float(cap_in_force(p.rules)) == pytest.approx(0.03)
    # An explicit cap is kept.
    p = load_scenario(TESTBED, overrides={"rules.funding.cap": 0.02})
    assert float(p.rules.funding_cap) == pytest.approx(0.02)
    assert float(cap_in_force(p.rules)) == pytest.approx(0.02)


def test_tiers_padded_to_dims():
    p = load_scenario(TESTBED, overrides={"rules.tiers": BTC_TIERS})
    floor = np.asarray(p.rules.tier_floor, np.float64)
    assert floor.shape == (p.dims.n_tiers,)
    np.testing.assert_allclose(floor[:3], [0, 50000, 600000])
    # Padding rows are unreachable: a 1e12 notional stays in the last real tier.
    assert float(margin.max_leverage(np.float32(1e12), p.rules)) == 75


def test_schedule_rows_become_ticks():
    rows = [
        {
            "announce_s": 20.0,
            "effective_s": 50.0,
            "field": "position_limit",
            "value": 2e5,
            "policy": "force_reduce",
        }
    ]
    p = load_scenario(TESTBED, overrides={"schedule": rows})
    s = p.schedule
    # dt = 10 s: announce tick 2, effective tick 5.
    assert int(s.announce_tick[0]) == 2 and int(s.effective_tick[0]) == 5
    assert int(s.policy[0]) == jaxsim.types.POLICY_FORCE_REDUCE
    assert bool(s.active[0]) and not bool(s.active[1:].any())
    assert float(s.value[0]) == pytest.approx(2e5)


def test_max_leverage_cap_rows_lower_only_tiers_above_the_cap():
    """A cap writes one row per tier it lowers; tiers at or under it keep their value (and
    add no row), so a cut phased in several steps fits the schedule's rows."""
    p0 = load_scenario(TESTBED, overrides={"rules.tiers": BTC_TIERS})
    levs = np.asarray(p0.rules.tier_max_lev, np.float64)
    rows = [
        {"effective_s": 50.0, "field": "max_leverage_cap", "value": 80.0},
        {"effective_s": 90.0, "field": "max_leverage_cap", "value": 1000.0},  # lowers none
    ]
    p = load_scenario(TESTBED, overrides={"rules.tiers": BTC_TIERS, "schedule": rows})
    s = p.schedule
    active = np.asarray(s.active)
    n_above = int((levs > 80.0).sum())
    assert 0 < n_above < levs.size  # some tiers lowered, some not
    assert int(active.sum()) == n_above
    np.testing.assert_allclose(np.asarray(s.value)[active], 80.0)
    assert (np.asarray(s.effective_tick)[active] == 5).all()
    # The rules in force after the change: min(tier, cap) for every tier.
    from jax.flatten_util import ravel_pytree

    flat, unravel = ravel_pytree(p.rules)
    flat = np.asarray(flat, np.float64).copy()
    flat[np.asarray(s.flat_index)[active]] = np.asarray(s.value)[active]
    np.testing.assert_allclose(
        np.asarray(unravel(flat).tier_max_lev, np.float64), np.minimum(levs, 80.0)
    )
    # A cap acts on the table in force at its time: after a swap to a 200x first tier
    # (above every tier of the base table), a 150x cap lowers that tier.
    rows = [
        {"effective_s": 30.0, "field": "tiers", "value": [[0, 200, 0.0025], [1e6, 50, 0.01]]},
        {"effective_s": 60.0, "field": "max_leverage_cap", "value": 150.0},
        {"effective_s": 90.0, "field": "max_leverage_cap", "value": 100.0},  # 150 -> 100
    ]
    s = load_scenario(TESTBED, overrides={"rules.tiers": BTC_TIERS, "schedule": rows}).schedule
    active = np.asarray(s.active)
    eff = np.asarray(s.effective_tick)[active]
    assert (eff == 3).sum() == 36  # the swap: 3 x 12 padded tier elements
    assert (eff == 6).sum() == 1 and float(np.asarray(s.value)[active][eff == 6][0]) == 150.0
    assert (eff == 9).sum() == 1  # tier 0 at 150 -> 100; tier 1 (50x) stays


# ------------------------------------------------------------------ the field table

_TEMPLATE = ("[]", "*")


def _plain_rows(kinds=("num", "int", "keyed", "bool")):
    """Rows of single config values (no list index / mapping key in the path)."""
    return [
        f for f in FIELDS.values() if f.kind in kinds and not any(t in f.path for t in _TEMPLATE)
    ]


def _set(cfg: dict, dotted: str, value) -> dict:
    out = copy.deepcopy(cfg)
    d = out
    *head, last = dotted.split(".")
    for k in head:
        d = d.setdefault(k, {})
    d[last] = value
    return out


def _target(params, dotted: str):
    obj = params
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def test_table_covers_every_field():
    """Every rule, market, exogenous, dims field and cohort parameter has a table row;
    every row's target is a real Params attribute."""
    targets = {f.target for f in FIELDS.values() if f.target}
    for group, cls, skip in [
        ("rules", ExchangeRules, ()),
        ("markets", MarketParams, ()),
        ("exo", ExoParams, ("shock_active",)),
        ("dims", Dims, ()),
    ]:
        for name in cls.__dataclass_fields__:
            if name not in skip:
                assert f"{group}.{name}" in targets, f"no table row fills {group}.{name}"
    for name in COHORT_PARAMS:
        row = FIELDS[f"population.cohorts[].{name}"]
        assert row.target == f"pop.{name}" and name in PopParams.__dataclass_fields__
    p = load_scenario(TESTBED)
    for t in targets:
        _target(p, t)  # raises AttributeError for a misspelt target
    assert set(RULE_RANGES) == set(ExchangeRules.__dataclass_fields__)


def test_table_rows_without_default_are_in_defaults_yaml():
    cfg = scenario_config(TESTBED)
    for f in _plain_rows(("num", "int", "keyed", "bool", "choice")):
        parent, key = f.path.rsplit(".", 1) if "." in f.path else ("", f.path)
        sec = cfg
        for k in parent.split(".") if parent else []:
            sec = sec[k]
        assert key in sec or f.default is not REQUIRED, f.path


def test_table_targets_hold_the_converted_values():
    """Each plain row's Params target holds the YAML value through the row's unit."""
    cfg = scenario_config(TESTBED)
    p = load_scenario(TESTBED)
    for f in _plain_rows():
        if not f.target or f.target.startswith(("accounts.", "pop.lp_perp")):
            continue
        if f.path == "rules.funding.cap":
            continue  # auto in the testbed; test_funding_cap_auto
        if f.path == "first_funding_h":
            continue  # 0 = one interval; test_first_funding_default_and_set
        parent = f.path.rsplit(".", 1)[0] if "." in f.path else ""
        want = f.read(get_path(cfg, parent), parent)
        got = _target(p, f.target)
        np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(want, float), rtol=1e-6)


def _out_of_range(f):
    return f.hi * 2 + 1 if np.isfinite(f.hi) else f.lo - 1


@pytest.mark.parametrize(
    "row",
    [f for f in _plain_rows(("num", "int", "keyed")) if f.path != "population.trend_slow_s"],
    ids=lambda f: f.path,
)
def test_table_rows_reject_out_of_range(row):
    """A value outside a row's range raises ConfigError naming the dotted field and the
    range the table gives."""
    path = f"{row.path}.{row.keys[0]}" if row.kind == "keyed" else row.path
    bad = _out_of_range(row)
    bad = int(bad) if row.kind == "int" else bad
    with pytest.raises(ConfigError) as ei:
        build_params(_set(scenario_config(TESTBED), path, bad))
    msg = str(ei.value)
    assert path in msg and row.range in msg, msg


@pytest.mark.parametrize(
    "key, value, range_",
    [
        ("rules.funding.interval_h", 48.0, "(0.0, 24.0]"),
        ("rules.haircut.lst", 1.0, "[0.0, 1.0)"),
        ("exogenous.jump_std_pct.stable", 60.0, "[0.0, 50.0]"),
        ("population.mm.inv_unit.spot", 0.0, "(0.0, inf]"),
    ],
)
def test_bad_table_values_name_field_and_range(key, value, range_):
    _raises({key: value}, key, range_)


def test_cohort_and_program_rows_name_field_and_range():
    row = {"account": "agent", "behaviour": "retail", "market": "perp", "speed": 1.5}
    _raises({"population.cohorts": [row]}, "population.cohorts[0].speed", "[0.0, 1.0]")
    prog = dict(account="agent", market="spot", side="sell", start_s=0.0, duration_s=0.0, qty=1)
    _raises({"population.programs": [prog]}, "population.programs[0].duration_s", "(0.0, inf]")


def test_role_settings_use_the_table():
    from envs import ROLES

    for env_cls in ROLES.values():
        cls = env_cls.settings_cls
        names = {f.name for f in dataclasses.fields(cls)}
        assert {f.key for f in cls._fields.values()} == names
        row = next(iter(cls._fields.values()))
        with pytest.raises(ConfigError) as ei:
            cls.create(**{row.key: row.hi + 1.0})
        assert row.path in str(ei.value) and row.range in str(ei.value)


def test_first_funding_default_and_set():
    p = load_scenario(TESTBED)
    assert float(p.first_funding_s) == float(p.rules.funding_interval_s)
    q = load_scenario(TESTBED, overrides={"first_funding_h": 1.5})
    assert float(q.first_funding_s) == 5400.0
    with pytest.raises(ConfigError, match="first_funding_h"):
        load_scenario(TESTBED, overrides={"first_funding_h": 30})
