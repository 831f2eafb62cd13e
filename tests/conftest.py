"""Suite-wide settings."""

import os

import pytest

# Verilator's models here simulate a few inputs each: build their C++ unoptimised, which
# compiles several times faster (sim/runner.py; the benchmarks keep Verilator's -Os)
os.environ.setdefault("SPARSEMAC_VERILATOR_OPT", "-O0")


@pytest.fixture(scope="module")
def digits():
    """``digits(P)``: the bundled digits MLP compiled for ``P`` PEs, calibrated on the digits
    training split."""
    from compiler.build import compile_model
    from compiler.datasets import digits_split
    from compiler.frontend import load_model
    x = digits_split()[0]
    model = load_model("examples/digits_mlp.pt")
    return lambda pes: compile_model(model, x, pes)
