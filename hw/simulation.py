"""Helpers for Amaranth's own simulator: stream drivers and a whole-accelerator run.

The cocotb benches in ``sim/`` test the generated Verilog; these run the same components
before any Verilog exists (fast unit tests, cycle traces).
"""

from __future__ import annotations

import numpy as np
from amaranth.sim import Simulator

from compiler.ir import SparseProgram

from .top import SparseAccelerator

__all__ = ["stream_put", "stream_get", "run_accelerator"]


async def stream_put(ctx, stream, values, *, valid_probability=1.0, rng=None):
    """Send ``values`` on ``stream`` (a stream interface whose payload the testbench drives)."""
    for value in values:
        while rng is not None and rng.random() > valid_probability:
            ctx.set(stream.valid, 0)
            await ctx.tick()
        ctx.set(stream.payload, int(value))
        ctx.set(stream.valid, 1)
        await ctx.tick().until(stream.ready)
    ctx.set(stream.valid, 0)


async def stream_get(ctx, stream, count, *, ready_probability=1.0, rng=None):
    """Receive ``count`` payloads from ``stream``, optionally with random back-pressure.

    Payloads come back as the simulator samples them: ``int`` for a plain shape, a constant
    view for a layout (read its fields)."""
    values = []
    while len(values) < count:
        ready = rng is None or rng.random() < ready_probability
        ctx.set(stream.ready, ready)
        _, _, valid, payload = await ctx.tick().sample(stream.valid, stream.payload)
        if ready and valid:
            values.append(payload)
    ctx.set(stream.ready, 0)
    return values


def run_accelerator(program: SparseProgram, xq: np.ndarray, options=None, *,
                    ready_probability=1.0, valid_probability=1.0, seed=0, probe=None):
    """Run integer inputs ``xq`` [N, in] through :class:`SparseAccelerator` in Amaranth's
    simulator. Returns ``(outputs [N, out], cycles [N])``.

    ``probe``: optional callable ``probe(ctx, dut)`` awaited alongside (for traces).
    """
    dut = SparseAccelerator(program, options)
    rng = np.random.default_rng(seed)
    outputs, cycles = [], []

    async def bench(ctx):
        for x in np.asarray(xq):
            await stream_put(ctx, dut.input, x, valid_probability=valid_probability, rng=rng)
            outputs.append(await stream_get(ctx, dut.output, program.model.out_features,
                                            ready_probability=ready_probability, rng=rng))
            cycles.append(ctx.get(dut.cycles))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    if probe is not None:
        sim.add_testbench(lambda ctx: probe(ctx, dut), background=True)
    sim.run()
    return np.array(outputs, dtype=np.int64), np.array(cycles, dtype=np.int64)
