"""A job queue for slow fabric: a buffered FIFO followed by two head registers.

Amaranth's FIFOs update their pointers from the read enable in the same cycle, so a consumer
that decides to read from the head (an arbiter) forms one path from the head, through its own
logic, into the FIFO's control. Here the consumer only moves the two head registers; the FIFO is
refilled from registered occupancy, one cycle later. Same interface as
:class:`amaranth.lib.fifo.SyncFIFOBuffered` (``w_*``, ``r_*``, ``level``); two more cycles from a
write to the head.
"""

from amaranth.hdl import Elaboratable, Module, Mux, Signal
from amaranth.lib.fifo import SyncFIFOBuffered

__all__ = ["PrefetchQueue"]


class PrefetchQueue(Elaboratable):
    """``depth`` entries of ``width`` bits; ``r_data``/``r_rdy`` come straight from
    registers."""

    def __init__(self, *, width: int, depth: int):
        if not isinstance(depth, int) or depth < 3:
            raise ValueError(f"depth must be an integer >= 3, not {depth!r}")
        self.width, self.depth = width, depth
        self.w_data = Signal(width)
        self.w_en = Signal()
        self.w_rdy = Signal()
        self.r_data = Signal(width)
        self.r_rdy = Signal()
        self.r_en = Signal()
        self.level = Signal(range(depth + 1))     # a register
        self.busy = Signal()                          # level != 0, a register

    def elaborate(self, platform):
        m = Module()
        # The FIFO alone can hold all `depth` entries: a write must never find it full while
        # the heads have room (they refill a cycle later). `level` counts both.
        m.submodules.fifo = fifo = SyncFIFOBuffered(width=self.width, depth=self.depth)
        m.d.comb += [fifo.w_data.eq(self.w_data), fifo.w_en.eq(self.w_en),
                     self.w_rdy.eq(fifo.w_rdy)]
        v0, v1 = Signal(), Signal()
        h0, h1 = Signal(self.width), Signal(self.width)
        m.d.comb += [self.r_rdy.eq(v0), self.r_data.eq(h0)]
        # refill whenever at most one head is full: decided from registers only
        m.d.comb += fifo.r_en.eq(~(v0 & v1))
        arrives = fifo.r_rdy & fifo.r_en
        take = self.r_en & v0
        after0 = Mux(take, v1, v0)                    # head 0 full after the read?
        with m.If(take):
            m.d.sync += [h0.eq(h1), v0.eq(v1), v1.eq(0)]
        with m.If(arrives):
            with m.If(~after0):
                m.d.sync += [h0.eq(fifo.r_data), v0.eq(1)]
            with m.Else():
                m.d.sync += [h1.eq(fifo.r_data), v1.eq(1)]
        # the level is a counter of its own (no adder behind it), busy its nonzero flag
        written = self.w_en & self.w_rdy
        with m.If(written & ~take):
            m.d.sync += [self.level.eq(self.level + 1), self.busy.eq(1)]
        with m.Elif(take & ~written):
            m.d.sync += [self.level.eq(self.level - 1), self.busy.eq(self.level != 1)]
        return m
