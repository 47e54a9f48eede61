"""Scenario YAML -> validated `Params`.

A scenario file overrides `configs/defaults.yaml`; a variant (under `variants:` in the
scenario) and `overrides` (nested dict or dotted keys) are merged on top, in that order.
Every value is checked against its row of the field table (`jaxsim.config.table.FIELDS`:
type, range, unit conversion, help); a bad one raises `ConfigError` naming the field and
what is allowed. Cross-field rules are the named `check_*` functions of the builders.

Modules: `fields` (the `Field` row and its checks), `table` (the rows), `load` (files,
merging, overrides, listing), `rules`, `schedule`, `accounts`, `population` (builders),
`params` (`build_params`, `load_scenario`, `rule_offset`).
"""

from jaxsim.config.fields import SECONDS_PER_YEAR, ConfigError, Field
from jaxsim.config.load import CONFIG_DIR, list_scenarios, list_variants, scenario_config
from jaxsim.config.params import build_params, load_scenario, rule_offset
from jaxsim.config.rules import RULE_FIELDS, RULE_RANGES
from jaxsim.config.table import ASSET_KEYS, COHORT_PARAMS, FIELDS, INDEX_KEYS, MARKET_KEYS

__all__ = [
    "ASSET_KEYS",
    "COHORT_PARAMS",
    "CONFIG_DIR",
    "FIELDS",
    "INDEX_KEYS",
    "MARKET_KEYS",
    "RULE_FIELDS",
    "RULE_RANGES",
    "SECONDS_PER_YEAR",
    "ConfigError",
    "Field",
    "build_params",
    "list_scenarios",
    "list_variants",
    "load_scenario",
    "rule_offset",
    "scenario_config",
]
