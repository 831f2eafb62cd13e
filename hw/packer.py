"""A byte stream into the accelerator's input beats: ``lanes`` values a beat, each vector of
``length`` values padded with zeros to whole beats (what a byte-wide link feeds)."""

from amaranth.hdl import Module, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["LanePacker"]


class LanePacker(wiring.Component):
    """Members
    -------
    i : In(stream.Signature(signed(8)))
        Vectors of ``length`` values, back to back.
    o : Out(stream.Signature(ArrayLayout(signed(8), lanes)))
        ``ceil(length / lanes)`` beats per vector; value ``t * lanes + k`` of a vector in
        lane ``k`` of beat ``t``.
    """

    def __init__(self, lanes: int, length: int):
        for name, value in (("lanes", lanes), ("length", length)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        self.lanes, self.length = lanes, length
        super().__init__({"i": In(stream.Signature(signed(8))),
                          "o": Out(stream.Signature(data.ArrayLayout(signed(8), lanes)))})

    def elaborate(self, platform):
        m = Module()
        lanes = self.lanes
        beat = Signal(data.ArrayLayout(signed(8), lanes))
        lane = Signal(range(lanes))
        index = Signal(range(self.length))          # value of the vector being taken
        full = Signal()
        m.d.comb += [self.o.valid.eq(full), self.o.payload.eq(beat),
                     self.i.ready.eq(~full)]
        with m.If(full & self.o.ready):
            m.d.sync += full.eq(0)
        # the beat register is written only while not full, each lane as its value comes, the
        # lanes after a vector's last value zeroed with it (nothing waits on o.ready)
        with m.If(self.i.valid & self.i.ready):
            last = index == self.length - 1
            for k in range(lanes):
                with m.If(lane == k):
                    m.d.sync += beat[k].eq(self.i.payload)
                with m.Elif(last & (lane < k)):
                    m.d.sync += beat[k].eq(0)
            with m.If(last):
                m.d.sync += [index.eq(0), lane.eq(0), full.eq(1)]
            with m.Else():
                m.d.sync += index.eq(index + 1)
                with m.If(lane == lanes - 1):
                    m.d.sync += [lane.eq(0), full.eq(1)]
                with m.Else():
                    m.d.sync += lane.eq(lane + 1)
        return m
