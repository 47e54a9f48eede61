"""Reading scenario files: YAML, `extends`, merging defaults <- scenario <- variant <-
overrides (nested dict or dotted keys), and listing scenarios and variants.

Configs live in `configs/` at the repository root (next to the `jaxsim` package, which an
editable install keeps in place), or in the folder named by `CASCADE_CONFIGS`.
"""

from __future__ import annotations

import copy
import os
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


def _read_yaml(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


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
        else:
            out[k] = copy.deepcopy(v)
    return out


def _undot(overrides: dict) -> dict:
    nested: dict = {}
    for k, v in overrides.items():
        parts = str(k).split(".")
        d = nested
        for p in parts[:-1]:
            d = d.setdefault(p, {})
        if isinstance(v, dict) and isinstance(d.get(parts[-1]), dict):
            d[parts[-1]] = {**d[parts[-1]], **_undot(v)}
        else:
            d[parts[-1]] = _undot(v) if isinstance(v, dict) else v
    return nested


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
