"""Shared test settings and the session-scoped `sim` fixture (helpers: tests/support.py)."""

import os

import pytest
from hypothesis import settings as _hyp_settings

# Helpers (TESTBED, the testbed scenarios' `make`, `orders`, `assert_conserved`, ...) live in
# tests/support.py: import them with `from support import ...`, never from `conftest` (there
# are several conftest.py files).

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

# Most tests also compile with XLA's expensive optimizations off: JAX's
# `jax_disable_most_optimizations` (LLVM at -O0 without its expensive passes, the options of
# support.FAST_COMPILE; same semantics) compiles the exchange step in ~60% of the time, and
# the code runs ~2.5x slower: a good trade for tests that run a few ticks. Set here for the
# test process and inherited by its CLI subprocesses. The long runs of tests/scenarios/ (and
# any test marked `xla_optimized`) keep the optimizations: see pytest_runtest_protocol.
# `JAX_DISABLE_MOST_OPTIMIZATIONS=0` turns the trade off for the whole run.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
_LESS_OPTIMIZED = os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"].lower() in ("1", "true", "yes", "on")
_OPTIMIZED_DIRS = ("scenarios",)  # test folders whose programs run long

# Property tests draw a fixed, derandomized set of examples by default, so a run's result
# never depends on the draw (CI included); `HYPOTHESIS_PROFILE=explore` draws fresh random
# examples each run to hunt for new failures.
_hyp_settings.register_profile("fixed", derandomize=True, print_blob=True)
_hyp_settings.register_profile("explore", print_blob=True)
_hyp_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fixed"))


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "xla_optimized: compile with XLA's optimizations (a test whose programs run long)",
    )


def _keeps_optimizations(item) -> bool:
    return item.path.parent.name in _OPTIMIZED_DIRS or item.get_closest_marker("xla_optimized")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Sets `jax_disable_most_optimizations` for the test's setup, call and teardown (it is
    read at each compilation; a program compiled once is reused whatever the flag)."""
    import jax

    jax.config.update(
        "jax_disable_most_optimizations", _LESS_OPTIMIZED and not _keeps_optimizations(item)
    )
    yield


@pytest.fixture(scope="session")
def sim():
    """`support.Sim`: runs `jaxsim.step` on the testbed scenarios of tests/mechanisms/,
    tests/population/ and tests/engine/, compiling `step` once per Dims for the whole
    process (imported here, not at the top: XLA_FLAGS above must be set first)."""
    from support import Sim

    return Sim()
