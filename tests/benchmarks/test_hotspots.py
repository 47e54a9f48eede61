"""`python -m benchmarks.hotspots`: its HLO and trace parsing, without a benchmark run.

The fusion table on a made-up HLO module and on a small compiled program that has the
pattern the tool looks for (a per-row scalar chain fused into a wide elementwise loop) and
the same program with `ops.materialize` on the chain; the kernel times from made-up trace
events; the joined rows and their table; argument errors.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # `benchmarks` is no installed package; CI runs python -m pytest
    sys.path.insert(0, str(REPO))

from benchmarks import hotspots  # noqa: E402

HLO = """\
HloModule m

%fused_computation.1 (param_0: f32[8], param_1: f32[8,64]) -> f32[8,64] {
  %param_0 = f32[8]{0} parameter(0)
  %mul.1 = f32[8]{0} multiply(%param_0, %param_0)
  %add.1 = f32[8]{0} add(%mul.1, %param_0)
  %sub.1 = f32[8]{0} subtract(%add.1, %mul.1)
  %broadcast.1 = f32[8,64]{1,0} broadcast(%sub.1), dimensions={0}
  %param_1 = f32[8,64]{1,0} parameter(1)
  ROOT %add.2 = f32[8,64]{1,0} add(%broadcast.1, %param_1)
}

%fused_computation.2 (param_0.1: f32[8,64]) -> f32[8,64] {
  %param_0.1 = f32[8,64]{1,0} parameter(0)
  ROOT %neg.1 = f32[8,64]{1,0} negate(%param_0.1)
}

ENTRY %main (p0: f32[8], p1: f32[8,64]) -> f32[8,64] {
  %p0 = f32[8]{0} parameter(0)
  %p1 = f32[8,64]{1,0} parameter(1)
  %add_fusion = f32[8,64]{1,0} fusion(%p0, %p1), kind=kLoop, calls=%fused_computation.1, metadata={op_name="jit(f)/add"}
  ROOT %neg_fusion = f32[8,64]{1,0} fusion(%add_fusion), kind=kLoop, calls=%fused_computation.2
}
"""


def test_fusion_table_counts_scalar_ops_of_wide_fusions():
    t = hotspots.fusion_table(HLO, batch=8)
    assert set(t) == {"add_fusion", "neg_fusion"}
    a = t["add_fusion"]
    # mul, add, sub are per-row scalars; parameters, broadcasts and the wide add are not.
    assert a["scalar_ops"] == 3 and a["elems_per_env"] == 64 and a["recomputed"] == 3 * 64
    assert a["shape"] == "f32[8,64]" and a["op_name"] == "jit(f)/add"
    n = t["neg_fusion"]
    assert n["scalar_ops"] == 0 and n["recomputed"] == 0 and n["op_name"] == ""


def _chain(x):
    """A long per-row chain of scalar arithmetic."""
    y = x
    for i in range(40):
        y = jnp.where(y > i, y * 1.0001 - 0.5, y + 0.25)
    return y


def test_fusion_table_finds_a_fused_chain_and_materialize_removes_it():
    from jaxsim.ops import materialize

    def plain(x, book):
        return book * _chain(x)[:, None, None]

    def once(x, book):
        return book * materialize(_chain(x))[:, None, None]

    args = (jnp.ones((16,)), jnp.ones((16, 64, 4)))
    worst = {}
    for name, f in (("plain", plain), ("once", once)):
        hlo = jax.jit(f).lower(*args).compile().as_text()
        table = hotspots.fusion_table(hlo, batch=16)
        worst[name] = max(r["recomputed"] for r in table.values())
    assert worst["plain"] >= 40 * 256
    assert worst["once"] < worst["plain"] / 10


def test_kernel_times_and_rows():
    events = [
        {"ph": "X", "name": "add_fusion", "dur": 30.0},
        {"ph": "X", "name": "add_fusion", "dur": 10.0},
        {"ph": "X", "name": "neg_fusion", "dur": 20.0},
        {"ph": "X", "name": "$profiler.py:1 trace", "dur": 1e6},
        {"ph": "X", "name": "ThunkExecutor::Execute", "dur": 1e6},
        {"ph": "X", "name": "PjitFunction(f)", "dur": 1e6},
        {"ph": "i", "name": "add_fusion"},
    ]
    times = hotspots.kernel_times(events, n_calls=2)
    assert times == {
        "add_fusion": {"us": 20.0, "count": 1.0},
        "neg_fusion": {"us": 10.0, "count": 0.5},
    }
    rows = hotspots.join(times, hotspots.fusion_table(HLO, batch=8), batch=8, top=1)
    assert len(rows) == 1
    r = rows[0]
    assert r["kernel"] == "add_fusion" and r["share"] == pytest.approx(20 / 30)
    assert r["us_per_env_step"] == pytest.approx(2.5) and r["scalar_ops"] == 3
    lines = hotspots.format_rows(rows, 30.0)
    assert "add_fusion" in lines[2] and "66.7%" in lines[2] and lines[-1].endswith("30 us per call")


def test_read_perfetto_needs_a_trace(tmp_path):
    with pytest.raises(FileNotFoundError):
        hotspots.read_perfetto(tmp_path)


@pytest.mark.parametrize("argv", [["--batch", "0"], ["--calls", "0"], ["--phase", "funding"]])
def test_parse_rejects(argv):
    with pytest.raises(SystemExit):
        hotspots.parse_args(argv)


def test_parse_defaults():
    a = hotspots.parse_args([])
    assert (a.scenario, a.phase, a.batch, a.calls, a.top) == ("calm", "step", 128, 5, 25)
