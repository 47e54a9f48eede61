"""Engine throughput only (kept for the old command; see `benchmarks.throughput`).

    python -m benchmarks.engine [--scenario calm] [--ticks 20] [--batches 1,16,128,1024]
                                [--repeats 2] [--json FILE]

Runs the engine rows of `python -m benchmarks.throughput` (`--sections engine`).
"""

from __future__ import annotations

import sys

from benchmarks import throughput


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return throughput.main(["--sections", "engine", *argv])


if __name__ == "__main__":
    sys.exit(main())
