"""The UART receiver and transmitter (boards/link/uart.py), in Amaranth's simulator."""

import pytest


def test_uart_divisor():
    from boards.link.uart import uart_divisor
    assert uart_divisor(60e6, 115200) == 521
    assert uart_divisor(100e6, 12_500_000) == 8
    with pytest.raises(ValueError, match="too fast"):
        uart_divisor(12e6, 6_000_000)
    with pytest.raises(ValueError, match="off"):
        uart_divisor(10e6, 1_200_000)       # 8.33 cycles a bit: 4 % off


def test_uart_loopback_amaranth():
    """Transmitter into receiver, in Amaranth's simulator: every byte arrives intact."""
    from amaranth.hdl import Module
    from amaranth.sim import Simulator

    from boards.link.uart import UARTRx, UARTTx

    m = Module()
    m.submodules.tx = tx = UARTTx(6)
    m.submodules.rx = rx = UARTRx(6)
    m.d.comb += rx.rx.eq(tx.tx)
    sent = [0x00, 0xFF, 0xA5, 0x5A, 0x81]
    got = []

    async def bench(ctx):
        for byte in sent:
            ctx.set(tx.data.payload, byte)
            ctx.set(tx.data.valid, 1)
            await ctx.tick().until(tx.data.ready)
            await ctx.tick()
            ctx.set(tx.data.valid, 0)
        for _ in range(6 * 12 * 2):
            await ctx.tick()

    async def monitor(ctx):
        async for _, _, valid, data, err in ctx.tick().sample(rx.data.valid, rx.data.payload,
                                                              rx.framing_error):
            assert not err
            if valid:
                got.append(data)

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.add_process(monitor)
    sim.run()
    assert got == sent
