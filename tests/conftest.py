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

# Property tests draw a fixed, derandomized set of examples by default, so a run's result
# never depends on the draw (CI included); `HYPOTHESIS_PROFILE=explore` draws fresh random
# examples each run to hunt for new failures.
_hyp_settings.register_profile("fixed", derandomize=True, print_blob=True)
_hyp_settings.register_profile("explore", print_blob=True)
_hyp_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fixed"))
