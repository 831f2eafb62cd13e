"""cocotb bench for a generated accelerator (``sparsemac_top``).

Driven by :func:`compiler.simulate.simulate` through :mod:`sim.runner`: the inputs and the
reference model's expected outputs (and, for a design with uploaded weights, the weight
``image``) arrive in the ``.npz`` named by ``SPARSEMAC_BENCH``; every
inference is streamed in, its outputs streamed out and compared with ``np.array_equal``; what
the RTL produced (and its cycle counts) goes to ``SPARSEMAC_RESULTS``.
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
        """Receive ``count`` beats from the output stream (signed 8-bit)."""
        dut = self.dut
        dut.output__ready.value = 1
        values = []
        waited = 0
        while len(values) < count:
            await ReadOnly()
            if dut.output__valid.value:
                values.append(dut.output__payload.value.to_signed())
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
        return values

    async def upload(self, image: bytes):
        """The weight image on the ``weights`` stream (data in bits 0-7, ``first`` in bit 8)."""
        await self.stream_put([byte | (256 if n == 0 else 0) for n, byte in enumerate(image)],
                              "weights")

    async def infer(self, x, out_features, timeout_cycles=20_000):
        await self.stream_put(x)
        outputs = await self.stream_get(out_features, timeout_cycles=timeout_cycles)
        return outputs, int(self.dut.cycles.value)


@cocotb.test()
async def run_inferences(dut):
    """Every input through the RTL, bit-exact against the reference model."""
    with np.load(os.environ["SPARSEMAC_BENCH"], allow_pickle=False) as f:
        inputs, expected = f["inputs"], f["expected"]
        image = bytes(f["image"].tobytes()) if "image" in f.files else b""
        # no output for this long is a hang (the default suits small models)
        timeout = int(f["timeout_cycles"]) if "timeout_cycles" in f.files else 20_000
    bench = AcceleratorBench(dut)
    await bench.reset()
    if image:
        await bench.upload(image)
    hw = np.zeros_like(expected)
    cycles = np.zeros(len(inputs), dtype=np.int64)
    first_mismatch = None
    for n, x in enumerate(inputs):
        outputs, cycles[n] = await bench.infer(x, expected.shape[1], timeout)
        hw[n] = outputs
        if first_mismatch is None and not np.array_equal(hw[n], expected[n]):
            first_mismatch = n
            col = int(np.flatnonzero(hw[n] != expected[n])[0])
            dut._log.error("inference %d, output %d: RTL %d, reference %d", n, col,
                           hw[n, col], expected[n, col])
    np.savez(os.environ["SPARSEMAC_RESULTS"], hw=hw, cycles=cycles)
    if first_mismatch is not None:
        col = int(np.flatnonzero(hw[first_mismatch] != expected[first_mismatch])[0])
        raise AssertionError(
            f"RTL differs from the reference: inference {first_mismatch}, output {col}: "
            f"RTL {hw[first_mismatch, col]}, reference {expected[first_mismatch, col]}")
    assert np.array_equal(hw, expected)
