"""Reading scenario files: YAML, `extends`, merging defaults <- scenario <- variant <-
overrides (nested dict or dotted keys), and listing scenarios and variants.

Configs live in `configs/` at the repository root (next to the `jaxsim` package, which an
editable install keeps in place), or in the folder named by `CASCADE_CONFIGS`.
"""

from __future__ import annotations

import copy
import functools
import io
import os
import re
from pathlib import Path

import yaml

from jaxsim.config.fields import ConfigError

CONFIG_DIR = Path(
    os.environ.get("CASCADE_CONFIGS", Path(__file__).resolve().parents[2] / "configs")
)
_TOP_EXTRA = {"description", "extends", "horizon_s"}


def list_scenarios() -> list[str]:
    """Names of the scenario files in configs/ (defaults excluded)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml") if p.stem != "defaults")


def list_variants(name: str) -> list[str]:
    return sorted((_read_scenario(name).get("variants") or {}).keys())


@functools.lru_cache(maxsize=128)
def _parse_yaml(name: str, text: str):
    stream = io.StringIO(text)
    stream.name = name  # named in YAML's syntax errors, as when parsing the open file
    return yaml.safe_load(stream) or {}


def _read_yaml(path: Path) -> dict:
    """The file's mapping (a fresh copy: callers edit it). Parsed once per distinct file
    content: building a distribution's pool or an evaluation's scenario table reads the
    same few files hundreds of times, at ~10-20 ms a parse."""
    data = _parse_yaml(str(path), Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return copy.deepcopy(data)


def _resolve(name_or_path: str | os.PathLike) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p
    cand = CONFIG_DIR / f"{name_or_path}.yaml"
    if cand.exists():
        return cand
    raise ConfigError(
        f"unknown scenario '{name_or_path}': not a YAML path and not one of {list_scenarios()}"
    )


def _read_scenario(name_or_path) -> dict:
    path = _resolve(name_or_path)
    data = _read_yaml(path)
    parent = data.pop("extends", None)
    if parent:
        base = _read_scenario(parent)
        variants = {**(base.get("variants") or {}), **(data.get("variants") or {})}
        data = _merge(base, data, "", check=False)
        data["variants"] = variants
    return data


# ------------------------------------------------------------------ merging


def _merge(base: dict, over: dict, path: str, check: bool = True) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        here = f"{path}.{k}" if path else k
        if check and k not in base and not (path == "" and k in _TOP_EXTRA):
            raise ConfigError(f"unknown key '{here}'; allowed: {sorted(base)}")
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k not in ("variants",):
            out[k] = _merge(out[k], v, here, check)
        elif isinstance(v, _Items) and isinstance(out.get(k), list):
            out[k] = _merge_items(out[k], v, here, check)
        elif isinstance(v, _Items):
            raise ConfigError(f"'{here}' is not a list: it has no element {min(v)}")
        else:
            out[k] = copy.deepcopy(_plain(v))
    return out


class _Items(dict):
    """Overrides of single list elements, index -> value (from `key[i]` override keys)."""


def _plain(v):
    if isinstance(v, _Items):
        raise ConfigError(f"list element override {sorted(v)} needs an existing list")
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def _merge_items(base: list, over: _Items, path: str, check: bool) -> list:
    out = copy.deepcopy(base)
    for i, v in over.items():
        here = f"{path}[{i}]"
        if not 0 <= i < len(out):
            raise ConfigError(f"'{here}': index out of range, the list has {len(out)} elements")
        if isinstance(v, dict) and not isinstance(v, _Items) and isinstance(out[i], dict):
            out[i] = _merge(out[i], v, here, check)
        elif isinstance(v, _Items) and isinstance(out[i], list):
            out[i] = _merge_items(out[i], v, here, check)
        else:
            out[i] = copy.deepcopy(_plain(v))
    return out


_PART = re.compile(r"^([^\[\]]*)((?:\[\d+\])*)$")


def _split_key(key: str) -> list:
    """'a.b[0].c' -> ['a', 'b', 0, 'c'] (a list index is an int)."""
    out: list = []
    for part in str(key).split("."):
        m = _PART.match(part)
        if not m or (not m.group(1) and not out):
            raise ConfigError(f"bad override key '{key}' (use dotted names and [i] list indices)")
        if m.group(1):
            out.append(m.group(1))
        out.extend(int(i) for i in re.findall(r"\d+", m.group(2)))
    return out


def _undot(overrides: dict) -> dict:
    """Dotted keys -> nested dicts; `key[i]` addresses element i of a list (merged into
    it: `exogenous.shocks[0].return_pct: -20` changes one field of the first shock)."""
    nested: dict = {}
    for k, v in overrides.items():
        parts = _split_key(k) if isinstance(k, str) else [k]
        d = nested
        for p, nxt in zip(parts[:-1], parts[1:], strict=True):
            if p not in d or not isinstance(d[p], dict):
                d[p] = _Items() if isinstance(nxt, int) else {}
            d = d[p]
        last = parts[-1]
        if isinstance(v, dict) and isinstance(d.get(last), dict):
            d[last] = _join(d[last], _undot(v))
        else:
            d[last] = _undot(v) if isinstance(v, dict) else v
    return nested


def _join(a: dict, b: dict) -> dict:
    out = a.copy()
    for k, v in b.items():
        out[k] = _join(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def scenario_config(
    name_or_path, variant: str | None = None, overrides: dict | None = None
) -> dict:
    """The merged, unvalidated config dict (defaults <- scenario <- variant <- overrides)."""
    defaults = _read_yaml(CONFIG_DIR / "defaults.yaml")
    scen = _read_scenario(name_or_path)
    variants = scen.get("variants") or {}
    cfg = _merge(defaults, {k: v for k, v in scen.items() if k != "variants"}, "")
    cfg["variants"] = variants
    cfg["name"] = Path(str(name_or_path)).stem
    if variant is not None:
        if variant not in variants:
            raise ConfigError(
                f"unknown variant '{variant}' of scenario '{cfg['name']}'; allowed: {sorted(variants)}"
            )
        cfg = _merge(cfg, variants[variant], "variants." + variant)
        cfg["name"] = f"{cfg['name']}/{variant}"
    if overrides:
        cfg = _merge(cfg, _undot(overrides), "overrides")
    return cfg
