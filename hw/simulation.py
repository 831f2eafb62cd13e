"""Helpers for Amaranth's own simulator: stream drivers and a whole-accelerator run.

The cocotb benches in ``sim/`` test the generated Verilog; these run the same components
before any Verilog exists (fast unit tests, cycle traces).
"""

from __future__ import annotations

import numpy as np
from amaranth.sim import Simulator

from compiler.ir import SparseProgram

from .top import SparseAccelerator

__all__ = ["stream_put", "stream_get", "upload_weights", "run_accelerator"]


async def stream_put(ctx, stream, values, *, valid_probability=1.0, rng=None):
    """Send ``values`` on ``stream`` (a stream interface whose payload the testbench drives):
    integers, or dicts for a payload with a layout."""
    for value in values:
        while rng is not None and rng.random() > valid_probability:
            ctx.set(stream.valid, 0)
            await ctx.tick()
        ctx.set(stream.payload, value if isinstance(value, dict) else int(value))
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


async def upload_weights(ctx, dut, image: bytes, *, valid_probability=1.0, rng=None):
    """Stream a weight image (:func:`hw.images.weight_image`) into ``dut.weights``."""
    await stream_put(ctx, dut.weights, [{"data": b, "first": n == 0} for n, b in enumerate(image)],
                     valid_probability=valid_probability, rng=rng)


def run_accelerator(program: SparseProgram, xq: np.ndarray, options=None, *,
                    ready_probability=1.0, valid_probability=1.0, seed=0, probe=None,
                    image: bytes | None = None):
    """Run integer inputs ``xq`` [N, in] through :class:`SparseAccelerator` in Amaranth's
    simulator. Returns ``(outputs [N, out], cycles [N])``.

    A design with uploaded weights gets ``image`` first (default: the program's own,
    :func:`hw.images.weight_image`). ``probe``: optional callable ``probe(ctx, dut)`` awaited
    alongside (for traces).
    """
    from .images import weight_image

    dut = SparseAccelerator(program, options)
    rng = np.random.default_rng(seed)
    outputs, cycles = [], []
    if dut.geo.weights == "uploaded" and image is None:
        image = weight_image(program, dut.geo)

    async def bench(ctx):
        if image is not None:
            await upload_weights(ctx, dut, image, valid_probability=valid_probability,
                                 rng=rng)
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
