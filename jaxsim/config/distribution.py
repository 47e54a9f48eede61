"""Scenario distributions: a YAML under `configs/distributions/` that lists scenarios and
variants with weights and ranges for the parameters that make a crash.

    description: four crash types with their timing and size drawn
    pool_size: 32          # concrete members drawn at load time (at least one per member)
    seed: 0                # the draw of the pool (same seed = same pool)
    members:
      - scenario: leverage_accident
        variant: null            # or a name, or {choice: [null, no_whale]}
        weight: 1.0              # relative probability of this member at each env reset
        ranges:                  # dotted override keys (`[i]` = list element) -> a range
          population.programs[1].qty: {uniform: [120, 240]}
          rules.funding.interval_h: {choice: [1.0, 4.0]}
        overrides: {}            # fixed overrides of this member
    held_out:                    # evaluated separately by `train.py evaluate`
      - {scenario: mm_pump_dump}           # every variant
      - {scenario: collateral_depeg, variant: fixed_index}

Ranges: `{uniform: [lo, hi]}`, `{log_uniform: [lo, hi]}` (lo > 0), `{randint: [lo, hi]}`
(integers, both ends included), `{choice: [a, b, ...]}`.

`load_distribution` builds a pool of concrete members: each member entry gets
`max(1, round(pool_size x weight / total weight))` draws (one if it has no ranges), each
draw is the member's scenario / variant with sampled overrides, merged and validated by
the config table as any `load_scenario` call (a bad sample raises `ConfigError` naming the
member). A draw's probability is its member's weight divided among the member's draws, so
at each env reset `jax.random.choice(key, M, p=probs)` picks members with the weights of
the file. The envs stack the pool (`envs.distribution`), so one compiled program trains
on the whole distribution. Static dims must agree across the pool: the capacity dims
(rows, slots, accounts) are padded to the pool's maximum; the others (grid levels,
liquidation rounds, venues, basis window) must be equal, else `ConfigError`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from jaxsim.config.fields import ConfigError
from jaxsim.config.load import (
    CONFIG_DIR,
    _read_yaml,
    list_variants,
    scenario_config,
)

DIST_DIR = CONFIG_DIR / "distributions"
RANGE_KINDS = ("uniform", "log_uniform", "randint", "choice")
MEMBER_KEYS = {"scenario", "variant", "weight", "ranges", "overrides"}
TOP_KEYS = {"description", "pool_size", "seed", "members", "held_out"}
# Dims that only size arrays (padding them adds unused rows): padded to the pool's max.
PAD_DIMS = (
    "n_accounts",
    "max_orders",
    "n_tiers",
    "n_schedule",
    "transfer_slots",
    "n_shocks",
    "n_programs",
    "n_makers",
)
DEFAULT_POOL = 32


@dataclasses.dataclass(frozen=True)
class Member:
    """One concrete member of the pool."""

    scenario: str
    variant: str | None
    overrides: dict
    prob: float
    entry: int  # index of its entry under `members:`
    label: str  # "scenario[/variant] #k"


@dataclasses.dataclass(frozen=True)
class Distribution:
    name: str
    path: Path
    description: str
    members: tuple[Member, ...]
    held_out: tuple[tuple[str, str | None], ...]  # (scenario, variant or None = all)
    entries: tuple[dict, ...]  # the member entries as written

    @property
    def probs(self) -> np.ndarray:
        return np.array([m.prob for m in self.members], np.float64)

    def in_distribution(self, scenario: str, variant: str | None) -> bool:
        """Whether (scenario, variant) is a member of the training distribution."""
        return any(m.scenario == scenario and m.variant == variant for m in self.members)

    def is_held_out(self, scenario: str, variant: str | None) -> bool:
        return any(s == scenario and v in (None, variant) for s, v in self.held_out)

    def summary(self) -> dict:
        """A YAML-safe record (for a run's config.yaml)."""
        return {
            "name": self.name,
            "path": str(self.path),
            "pool_size": len(self.members),
            "members": [
                {"scenario": s, "variant": v, "prob": round(p, 6)}
                for (s, v), p in _grouped(self.members).items()
            ],
            "held_out": [{"scenario": s, "variant": v} for s, v in self.held_out],
        }


def _grouped(members) -> dict:
    out: dict = {}
    for m in members:
        out[(m.scenario, m.variant)] = out.get((m.scenario, m.variant), 0.0) + m.prob
    return out


def list_distributions() -> list[str]:
    return sorted(p.stem for p in DIST_DIR.glob("*.yaml"))


def distribution_path(name_or_path: str | os.PathLike) -> Path | None:
    """The file of a distribution (a name under configs/distributions/, or a YAML path
    whose top level has `members:`), or None if `name_or_path` is not one."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.exists():
        try:
            data = _read_yaml(p)
        except ConfigError:
            return None
        return p if "members" in data else None
    cand = DIST_DIR / f"{name_or_path}.yaml"
    return cand if cand.exists() else None


def is_distribution(name_or_path) -> bool:
    return name_or_path is not None and distribution_path(name_or_path) is not None


def _check_range(spec: Any, where: str) -> tuple[str, list]:
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in RANGE_KINDS:
        raise ConfigError(
            f"{where} must be one of {{kind: values}} with kind in {list(RANGE_KINDS)}"
        )
    kind, vals = next(iter(spec.items()))
    if not isinstance(vals, list) or not vals:
        raise ConfigError(f"{where}.{kind} must be a non-empty list")
    if kind == "choice":
        return kind, vals
    if len(vals) != 2 or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in vals
    ):
        raise ConfigError(f"{where}.{kind} must be [lo, hi] (two finite numbers), got {vals}")
    lo, hi = vals
    if lo > hi:
        raise ConfigError(f"{where}.{kind}: lo = {lo} > hi = {hi}")
    if kind == "log_uniform" and lo <= 0:
        raise ConfigError(f"{where}.log_uniform needs lo > 0, got {lo}")
    if kind == "randint" and (int(lo) != lo or int(hi) != hi):
        raise ConfigError(f"{where}.randint needs integer bounds, got {vals}")
    return kind, vals


def _sample(kind: str, vals: list, rng: np.random.Generator):
    if kind == "choice":
        v = vals[int(rng.integers(len(vals)))]
        return v
    lo, hi = vals
    if kind == "uniform":
        return float(rng.uniform(lo, hi))
    if kind == "log_uniform":
        return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    return int(rng.integers(int(lo), int(hi) + 1))


def _check_variant(scenario: str, v: Any, where: str) -> None:
    if v is not None and v not in list_variants(scenario):
        raise ConfigError(
            f"{where} = {v!r} is not a variant of '{scenario}'; allowed: "
            f"{[None, *list_variants(scenario)]}"
        )


def _check_scenario(s: Any, where: str) -> str:
    if not isinstance(s, str) or not s:
        raise ConfigError(f"{where} must be a scenario name, got {s!r}")
    try:
        scenario_config(s)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    return s


def _int(v: Any, where: str, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ConfigError(f"{where} must be an integer >= {lo}, got {v!r}")
    return v


def load_distribution(
    name_or_path, pool_size: int | None = None, seed: int | None = None
) -> Distribution:
    """Read, validate and sample a distribution file (see the module docstring).

    Raises:
        ConfigError: naming the field (`distributions.<name>.members[2].weight`).
    """
    path = distribution_path(name_or_path)
    if path is None:
        raise ConfigError(
            f"unknown distribution '{name_or_path}': not a YAML path with `members:` and not "
            f"one of {list_distributions()}"
        )
    name = path.stem
    top = f"distributions.{name}"
    data = _read_yaml(path)
    extra = sorted(set(data) - TOP_KEYS)
    if extra:
        raise ConfigError(f"unknown key '{top}.{extra[0]}'; allowed: {sorted(TOP_KEYS)}")
    pool_size = _int(data.get("pool_size", DEFAULT_POOL) if pool_size is None else pool_size,
                     f"{top}.pool_size", 1)  # fmt: skip
    seed = _int(data.get("seed", 0) if seed is None else seed, f"{top}.seed", 0)
    entries = data.get("members")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{top}.members must be a non-empty list of members")
    parsed = [_parse_member(e, f"{top}.members[{i}]") for i, e in enumerate(entries)]
    draws = _draw(parsed, pool_size, np.random.default_rng(seed))
    members = _build_members(top, draws)
    held = [
        _parse_held_out(h, f"{top}.held_out[{j}]") for j, h in enumerate(data.get("held_out") or [])
    ]
    return Distribution(
        name=name,
        path=path,
        description=str(data.get("description") or ""),
        members=tuple(members),
        held_out=tuple(held),
        entries=tuple(entries),
    )


def _parse_member(e: Any, where: str) -> tuple:
    """(scenario, weight, variant spec, range specs, fixed overrides) of one member entry."""
    if not isinstance(e, dict):
        raise ConfigError(f"{where} must be a mapping with keys {sorted(MEMBER_KEYS)}")
    extra = sorted(set(e) - MEMBER_KEYS)
    if extra:
        raise ConfigError(f"unknown key '{where}.{extra[0]}'; allowed: {sorted(MEMBER_KEYS)}")
    if "scenario" not in e:
        raise ConfigError(f"{where}.scenario is missing")
    scen = _check_scenario(e["scenario"], f"{where}.scenario")
    w = e.get("weight", 1.0)
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not (w > 0 and math.isfinite(w)):
        raise ConfigError(f"{where}.weight = {w!r} must be a number > 0")
    var = e.get("variant")
    if isinstance(var, dict):
        kind, vals = _check_range(var, f"{where}.variant")
        if kind != "choice":
            raise ConfigError(f"{where}.variant takes a name, null or {{choice: [...]}}")
        for v in vals:
            _check_variant(scen, v, f"{where}.variant.choice")
        vspec = ("choice", vals)
    else:
        _check_variant(scen, var, f"{where}.variant")
        vspec = ("choice", [var])
    ranges = e.get("ranges") or {}
    if not isinstance(ranges, dict):
        raise ConfigError(f"{where}.ranges must be a mapping of override key -> range")
    rspec = {str(k): _check_range(v, f"{where}.ranges.{k}") for k, v in ranges.items()}
    fixed = e.get("overrides") or {}
    if not isinstance(fixed, dict):
        raise ConfigError(f"{where}.overrides must be a mapping of override key -> value")
    return scen, float(w), vspec, rspec, fixed


def _draw(parsed: list, pool_size: int, rng: np.random.Generator) -> list[tuple]:
    """Draws (member index, draw index, scenario, variant, overrides, probability): each
    member that varies gets its weight's share of `pool_size` draws (at least one), a
    fixed member one; a draw's probability is its member's weight split evenly."""
    total_w = sum(p[1] for p in parsed)
    draws: list[tuple] = []
    for i, (scen, w, vspec, rspec, fixed) in enumerate(parsed):
        varied = bool(rspec) or len(vspec[1]) > 1
        n = max(1, round(pool_size * w / total_w)) if varied else 1
        for k in range(n):
            var = _sample(*vspec, rng)
            over = {**fixed, **{key: _sample(*spec, rng) for key, spec in rspec.items()}}
            draws.append((i, k, scen, var, over, w / total_w / n))
    return draws


def _build_members(top: str, draws: list[tuple]) -> list[Member]:
    """Validate every draw (the config table's checks), pad the capacity dims to the
    pool's maximum (any other dim must agree), and check each padded member builds."""
    from jaxsim.config.params import build_params

    cfgs = []
    for i, k, scen, var, over, _ in draws:
        try:
            cfgs.append(scenario_config(scen, var, over))
        except ConfigError as e:
            raise ConfigError(f"{top}.members[{i}] (draw {k}): {e}") from None
    dims = [c["dims"] for c in cfgs]
    pad = {}
    for f in dims[0]:
        vals = {int(d[f]) for d in dims}
        if len(vals) > 1:
            if f not in PAD_DIMS:
                j = next(j for j, d in enumerate(dims) if int(d[f]) != int(dims[0][f]))
                raise ConfigError(
                    f"{top}.members[{draws[j][0]}]: dims.{f} = {dims[j][f]} differs from "
                    f"members[{draws[0][0]}]'s {dims[0][f]}; only {list(PAD_DIMS)} are padded"
                )
            pad[f"dims.{f}"] = max(vals)
    members = []
    for (i, k, scen, var, over, prob), c in zip(draws, cfgs, strict=True):
        over = {**over, **{kk: v for kk, v in pad.items() if int(c["dims"][kk[5:]]) != v}}
        try:
            build_params(scenario_config(scen, var, over))
        except ConfigError as e:
            raise ConfigError(f"{top}.members[{i}] (draw {k}): {e}") from None
        label = scen + (f"/{var}" if var else "") + f" #{k}"
        members.append(Member(scen, var, over, prob, i, label))
    return members


def _parse_held_out(h: Any, where: str) -> tuple:
    """(scenario, variant or None) of one `held_out` entry (a name means every variant)."""
    if isinstance(h, str):
        h = {"scenario": h}
    if not isinstance(h, dict) or set(h) - {"scenario", "variant"} or "scenario" not in h:
        raise ConfigError(f"{where} must be a scenario name or {{scenario, variant}}")
    s = _check_scenario(h["scenario"], f"{where}.scenario")
    _check_variant(s, h.get("variant"), f"{where}.variant")
    return s, h.get("variant")
