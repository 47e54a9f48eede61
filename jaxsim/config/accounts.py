"""`accounts:` section -> `AccountInit`: user accounts, then the system accounts."""

from __future__ import annotations

import numpy as np

from jaxsim.config.fields import ConfigError
from jaxsim.config.table import ASSET_KEYS, FIELDS
from jaxsim.types import N_SYSTEM, AccountInit, Dims, ExchangeRules

_USER = "accounts.users[]"
# A user row's keys: the first component below the row of each field (`fees` for
# `accounts.users[].fees.maker`).
_USER_KEYS = (
    "name",
    *dict.fromkeys(f.path[len(_USER) + 1 :].split(".")[0] for f in FIELDS.under(_USER)),
)
_FEE_KEYS = tuple(f.key for f in FIELDS.under(f"{_USER}.fees"))


def check_isolated_margin(mode: int, iso: float, where: str) -> None:
    """Only an isolated account has isolated margin."""
    if mode == 0 and iso > 0:
        raise ConfigError(f"{where}.isolated_margin is only for mode: isolated")


def _user(u, f: str, price0: list[float], max_lev0: float) -> dict:
    """One user row, checked: balances, debt, external balances, position and margin."""
    if not isinstance(u, dict) or set(u) - set(_USER_KEYS):
        bad = sorted(set(u) - set(_USER_KEYS)) if isinstance(u, dict) else u
        raise ConfigError(f"{f}: unknown key {bad}; allowed: {sorted(_USER_KEYS)}")
    row = {k: FIELDS[f"{_USER}.{k}"].read(u, f) for k in (*ASSET_KEYS, "debt", "external")}
    pos = FIELDS[f"{_USER}.position"].read(u, f)
    entry = FIELDS[f"{_USER}.entry"].read(u, f, default=price0[0]) if pos else 0.0
    mode = 0 if FIELDS[f"{_USER}.mode"].read(u, f) == "cross" else 1
    lev = FIELDS[f"{_USER}.leverage"].read(u, f, hi=max_lev0)
    iso = FIELDS[f"{_USER}.isolated_margin"].read(u, f)
    check_isolated_margin(mode, iso, f)
    return dict(row, pos=pos, entry=entry, mode=mode, lev=lev, iso=iso, fees=_fees(u, f))


def _fees(u: dict, f: str) -> dict[str, float]:
    """The user's own fee rates, `{"maker": x, "taker": y}`, each only where given (a rate
    not given follows rules.fees)."""
    fees = u.get("fees", {})
    where = f"{f}.fees"
    if not isinstance(fees, dict):
        raise ConfigError(f"{where} must be a mapping with keys {list(_FEE_KEYS)}, got {fees!r}")
    extra = sorted(set(fees) - set(_FEE_KEYS))
    if extra:
        raise ConfigError(f"unknown key '{where}.{extra[0]}'; allowed: {list(_FEE_KEYS)}")
    return {k: FIELDS[f"{_USER}.fees.{k}"].read(fees, where) for k in _FEE_KEYS if k in fees}


def build_accounts(acc: dict, dims: Dims, price0: list[float], rules: ExchangeRules) -> AccountInit:
    """Users fill accounts 0.., the LP, outside world and insurance fund their slots; the LP
    takes the other side of the users' net position."""
    users = acc.get("users") or []
    if not isinstance(users, list):
        raise ConfigError("accounts.users must be a list")
    n_user = dims.n_accounts - N_SYSTEM
    if len(users) > n_user:
        raise ConfigError(
            f"accounts.users has {len(users)} accounts; dims.n_accounts = "
            f"{dims.n_accounts} leaves room for {n_user} (4 are system accounts)"
        )
    n = dims.n_accounts
    bal, debt, ext = np.zeros((n, 4)), np.zeros((n, 4)), np.zeros((n, 4))
    pos, entry, iso = np.zeros(n), np.zeros(n), np.zeros(n)
    mode = np.zeros(n, np.int32)
    lev = np.full(n, 10.0)
    # Own fee rates: users only (the system accounts follow rules.fees).
    fee = {k: np.zeros(n) for k in _FEE_KEYS}
    own = {k: np.zeros(n, bool) for k in _FEE_KEYS}
    max_lev0 = float(rules.tier_max_lev[0])
    for i, u in enumerate(users):
        r = _user(u, f"accounts.users[{i}]", price0, max_lev0)
        bal[i] = [r[k] for k in ASSET_KEYS]
        debt[i], ext[i] = r["debt"], r["external"]
        pos[i], entry[i], mode[i], lev[i], iso[i] = (
            r["pos"],
            r["entry"],
            r["mode"],
            r["lev"],
            r["iso"],
        )
        for k, x in r["fees"].items():
            fee[k][i], own[k][i] = x, True
    for key, row in (("lp", dims.lp), ("outside", dims.outside)):
        bal[row] = FIELDS[f"accounts.{key}"].read(acc, "accounts")
    bal[dims.insurance, 0] = FIELDS["accounts.insurance_fund"].read(acc, "accounts")
    lev[n_user:] = 1.0
    # Open interest must net to zero: the LP holds the other side of any imbalance.
    net = pos.sum()
    if abs(net) > 0:
        pos[dims.lp] = -net
        entry[dims.lp] = price0[0]
    return AccountInit(
        bal=bal,
        debt=debt,
        ext_bal=ext,
        pos=pos,
        entry=entry,
        iso_margin=iso,
        mode=mode,
        lev=lev,
        maker_fee=fee["maker"],
        taker_fee=fee["taker"],
        own_maker_fee=own["maker"],
        own_taker_fee=own["taker"],
    )
