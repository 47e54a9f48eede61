"""The field mechanism: a `Field` row says what one config value may be, and checks it.

A row carries the value's dotted path, its type, its allowed range, a unit conversion
(YAML units -> `Params` units, e.g. hours -> seconds), its default, the `Params` attribute
it fills and a line of help. `Field.check` validates a value and raises `ConfigError`
naming the field and what is allowed; `Field.read` takes it out of a mapping first. The
rows themselves are in `jaxsim.config.table`.

Path templates: `[]` stands for a list index (`population.cohorts[].side`) and `*` for a
mapping key (`rules.index.*.clip`); builders pass the concrete prefix as `where`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from typing import Any


class ConfigError(ValueError):
    """A scenario file or override holds a value outside what the simulator allows."""


REQUIRED: Any = type("Required", (), {"__repr__": lambda self: "REQUIRED"})()
KINDS = ("num", "int", "bool", "keyed", "choice", "float")


@dataclasses.dataclass(frozen=True)
class Unit:
    """A conversion from the unit written in YAML to the unit stored in `Params`."""

    name: str
    fn: Callable[[float], float]

    def __call__(self, x: float) -> float:
        return self.fn(x)


SECONDS_PER_YEAR = 365.0 * 86400.0
# The arithmetic of each conversion is written exactly as the loader always did it, so the
# stored values are the same bit for bit.
HOURS = Unit("h -> s", lambda x: x * 3600.0)
PER_HOUR = Unit("per h -> per s", lambda x: x / 3600.0)
PER_DAY = Unit("per day -> per s", lambda x: x / 86400.0)
PER_SQRT_HOUR = Unit("per sqrt(h) -> per sqrt(s)", lambda x: x / 60.0)
PERCENT = Unit("% -> fraction", lambda x: x / 100.0)
BPS_PER_MUSDT = Unit("bp per 1M USDT -> fraction per USDT", lambda x: x * 1e-4 / 1e6)
ANNUAL_VOL = Unit("annualised -> per sqrt(s)", lambda x: x / math.sqrt(SECONDS_PER_YEAR))
HALFLIFE_H = Unit(
    "half-life h -> decay rate per s (0 = none)",
    lambda hl: math.log(2.0) / (3600.0 * hl) if hl > 0 else 0.0,
)


def range_text(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> str:
    """`[lo, hi]` with round brackets at open ends, as the error messages print it."""
    return f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"


def parse_range(text: str) -> dict:
    """`"(0, 0.1]"` -> dict(lo=0.0, hi=0.1, lo_open=True, hi_open=False); `inf` allowed."""
    m = re.fullmatch(r"\s*([\[(])\s*([^,]+),\s*([^\])]+)\s*([\])])\s*", text)
    if not m:
        raise ValueError(f"bad range {text!r}")
    return dict(
        lo=float(m.group(2)),
        hi=float(m.group(3)),
        lo_open=m.group(1) == "(",
        hi_open=m.group(4) == ")",
    )


def check_num(
    v: Any,
    field: str,
    lo: float = -math.inf,
    hi: float = math.inf,
    lo_open: bool = False,
    hi_open: bool = False,
) -> float:
    """A real number (not a bool) in the range; +inf only where `hi` is +inf."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(f"{field} must be a number, got {v!r}")
    x = float(v)
    bad = (
        (not math.isfinite(x) and not (x == math.inf and hi == math.inf))
        or x < lo
        or x > hi
        or (lo_open and x == lo)
        or (hi_open and x == hi)
    )
    if bad:
        raise ConfigError(
            f"{field} = {v!r} is outside the allowed range {range_text(lo, hi, lo_open, hi_open)}"
        )
    return x


def check_float(v: Any, field: str, lo: float, hi: float) -> float:
    """Anything `float()` takes (numpy / JAX scalars too), finite and in [lo, hi]."""
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise ConfigError(f"{field} must be a number, got {v!r}") from None
    if not (math.isfinite(x) and lo <= x <= hi):
        raise ConfigError(f"{field} = {v!r} is outside the allowed range {range_text(lo, hi)}")
    return x


