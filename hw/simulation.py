"""Helpers for Amaranth's own simulator: stream drivers and a whole-accelerator run.

The cocotb benches in ``sim/`` test the generated Verilog; these run the same components
before any Verilog exists (fast unit tests, cycle traces).
"""

from __future__ import annotations

import numpy as np
from amaranth.sim import Simulator

from core.ir import SparseProgram

from .images import weight_image
from .top import SparseAccelerator

__all__ = ["stream_put", "stream_get", "upload_weights", "run_accelerator", "input_beats",
           "pack_beat"]


async def stream_put(ctx, stream, values, *, valid_probability=1.0, rng=None):
    """Send ``values`` on ``stream`` (a stream interface whose payload the testbench drives):
    integers, or dicts for a payload with a layout."""
    for value in values:
        while rng is not None and rng.random() > valid_probability:
            ctx.set(stream.valid, 0)
            await ctx.tick()
        ctx.set(stream.payload, value if isinstance(value, (dict, list)) else int(value))
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


def input_beats(x: np.ndarray, lanes: int) -> list[list[int]]:
    """One inference's integer inputs as the accelerator's input beats: ``lanes`` values a
    beat, lane ``i`` of beat ``t`` = input ``t * lanes + i`` (zero-padded)."""
    x = np.asarray(x, dtype=np.int64)
    padded = np.zeros(-(-len(x) // lanes) * lanes, dtype=np.int64)
    padded[:len(x)] = x
    return padded.reshape(-1, lanes).tolist()


def pack_beat(values) -> int:
    """A beat's lanes as one integer, lane 0 in the low byte (two's complement bytes)."""
    word = 0
    for i, v in enumerate(values):
        word |= (int(v) & 0xFF) << (8 * i)
    return word


async def upload_weights(ctx, dut, image: bytes, *, valid_probability=1.0, rng=None):
    """Stream a weight image (:func:`hw.images.weight_image`) into ``dut.weights``."""
    await stream_put(ctx, dut.weights, [{"data": b, "first": n == 0} for n, b in enumerate(image)],
                     valid_probability=valid_probability, rng=rng)


def run_accelerator(program: SparseProgram, xq: np.ndarray, options=None, *,
                    ready_probability=1.0, valid_probability=1.0, seed=0, probe=None,
                    image: bytes | None = None, stream: bool = True, deadline: int = 200_000):
    """Run integer inputs ``xq`` [N, in] through :class:`SparseAccelerator` in Amaranth's
    simulator. Returns ``(outputs [N, out], cycles [N], intervals [N])``: latency and the
    interval since the inference before, per inference.

    ``stream``: feed every input as soon as the array takes it (inferences overlap); False:
    wait for each inference's outputs before sending the next input. A design with uploaded
    weights gets ``image`` first (default: the program's own). ``probe``: optional callable
    ``probe(ctx, dut)`` awaited alongside (for traces). No output for ``deadline`` cycles is a
    hang (``TimeoutError``).
    """
    dut = SparseAccelerator(program, options)
    rng = np.random.default_rng(seed)
    lanes = dut.geo.cols
    outputs, cycles, intervals = [], [], []
    if dut.geo.weights == "uploaded" and image is None:
        image = weight_image(program, dut.geo)
    xq = np.atleast_2d(np.asarray(xq, dtype=np.int64))
    uploaded = []
    received = []

    async def driver(ctx):
        if image is not None:
            await upload_weights(ctx, dut, image, valid_probability=valid_probability, rng=rng)
        uploaded.append(True)
        for n, x in enumerate(xq):
            if not stream:
                while len(received) < n:
                    await ctx.tick()
            await stream_put(ctx, dut.input, input_beats(x, lanes),
                             valid_probability=valid_probability, rng=rng)

    async def monitor(ctx):
        out = program.model.out_features
        for _ in range(len(xq)):
            values = []
            waited = 0
            while len(values) < out:
                ready = rng.random() < ready_probability
                ctx.set(dut.output.ready, ready)
                _, _, valid, payload = await ctx.tick().sample(dut.output.valid,
                                                               dut.output.payload)
                if ready and valid:
                    values.append(payload)
                    waited = 0
                elif uploaded:
                    waited += 1
                    if waited > deadline:
                        raise TimeoutError(f"no output for {deadline} cycles (inference "
                                           f"{len(outputs)}, {len(values)} of {out} values)")
            ctx.set(dut.output.ready, 0)
            outputs.append(values)
            cycles.append(ctx.get(dut.cycles))
            intervals.append(ctx.get(dut.interval))
            received.append(True)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(driver, background=True)
    sim.add_testbench(monitor)
    if probe is not None:
        async def watch(ctx):
            await probe(ctx, dut)
        sim.add_testbench(watch, background=True)
    sim.run()
    return (np.array(outputs, dtype=np.int64), np.array(cycles, dtype=np.int64),
            np.array(intervals, dtype=np.int64))
