"""Pytest plugin: where the test suite's XLA compilation time goes.

    python -m pytest -q -n 2 --dist loadfile -p benchmarks.compile_census

Each process (each xdist worker) logs every backend compilation JAX reports
(`jax_log_compiles`), with the test that triggered it, and at the end writes
`compile_census_<worker>.json` (rows: test id, program name, seconds) to
`$COMPILE_CENSUS_DIR` (default: the current folder) and prints a table of the slowest
programs and the seconds per test file. CLI tests that start a subprocess are not
covered (the subprocess compiles on its own).

`COMPILE_CENSUS_CACHE=DIR` also turns on a persistent compilation cache in `DIR/<worker>`
(fresh folder each run) and counts its hits: a hit is a program compiled twice with the
same HLO, which a shared cache or a shared fixture could save.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter, defaultdict
from pathlib import Path

import pytest

_FINISHED = re.compile(r"Finished XLA compilation of (.+?) in ([0-9.eE+-]+) sec")


class _Census(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.current = "<collection>"
        self.rows: list[tuple[str, str, float]] = []
        self.events: Counter = Counter()

    def emit(self, record):
        m = _FINISHED.search(record.getMessage())
        if m:
            self.rows.append((self.current, m.group(1), float(m.group(2))))

    def on_event(self, event, **kwargs):
        if event.startswith("/jax/compilation_cache/"):
            self.events[event.rsplit("/", 1)[-1]] += 1


_census = _Census()


def _worker() -> str:
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


def pytest_configure(config):
    import jax

    cache = os.environ.get("COMPILE_CENSUS_CACHE")
    if cache:
        jax.config.update("jax_compilation_cache_dir", str(Path(cache) / _worker()))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    jax.config.update("jax_log_compiles", True)
    logging.getLogger("jax").addHandler(_census)
    jax.monitoring.register_event_listener(_census.on_event)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _census.current = item.nodeid
    yield


def summary(rows, top: int = 15) -> str:
    """Text table: seconds per test file, then the `top` slowest programs."""
    per_file: defaultdict[str, float] = defaultdict(float)
    for test, _, secs in rows:
        per_file[test.split("::")[0]] += secs
    lines = [f"compilations {len(rows)}, {sum(r[2] for r in rows):.0f} s in all", ""]
    lines += ["| file | compile s |", "| --- | ---: |"]
    lines += [f"| {f} | {s:.0f} |" for f, s in sorted(per_file.items(), key=lambda x: -x[1])]
    lines += ["", "| test | program | s |", "| --- | --- | ---: |"]
    for test, prog, secs in sorted(rows, key=lambda r: -r[2])[:top]:
        lines.append(f"| {test} | {prog} | {secs:.1f} |")
    return "\n".join(lines)


def pytest_unconfigure(config):
    out = Path(os.environ.get("COMPILE_CENSUS_DIR", "."))
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"compile_census_{_worker()}.json"
    path.write_text(
        json.dumps({"rows": _census.rows, "cache_events": dict(_census.events)}, indent=0)
    )
    # (xdist does not show its workers' output: merge their files with
    # `python -m benchmarks.compile_census [DIR]`.)
    print(f"\ncompile census ({_worker()}) -> {path}")
    print(summary(_census.rows))
    if _census.events:
        print(f"persistent cache: {dict(_census.events)}")


if __name__ == "__main__":  # merge the workers' files: python -m benchmarks.compile_census
    import sys

    folder = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    rows, events = [], Counter()
    for f in sorted(folder.glob("compile_census_*.json")):
        d = json.loads(f.read_text())
        rows += [tuple(r) for r in d["rows"]]
        events.update(d["cache_events"])
    print(summary(rows))
    if events:
        print(f"\npersistent cache: {dict(events)}")
