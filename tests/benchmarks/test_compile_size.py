"""`python -m benchmarks.compile_size`: attributing fusions to the step's phases.

On a made-up HLO module (majority vote of the named scopes inside a fusion, a fusion
without metadata, the table's totals) and on a small compiled program whose two named
scopes XLA keeps in the fused instructions' metadata.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # `benchmarks` is no installed package; CI runs python -m pytest
    sys.path.insert(0, str(REPO))

from benchmarks import compile_size  # noqa: E402

PHASES = ("exogenous", "orders")

HLO = """\
HloModule m

%fused_computation.1 (param_0: f32[8]) -> f32[8] {
  %param_0 = f32[8]{0} parameter(0)
  %mul.1 = f32[8]{0} multiply(%param_0, %param_0), metadata={op_name="jit(step)/orders/while/body/mul"}
  %add.1 = f32[8]{0} add(%mul.1, %param_0), metadata={op_name="jit(step)/orders/add"}
  ROOT %sub.1 = f32[8]{0} subtract(%add.1, %mul.1), metadata={op_name="jit(step)/exogenous/sub"}
}

%fused_computation.2 (param_0.1: f32[8]) -> f32[8] {
  %param_0.1 = f32[8]{0} parameter(0)
  ROOT %neg.1 = f32[8]{0} negate(%param_0.1)
}

ENTRY %main (p0: f32[8]) -> f32[8] {
  %p0 = f32[8]{0} parameter(0)
  %sub_fusion = f32[8]{0} fusion(%p0), kind=kLoop, calls=%fused_computation.1, metadata={op_name="jit(step)/exogenous/sub"}
  ROOT %wrapped_reduce-window.3 = f32[8]{0} fusion(%sub_fusion), kind=kLoop, calls=%fused_computation.2
}
"""


def test_parse_attributes_each_fusion_to_the_majority_phase_inside_it():
    rows = {r["fusion"]: r for r in compile_size.parse(HLO, PHASES)}
    assert set(rows) == {"sub_fusion", "wrapped_reduce-window.3"}
    # Two of its three instructions are under `orders`: the fusion's own (root) name says
    # `exogenous`, the instructions inside it decide.
    assert rows["sub_fusion"]["phase"] == "orders"
    assert rows["sub_fusion"]["instructions"] == 4  # the parameter counts
    assert rows["wrapped_reduce-window.3"]["phase"] == "?"
    assert rows["wrapped_reduce-window.3"]["kind"] == "wrapped_reduce-window"


def test_table_totals_and_cumsum_count():
    rows = compile_size.parse(HLO, PHASES)
    lines = compile_size.table(rows, PHASES)
    orders = next(x for x in lines if x.startswith("orders"))
    assert orders.split()[1:3] == ["1", "4"]
    total = lines[-1].split()
    assert total[:3] == ["total", "2", "6"] and total[4] == "1"  # one reduce-window


def test_named_scopes_reach_the_compiled_fusions():
    def f(x, y):
        with jax.named_scope("exogenous"):
            a = jnp.sin(x) * 2.0 + 1.0
        with jax.named_scope("orders"):
            b = jnp.cumsum(jnp.exp(y) * 3.0 - y)
        return a, b

    x = jnp.linspace(0.0, 1.0, 64)
    hlo = jax.jit(f).lower(x, x).compile().as_text()
    rows = compile_size.parse(hlo, PHASES)
    phases = {r["phase"] for r in rows}
    assert {"exogenous", "orders"} <= phases, rows
    assert sum(r["instructions"] for r in rows) > 0
    # Under vmap the scopes read "vmap(exogenous)": still the phases.
    hlo = jax.jit(jax.vmap(f)).lower(x[None], x[None]).compile().as_text()
    assert {"exogenous", "orders"} <= {r["phase"] for r in compile_size.parse(hlo, PHASES)}
