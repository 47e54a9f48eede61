"""Shared test settings."""

import os
from pathlib import Path

from hypothesis import settings as _hyp_settings

# The engine tests' fixed market: static accounts, no background traders (loaded by path).
TESTBED = str(Path(__file__).resolve().parent / "configs" / "testbed.yaml")

# No persistent compilation cache in tests: the suite's CLI subprocesses and the test
# process would share one folder, and a read racing a write aborted the interpreter in a
# fresh-clone run (jax 0.10.2, CPU). train.py's cache stays on for interactive use.
os.environ["CASCADE_JAX_CACHE"] = "0"
os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)

# Tests compile ~20 distinct programs that each hold a full exchange step and run them for
# a few ticks on small batches, so XLA compile time dominates the suite. XLA:CPU's legacy
# loop emitters compile the step in ~13-15 s against 19-23 s for the default MLIR fusion
# emitters (same HLO, same results up to float32 rounding), but the compiled code runs
# slower on big batches (vmap(step) at 256 envs: 37 ms against 27 ms a tick), so only the
# tests use them; train.py, jaxsim.tools.simulate and the benchmarks keep XLA's default. Set
# before jax starts its backend; CLI subprocesses inherit it (keep it when adding flags).
_FAST_COMPILE = "--xla_cpu_use_fusion_emitters=false"
if _FAST_COMPILE not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FAST_COMPILE}".strip()

# Property tests draw a fixed, derandomized set of examples by default, so a run's result
# never depends on the draw (CI included); `HYPOTHESIS_PROFILE=explore` draws fresh random
# examples each run to hunt for new failures.
_hyp_settings.register_profile("fixed", derandomize=True, print_blob=True)
_hyp_settings.register_profile("explore", print_blob=True)
_hyp_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fixed"))
