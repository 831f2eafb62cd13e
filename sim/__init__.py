"""cocotb benches for the generated Verilog, and the one wrapper that runs them on Icarus or
Verilator (:mod:`sim.runner`)."""
