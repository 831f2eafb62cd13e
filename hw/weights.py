"""The loader of uploaded weights: the weight image (:func:`hw.images.weight_image`), a byte a
beat, into the PEs' entry memories - PE 0's from address 0, then PE 1's, and so on."""

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from .images import Geometry, entry_bytes, entry_layout

__all__ = ["WeightLoader", "WEIGHT_BYTE", "UploadedWeightMemory"]

#: One beat of an uploaded weight image.
WEIGHT_BYTE = data.StructLayout({"data": 8, "first": 1})


class UploadedWeightMemory(memory.Memory):
    """A PE's entry memory for uploaded weights: an Amaranth :class:`~amaranth.lib.memory.Memory`
    with no initial contents and one address (a write's or the walker's), so that a single-port
    RAM can hold it. The design does not say which RAM: a platform's ``get_memory()`` hook may
    map it (the iCE40 family puts it in SPRAM, ``boards/families/ice40.py``)."""


class WeightLoader(wiring.Component):
    """Members
    -------
    weights : In(stream.Signature(WEIGHT_BYTE))
        The image, ``first`` set on its first byte (which restarts the load); bytes past the
        image's end are dropped.
    addr : Out(start_bits), data : Out(entry), en : Out(pes)
        The write into PE ``k``'s entry memory (``en[k]``), from registers, a cycle after a
        word's last byte; no byte is taken in that cycle.
    """

    def __init__(self, geo: Geometry):
        self.geo = geo
        super().__init__({
            "weights": In(stream.Signature(WEIGHT_BYTE)),
            "addr": Out(geo.start_bits),
            "data": Out(entry_layout(geo).size),
            "en": Out(geo.pes),
        })

    def elaborate(self, platform):
        m = Module()
        geo, P = self.geo, self.geo.pes
        size = entry_bytes(geo)
        width = entry_layout(geo).size
        beat = self.weights
        word = Signal(8 * size)
        count = Signal(range(size + 1))                # bytes of the word taken so far
        byte_last = Signal(init=size == 1)             # the next byte completes a word
        pe = Signal(range(P + 1))                      # P: the image is complete
        pe_hot = Signal(P + 1, init=1 << P)            # one-hot `pe`; starts complete
        addr = Signal(geo.start_bits)
        left = Signal(geo.start_bits)                  # words of this PE after this one
        at_end = Signal()                              # left == 0
        depth_left = Array([Const(d - 1, geo.start_bits) for d in geo.entry_depth] + [Const(0)])
        writing = Signal()                             # en.any(), as a register
        m.d.comb += beat.ready.eq(~writing)
        m.d.sync += [self.en.eq(0), writing.eq(0)]
        take = beat.valid & ~writing
        start = beat.payload.first
        first_depth = geo.entry_depth[0]
        with m.If(take):
            whole = Cat(word[8:], beat.payload.data)
            m.d.sync += word.eq(whole)
            complete = Mux(start, size == 1, byte_last)
            with m.If(complete):
                m.d.sync += [count.eq(0), byte_last.eq(size == 1)]
                cur_hot = Mux(start, 1, pe_hot)
                cur_pe = Mux(start, 0, pe)
                cur_addr = Mux(start, 0, addr)
                cur_left = Mux(start, first_depth - 1, left)
                cur_end = Mux(start, first_depth == 1, at_end)
                with m.If(~cur_hot[P]):                # not past the image's end
                    m.d.sync += [self.en.eq(cur_hot[:P]), writing.eq(1),
                                 self.addr.eq(cur_addr), self.data.eq(whole[:width])]
                    with m.If(cur_end):
                        nxt = depth_left[cur_pe + 1]
                        m.d.sync += [pe.eq(cur_pe + 1), pe_hot.eq(cur_hot << 1),
                                     addr.eq(0), left.eq(nxt), at_end.eq(nxt == 0)]
                    with m.Else():
                        m.d.sync += [pe.eq(cur_pe), pe_hot.eq(cur_hot),
                                     addr.eq(cur_addr + 1), left.eq(cur_left - 1),
                                     at_end.eq(cur_left == 1)]
                with m.Else():
                    m.d.sync += pe_hot.eq(cur_hot)
            with m.Else():
                got = Mux(start, 0, count) + 1        # bytes of this word so far
                m.d.sync += [count.eq(got), byte_last.eq(got == size - 1)]
                with m.If(start):
                    m.d.sync += [pe.eq(0), pe_hot.eq(1), addr.eq(0),
                                 left.eq(first_depth - 1), at_end.eq(first_depth == 1)]
        return m
