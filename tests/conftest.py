"""Shared test settings."""

import os
from pathlib import Path

# The engine tests' fixed market: static accounts, no background traders (loaded by path).
TESTBED = str(Path(__file__).resolve().parent / "configs" / "testbed.yaml")

# No persistent compilation cache in tests: the suite's CLI subprocesses and the test
# process would share one folder, and a read racing a write aborted the interpreter in a
# fresh-clone run (jax 0.10.2, CPU). train.py's cache stays on for interactive use.
os.environ["CASCADE_JAX_CACHE"] = "0"
os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)
