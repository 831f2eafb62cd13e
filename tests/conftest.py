"""Suite-wide settings."""

import os

# Verilator's models here simulate a few inputs each: build their C++ unoptimised, which
# compiles several times faster (sim/runner.py; the benchmarks keep Verilator's -Os)
os.environ.setdefault("SPARSEMAC_VERILATOR_OPT", "-O0")
