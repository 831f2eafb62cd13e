"""8N1 UART receiver and transmitter with stream interfaces (Amaranth 0.5 has none built in).

Both count ``divisor`` clock cycles per bit (``divisor = round(clock_hz / baud)``); the
receiver samples in the middle of each bit after a 2-flop synchronizer and reports a byte whose
stop bit is low as a framing error instead of data.
"""

from amaranth.hdl import Cat, Const, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

__all__ = ["UARTRx", "UARTTx", "uart_divisor"]


def uart_divisor(clock_hz: float, baud: int) -> int:
    """Clock cycles per bit; raises ``ValueError`` when the rate error would exceed 2 %."""
    if baud <= 0:
        raise ValueError(f"baud must be positive, not {baud!r}")
    divisor = round(clock_hz / baud)
    if divisor < 4:
        raise ValueError(f"{baud} baud is too fast for a {clock_hz / 1e6:g} MHz clock "
                         f"(needs at least 4 cycles a bit)")
    error = abs(clock_hz / divisor - baud) / baud
    if error > 0.02:
        raise ValueError(f"{baud} baud from {clock_hz / 1e6:g} MHz is {100 * error:.1f} % off "
                         f"(more than 2 %); choose another baud rate")
    return divisor


def _check_divisor(divisor):
    if not isinstance(divisor, int) or divisor < 4:
        raise ValueError(f"divisor must be an integer >= 4, not {divisor!r}")


class UARTRx(wiring.Component):
    """UART receiver.

    Members
    -------
    rx : In(1)
        The serial line (asynchronous; idles high).
    data : Out(stream.Signature(8, always_ready=True))
        One beat per byte received with a good stop bit (registered).
    framing_error : Out(1)
        One-cycle pulse (registered) for a byte whose stop bit was low (the byte is dropped).
    """

    def __init__(self, divisor: int):
        _check_divisor(divisor)
        self.divisor = divisor
        super().__init__({
            "rx": In(1, init=1),
            "data": Out(stream.Signature(8, always_ready=True)),
            "framing_error": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        line = Signal(init=1)
        m.submodules.sync = FFSynchronizer(self.rx, line, init=1)
        timer = Signal(range(self.divisor))
        bits = Signal(range(8))
        shreg = Signal(8)
        with m.If(timer != 0):
            m.d.sync += timer.eq(timer - 1)
        with m.FSM(name="rx"):
            with m.State("IDLE"):
                with m.If(~line):
                    m.d.sync += timer.eq(self.divisor // 2 - 1)
                    m.next = "START"
            with m.State("START"):
                with m.If(timer == 0):
                    with m.If(line):            # a glitch, not a start bit
                        m.next = "IDLE"
                    with m.Else():
                        m.d.sync += [timer.eq(self.divisor - 1), bits.eq(0)]
                        m.next = "DATA"
            with m.State("DATA"):
                with m.If(timer == 0):
                    m.d.sync += [shreg.eq(Cat(shreg[1:], line)), bits.eq(bits + 1),
                                 timer.eq(self.divisor - 1)]
                    with m.If(bits == 7):
                        m.next = "STOP"
            with m.State("STOP"):
                # outputs are registered: the protocol logic behind them sees no UART timing
                with m.If(timer == 0):
                    with m.If(line):
                        m.d.sync += self.data.valid.eq(1)
                        m.next = "IDLE"
                    with m.Else():
                        m.d.sync += self.framing_error.eq(1)
                        m.next = "BREAK"
            with m.State("BREAK"):              # wait for the line to idle again
                with m.If(line):
                    m.next = "IDLE"
        with m.If(self.data.valid | self.framing_error):
            m.d.sync += [self.data.valid.eq(0), self.framing_error.eq(0)]
        m.d.comb += self.data.payload.eq(shreg)
        return m


class UARTTx(wiring.Component):
    """UART transmitter.

    Members
    -------
    data : In(stream.Signature(8))
        Bytes to send; taken when the transmitter is idle.
    tx : Out(1)
        The serial line (idles high).
    idle : Out(1)
        Nothing being sent.
    """

    def __init__(self, divisor: int):
        _check_divisor(divisor)
        self.divisor = divisor
        super().__init__({
            "data": In(stream.Signature(8)),
            "tx": Out(1, init=1),
            "idle": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        timer = Signal(range(self.divisor))
        left = Signal(range(11))        # bit periods still to send after the current one
        shreg = Signal(10)
        m.d.comb += [self.idle.eq(left == 0), self.data.ready.eq(left == 0)]
        with m.If(left == 0):
            with m.If(self.data.valid):
                m.d.sync += [
                    self.tx.eq(0),                                   # start bit
                    shreg.eq(Cat(self.data.payload, Const(0b11, 2))),  # data, stop, idle
                    left.eq(10),
                    timer.eq(self.divisor - 1),
                ]
        with m.Elif(timer == 0):
            m.d.sync += [
                self.tx.eq(shreg[0]),
                shreg.eq(Cat(shreg[1:], Const(1, 1))),
                left.eq(left - 1),
                timer.eq(self.divisor - 1),
            ]
        with m.Else():
            m.d.sync += timer.eq(timer - 1)
        return m
