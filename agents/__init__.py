"""Baseline agents, evaluation and reports for the cascade-gym roles.

- `agents.heuristics`: pure-JAX heuristic policies `policy(key, obs, params) -> action`.
- `agents.evaluate`: batched evaluation (scenarios x variants x seeds in one `lax.scan`,
  or a NumPy loop over the batched env) and episode metrics.
- `agents.report`: report.md, CSV and PNG plots.
- `agents.sb3_policy`, `agents.sb3_train`: stable-baselines3 loading and training (these
  two import torch / SB3; importing `agents` does not).
"""

from __future__ import annotations

import os
from pathlib import Path

from agents.heuristics import ROLE_POLICIES, Policy, baselines, heuristic

# The repository's .jax_cache (git-ignored), which the test suite uses too.
DEFAULT_CACHE = Path(__file__).resolve().parents[1] / ".jax_cache"


def enable_compile_cache(path: str | Path | None = None) -> str | None:
    """Turn on JAX's persistent compilation cache (compiling the exchange step takes a
    minute or two on a small CPU; later runs load it in seconds).

    The folder is `path`, else `$CASCADE_JAX_CACHE`, else `$JAX_COMPILATION_CACHE_DIR`,
    else the repository's `.jax_cache`; `CASCADE_JAX_CACHE=0` (or "") disables it.
    Returns the folder used, or None.
    """
    import jax

    env = os.environ.get("CASCADE_JAX_CACHE")
    if path is None and env is not None:
        if env.strip().lower() in ("", "0", "off", "false", "none"):
            return None
        path = env
    if path is None:
        path = os.environ.get("JAX_COMPILATION_CACHE_DIR") or DEFAULT_CACHE
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    return str(folder)


__all__ = [
    "ROLE_POLICIES",
    "Policy",
    "baselines",
    "enable_compile_cache",
    "heuristic",
]