def check_int(v: Any, field: str, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f"{field} must be an integer, got {v!r}")
    if not lo <= v <= hi:
        raise ConfigError(f"{field} = {v} is outside the allowed range [{lo}, {hi}]")
    return v


def check_bool(v: Any, field: str) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(f"{field} must be true or false, got {v!r}")
    return v


def check_keys(d: Any, field: str, allowed, *, exact: bool = False, what: str = "") -> None:
    """`d` is a mapping whose keys are among `allowed` (all of them if `exact`)."""
    keys = set(d) if isinstance(d, dict) else None
    if keys is None or keys - set(allowed) or (exact and keys != set(allowed)):
        need = "exactly the keys" if exact else "keys"
        raise ConfigError(what or f"{field} must be a mapping with {need} {sorted(allowed)}")


@dataclasses.dataclass(frozen=True)
class Field:
    """One row of the table: what the value at `path` may be.

    Attributes:
        path: dotted path in the merged config (`[]` a list index, `*` a mapping key).
        kind: num (a real), int, bool, keyed (a mapping `keys` -> num), choice (one of
            `keys`), float (anything `float()` takes; the env role settings).
        lo, hi, lo_open, hi_open: the allowed range (of each element for keyed).
        default: used when the key is absent; REQUIRED = the key must be there.
        keys: the mapping's keys (keyed) or the allowed values (choice).
        key_default: keyed only: a missing key takes this value (None = every key needed).
        unit: YAML unit -> Params unit (None = stored as written).
        target: the `Params` attribute filled ("rules.funding_interval_s"), if any.
        help: what the value means.
    """

    path: str
    kind: str = "num"
    lo: float = -math.inf
    hi: float = math.inf
    lo_open: bool = False
    hi_open: bool = False
    default: Any = REQUIRED
    keys: tuple = ()
    key_default: float | None = None
    unit: Unit | None = None
    target: str = ""
    help: str = ""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"{self.path}: kind {self.kind!r} not one of {KINDS}")

    @property
    def key(self) -> str:
        """The last component of the path (the key in its mapping)."""
        return self.path.rsplit(".", 1)[-1]

    @property
    def range(self) -> str:
        """The allowed values as text."""
        if self.kind == "choice":
            return str(list(self.keys))
        if self.kind == "bool":
            return "true or false"
        if self.kind == "int":
            lo, hi = (int(x) if math.isfinite(x) else x for x in (self.lo, self.hi))
            return range_text(lo, hi)
        return range_text(self.lo, self.hi, self.lo_open, self.hi_open)

    def check(self, v: Any, name: str | None = None, **bounds: Any):
        """Validate `v` (YAML units) for the field called `name` (default: the path).

        `bounds` overrides lo / hi / lo_open / hi_open where a cross-field bound applies
        (a user's leverage at most the first tier's max leverage).
        """
        name = name or self.path
        rng = {
            "lo": self.lo,
            "hi": self.hi,
            "lo_open": self.lo_open,
            "hi_open": self.hi_open,
            **bounds,
        }
        if self.kind == "num":
            return check_num(v, name, **rng)
        if self.kind == "float":
            return check_float(v, name, rng["lo"], rng["hi"])
        if self.kind == "int":
            lo, hi = (int(x) if math.isfinite(x) else x for x in (rng["lo"], rng["hi"]))
            return check_int(v, name, lo, hi)
        if self.kind == "bool":
            return check_bool(v, name)
        if self.kind == "choice":
            if v not in self.keys:
                note = f" ({self.help})" if self.help else ""
                raise ConfigError(f"{name} = {v!r} is not one of {list(self.keys)}{note}")
            return v
        return self._check_keyed(v, name, rng)

    def _check_keyed(self, d: Any, name: str, rng: dict) -> list[float]:
        if not isinstance(d, dict):
            raise ConfigError(f"{name} must be a mapping with keys {list(self.keys)}")
        extra = set(d) - set(self.keys)
        if extra:
            raise ConfigError(
                f"unknown key '{name}.{sorted(extra)[0]}'; allowed: {list(self.keys)}"
            )
        if self.key_default is None:
            missing = [k for k in self.keys if k not in d]
            if missing:
                raise ConfigError(f"{name}.{missing[0]} is missing")
        return [check_num(d.get(k, self.key_default), f"{name}.{k}", **rng) for k in self.keys]

    def convert(self, x):
        """YAML units -> Params units (element-wise for keyed)."""
        if self.unit is None:
            return x
        if isinstance(x, list):
            return [self.unit(e) for e in x]
        return self.unit(x)

    def read(self, section: Any, where: str | None = None, default: Any = REQUIRED, **bounds):
        """Check and convert this field's value in `section` (the mapping holding its key).

        `where` is the concrete dotted prefix of the key (default: the path's parent);
        `default` overrides the row's default (a user's entry defaults to the start price).
        """
        where = self.path.rsplit(".", 1)[0] if where is None else where
        name = f"{where}.{self.key}" if where else self.key
        default = self.default if default is REQUIRED else default
        if not isinstance(section, dict):
            raise ConfigError(f"{where} must be a mapping")
        if self.key in section:
            v = section[self.key]
        elif default is REQUIRED:
            raise ConfigError(f"{name} is missing")
        else:
            v = default
        return self.convert(self.check(v, name, **bounds))

    def schedule_range(self) -> dict:
        """The range of the converted value, per element (for schedule rows)."""
        if self.kind == "bool":
            return dict(lo=0.0, hi=1.0)
        lo, hi = self.lo, self.hi
        if self.unit is not None:
            lo, hi = self.unit(lo), self.unit(hi)
        out = dict(lo=lo, hi=hi)
        if self.lo_open:
            out["lo_open"] = True
        if self.hi_open:
            out["hi_open"] = True
        return out


