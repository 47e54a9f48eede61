"""What the scenario commands share: arguments, `--set` overrides, seed keys, number
formats and the printed tables."""

from __future__ import annotations

import argparse
import math
import sys

import jax
import yaml

from jaxsim.config import ConfigError, list_scenarios

# ------------------------------------------------------------------ arguments


def add_scenario_args(ap: argparse.ArgumentParser) -> None:
    """``--scenario NAME`` (default calm) and ``--variant V``."""
    ap.add_argument("--scenario", default="calm", help=f"one of {list_scenarios()} or a YAML path")
    ap.add_argument("--variant", default=None, help="a variant of the scenario")


def add_horizon_args(
    ap: argparse.ArgumentParser, ticks_help: str, hours_help: str
) -> argparse.ArgumentParser:
    """Mutually exclusive ``--ticks T`` and ``--hours H`` (both default None)."""
    hz = ap.add_mutually_exclusive_group()
    hz.add_argument("--ticks", type=int, default=None, help=ticks_help)
    hz.add_argument("--hours", type=float, default=None, help=hours_help)
    return ap


def add_set_arg(ap: argparse.ArgumentParser, help: str) -> None:
    """Repeatable ``--set KEY=VALUE`` into ``args.sets`` (read with `parse_overrides`)."""
    ap.add_argument(
        "--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help=help
    )


def parse_overrides(items: list[str] | None) -> dict:
    """``["rules.fees.taker=0.0004", "exogenous.shocks=[]"]`` -> dotted-key dict (YAML values)."""
    out = {}
    for item in items or []:
        key, sep, val = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value (dotted key), got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(val)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {key}: value {val!r} is not valid YAML ({e})") from None
    return out


def config_error(e: ConfigError) -> int:
    """Print a config error on stderr; the exit status of a bad config (2)."""
    print(f"error: {e}", file=sys.stderr)
    return 2


def have_matplotlib(what: str) -> bool:
    """Whether matplotlib imports; if not, say on stderr that `what` is skipped."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print(f"matplotlib is not installed (pip install -e '.[dev]'): no {what}", file=sys.stderr)
        return False
    return True


# ------------------------------------------------------------------ seeds


def seed_keys(seeds: int, seed: int = 0):
    """The per-seed keys of every command: ``jax.random.split(PRNGKey(seed), seeds)``."""
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    return jax.random.split(jax.random.PRNGKey(seed), seeds)


# ------------------------------------------------------------------ numbers and tables


def fmt(x: float, kind: str) -> str:
    """A number for a table: kind pct, bp, f3 (signed), px, int, usd (k / M / B) or any
    other (4 significant digits); "-" when not finite."""
    if not math.isfinite(x):
        return "-"
    if kind == "pct":
        return f"{100 * x:.2f}%"
    if kind == "bp":
        return f"{1e4 * x:.1f}bp"
    if kind == "f3":
        return f"{x:+.3f}"
    if kind == "px":
        return f"{x:.4f}"
    if kind == "int":
        return f"{x:.0f}" if float(x).is_integer() else f"{x:.1f}"
    if kind == "usd":
        a = abs(x)
        for div, suf in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
            if a >= div:
                return f"{x / div:.3g}{suf}"
        return f"{x:.3g}"
    return f"{x:.4g}"


def print_table(title: str, header: list[str], rows: list[list[str]], file=None) -> None:
    """A rich table as wide as its content when rich is installed, else plain aligned text
    (first column left-aligned, the others right-aligned)."""
    file = file or sys.stdout
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    try:
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table
    except ImportError:  # rich is optional
        print(title, file=file)
        line = lambda r: "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        print(line(header), file=file)
        print("  ".join("-" * w for w in widths), file=file)
        for r in rows:
            print(line(r), file=file)
        return
    table = Table(title=escape(title), title_justify="left")
    for i, h in enumerate(header):
        table.add_column(escape(h), justify="left" if i == 0 else "right", no_wrap=True)
    for r in rows:
        table.add_row(*(escape(c) for c in r))
    width = max(sum(widths) + 3 * len(widths) + 1, 100, len(title) + 4)
    Console(file=file, width=width, soft_wrap=True).print(table)
