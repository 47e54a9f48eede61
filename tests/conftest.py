"""Shared test settings."""

import os
from pathlib import Path

import jax

# The engine tests' fixed market: static accounts, no background traders (loaded by path).
TESTBED = str(Path(__file__).resolve().parent / "configs" / "testbed.yaml")

# Persistent compilation cache: test modules and the CLI subprocesses some tests start
# compile the same exchange programs; a cache hit saves 10-40 s each on a 2-core machine.
_CACHE = Path(__file__).resolve().parent.parent / ".jax_cache"
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_CACHE))
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.0)