def row(path: str, rng: str = "", kind: str = "num", **kw) -> Field:
    """A table row with its range written as in the error messages: `"[0, 1)"`."""
    return Field(path, kind, **(parse_range(rng) if rng else {}), **kw)


class Table(dict):
    """Rows by path, in the order given (the order the loader checks them)."""

    def __init__(self, rows):
        super().__init__()
        for row in rows:
            if row.path in self:
                raise ValueError(f"duplicate field row {row.path}")
            self[row.path] = row

    def under(self, prefix: str) -> list[Field]:
        """The rows whose path starts with `prefix` + '.', in order."""
        return [f for p, f in self.items() if p.startswith(prefix + ".")]

    def describe(self) -> str:
        """One line per row: path, kind, range, unit, help (for docs and error hints)."""
        lines = []
        for f in self.values():
            unit = f"  [{f.unit.name}]" if f.unit else ""
            lines.append(f"{f.path}: {f.kind} {f.range}{unit}  {f.help}".rstrip())
        return "\n".join(lines)


def get_path(cfg: dict, dotted: str) -> Any:
    """The section at a concrete dotted path (ConfigError naming it if absent)."""
    d: Any = cfg
    seen = []
    for part in dotted.split(".") if dotted else []:
        seen.append(part)
        if not isinstance(d, dict) or part not in d:
            raise ConfigError(f"{'.'.join(seen)} is missing")
        d = d[part]
    return d


def read(table: Table, path: str, cfg: dict):
    """Check and convert the value of the (template-free) row `path` in the whole config."""
    row = table[path]
    parent = path.rsplit(".", 1)[0] if "." in path else ""
    return row.read(get_path(cfg, parent), parent)


_ATTR = re.compile(r"^\s{8}(\w+): (.*)$")


def attribute_help(doc: str | None) -> dict[str, str]:
    """Name -> text of a Google-style `Attributes:` docstring section."""
    out: dict[str, str] = {}
    name = None
    for line in (doc or "").splitlines():
        m = _ATTR.match(line)
        if m:
            name = m.group(1)
            out[name] = m.group(2).strip()
        elif name and line.startswith(" " * 12) and line.strip():
            out[name] += " " + line.strip()
        else:
            name = None
    return out


def settings_table(cls, ranges: dict[str, tuple[float, float]], defaults: dict) -> Table:
    """Rows of an env role's settings struct (kind float: anything `float()` takes)."""
    helps = attribute_help(cls.__doc__)
    return Table(
        Field(
            f"{cls.__name__}.{name}",
            "float",
            lo=lo,
            hi=hi,
            default=defaults[name],
            help=helps.get(name, ""),
        )
        for name, (lo, hi) in ranges.items()
    )
