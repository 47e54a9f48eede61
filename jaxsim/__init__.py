"""cascade-gym's exchange: a pure-JAX perpetual-futures + spot venue.

Public API: `load_scenario`, `reset`, `step`, `rollout`, `audit`, `no_orders`,
`list_scenarios`, `list_variants`, and the pytrees in `jaxsim.types`.
"""

from jaxsim import types
from jaxsim.config import ConfigError, list_scenarios, list_variants, load_scenario, scenario_config
from jaxsim.engine import audit, no_orders, reset, rollout, step
from jaxsim.types import ExchangeRules, Orders, Params, SimState, TickEvents

__all__ = [
    "ConfigError",
    "ExchangeRules",
    "Orders",
    "Params",
    "SimState",
    "TickEvents",
    "audit",
    "list_scenarios",
    "list_variants",
    "load_scenario",
    "no_orders",
    "reset",
    "rollout",
    "scenario_config",
    "step",
    "types",
]
