"""cocotb bench for a generated accelerator (``sparsemac_top``).

Driven by :func:`compiler.simulate.simulate` through :mod:`sim.runner`: the inputs and the
number of input lanes, the reference model's expected outputs (and, for a design with
uploaded weights, the weight ``image``) arrive in the ``.npz`` named by ``SPARSEMAC_BENCH``.
Inputs stream in back to back while outputs stream out, so inferences overlap in the array as
they would on a board fed at full rate; every output is compared with ``np.array_equal``, and
what the RTL produced (with each inference's latency and interval) goes to
``SPARSEMAC_RESULTS``.
"""

import os

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, First, ReadOnly, RisingEdge, Timer

__all__ = ["AcceleratorBench"]


class AcceleratorBench:
    """Owns the clock, the input stream driver and the output stream monitor."""

    def __init__(self, dut, *, period_ns: int = 10):
        self.dut = dut
        self.clk = dut.clk
        self.period_ns = period_ns
        Clock(dut.clk, period_ns, unit="ns").start()

    async def reset(self):
        dut = self.dut
        dut.rst.value = 1
        dut.input__valid.value = 0
        dut.input__payload.value = 0
        dut.output__ready.value = 0
        if hasattr(dut, "weights__valid"):
            dut.weights__valid.value = 0
        await ClockCycles(self.clk, 3)
        dut.rst.value = 0
        await RisingEdge(self.clk)

    async def stream_put(self, values, stream="input"):
        """Send ``values`` on the stream named ``stream`` (its ``<stream>__valid``,
        ``__ready``, ``__payload`` ports), one beat per accepted handshake."""
        valid = getattr(self.dut, f"{stream}__valid")
        ready = getattr(self.dut, f"{stream}__ready")
        payload = getattr(self.dut, f"{stream}__payload")
        for value in values:
            payload.value = int(value)
            valid.value = 1
            while True:
                await ReadOnly()
                accepted = bool(ready.value)
                await RisingEdge(self.clk)
                if accepted:
                    break
        valid.value = 0

    async def stream_get(self, count, *, timeout_cycles=20_000):
        """Receive ``count`` beats from the output stream (signed 8-bit); returns them and the
        accelerator's ``cycles`` and ``interval`` as they stood at the last one."""
        dut = self.dut
        dut.output__ready.value = 1
        values = []
        waited = 0
        while len(values) < count:
            await ReadOnly()
            if dut.output__valid.value:
                values.append(dut.output__payload.value.to_signed())
                waited = 0
                if len(values) == count:
                    stats = int(dut.cycles.value), int(dut.interval.value)
            elif not values:
                # nothing to take yet: sleep until valid rises instead of cycle by cycle
                timeout = Timer(timeout_cycles * self.period_ns, unit="ns")
                if await First(RisingEdge(dut.output__valid), timeout) is timeout:
                    raise TimeoutError(f"no output within {timeout_cycles} cycles")
                continue
            await RisingEdge(self.clk)
            waited += 1
            if waited > timeout_cycles:
                raise TimeoutError(f"no output after {timeout_cycles} cycles "
                                   f"({len(values)} of {count} values received)")
        dut.output__ready.value = 0
        return values, stats

    async def upload(self, image: bytes):
        """The weight image on the ``weights`` stream (data in bits 0-7, ``first`` in bit 8)."""
        await self.stream_put([byte | (256 if n == 0 else 0) for n, byte in enumerate(image)],
                              "weights")


def beats(x, lanes: int) -> list[int]:
    """One inference's inputs as input beats: ``lanes`` two's-complement bytes a beat, input
    ``t * lanes + i`` in byte ``i`` of beat ``t`` (the same packing as
    :func:`hw.simulation.input_beats`)."""
    values = [int(v) & 0xFF for v in x]
    values += [0] * (-len(values) % lanes)
    return [sum(v << (8 * i) for i, v in enumerate(values[t:t + lanes]))
            for t in range(0, len(values), lanes)]


@cocotb.test()
async def run_inferences(dut):
    """Every input through the RTL, streamed, bit-exact against the reference model."""
    with np.load(os.environ["SPARSEMAC_BENCH"], allow_pickle=False) as f:
        inputs, expected, lanes = f["inputs"], f["expected"], int(f["lanes"])
        image = bytes(f["image"].tobytes()) if "image" in f.files else b""
        # no output for this long is a hang (the default suits small models)
        timeout = int(f["timeout_cycles"]) if "timeout_cycles" in f.files else 20_000
    bench = AcceleratorBench(dut)
    await bench.reset()
    if image:
        await bench.upload(image)

    async def feed():
        for x in inputs:
            await bench.stream_put(beats(x, lanes))

    cocotb.start_soon(feed())
    hw = np.zeros_like(expected)
    cycles = np.zeros(len(inputs), dtype=np.int64)
    intervals = np.zeros(len(inputs), dtype=np.int64)
    first_mismatch = None
    for n in range(len(inputs)):
        outputs, (cycles[n], intervals[n]) = await bench.stream_get(expected.shape[1],
                                                                    timeout_cycles=timeout)
        hw[n] = outputs
        if first_mismatch is None and not np.array_equal(hw[n], expected[n]):
            first_mismatch = n
            col = int(np.flatnonzero(hw[n] != expected[n])[0])
            dut._log.error("inference %d, output %d: RTL %d, reference %d", n, col,
                           hw[n, col], expected[n, col])
    np.savez(os.environ["SPARSEMAC_RESULTS"], hw=hw, cycles=cycles, intervals=intervals)
    if first_mismatch is not None:
        col = int(np.flatnonzero(hw[first_mismatch] != expected[first_mismatch])[0])
        raise AssertionError(
            f"RTL differs from the reference: inference {first_mismatch}, output {col}: "
            f"RTL {hw[first_mismatch, col]}, reference {expected[first_mismatch, col]}")
    assert np.array_equal(hw, expected)
