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

# Property tests: random examples locally (they explore), a fixed derandomized set in CI
# (a submission's CI result must not depend on the draw; `HYPOTHESIS_PROFILE=dev` there
# explores again).
_hyp_settings.register_profile("ci", derandomize=True, print_blob=True)
_hyp_settings.register_profile("dev", print_blob=True)
_hyp_settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev")
)
