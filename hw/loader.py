"""The input loader: an inference's inputs, C values a beat, onto the C buses.

Beat ``t`` carries the inputs ``t * C + i`` (lane ``i``, model order); lane ``i`` goes to bus
``i`` as local column ``t`` of layer 0 (see :class:`~core.ir.SparseProgram`). Zero inputs
stay off the bus. After the last beat every bus gets the end token of the inference's layer-0
bank. An inference starts only once that bank is free: every reducer has drained it since the
loader last filled it.
"""

from amaranth.hdl import Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from .images import Geometry, bus_layout, loader_queue_depth

__all__ = ["InputLoader"]


class InputLoader(wiring.Component):
    """Members
    -------
    input : In(stream.Signature(ArrayLayout(signed(8), cols)))
        ``ceil(in_features / cols)`` beats per inference (lanes past the last input ignored).
    bus{c} : Out(stream.Signature(bus_layout(geo)))
        Layer-0 activations and end tokens for bus ``c``.
    drained_even, drained_odd : In(slots)
        Every reducer's drain parity of each bank is 0 / 1.
    started : Out(1)
        An inference's first beat was taken the cycle before.
    """

    def __init__(self, geo: Geometry):
        if not isinstance(geo, Geometry):
            raise TypeError(f"geo must be a Geometry, not {geo!r}")
        self.geo = geo
        buses = {f"bus{c}": Out(stream.Signature(bus_layout(geo))) for c in range(geo.cols)}
        super().__init__({
            "input": In(stream.Signature(data.ArrayLayout(signed(8), geo.cols))),
            **buses,
            "drained_even": In(geo.slots),
            "drained_odd": In(geo.slots),
            "started": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        geo = self.geo
        C, T, B = geo.cols, geo.beats, geo.banks[0]
        item = bus_layout(geo)
        queues = []
        depth = loader_queue_depth(geo)
        for c in range(C):
            q = SyncFIFOBuffered(width=item.size, depth=depth)
            m.submodules[f"queue{c}"] = q
            bus = getattr(self, f"bus{c}")
            m.d.comb += [bus.valid.eq(q.r_rdy), bus.payload.eq(q.r_data), q.r_en.eq(bus.ready)]
            queues.append(q)
        # room in every queue, as a register: writes reach a queue a cycle after the beat is
        # taken (from registers), so three entries free a cycle ago leave one for this beat
        # after the one in flight (at most one write a cycle)
        room = Signal()
        m.d.sync += room.eq(_all([q.level < depth - 2 for q in queues]))

        beat = Signal(range(T))
        bank = Signal(range(B))
        fill = Signal(B)                          # fill parity of each layer-0 bank
        ending = Signal()                         # the end tokens are next
        # the handshake reads registers only: whether the bank is free (a cycle late;
        # `blocked` covers the end tokens and the cycle after the bank pointer moved, when
        # `free` still tells of the old bank), and whether the next beat is an inference's first
        free = Signal()
        blocked = Signal()                        # ending, or ending the cycle before
        m.d.sync += free.eq(Mux(fill.bit_select(bank, 1), self.drained_odd.bit_select(bank, 1),
                                self.drained_even.bit_select(bank, 1)))
        first, last = Signal(init=1), Signal(init=T == 1)
        take = Signal()
        m.d.comb += [
            self.input.ready.eq(room & ~blocked & (~first | free)),
            take.eq(self.input.valid & self.input.ready),
        ]
        m.d.sync += self.started.eq(take & first)
        for i, q in enumerate(queues):
            value = self.input.payload[i]
            real = (T - 1) * C + i < geo.in_features      # lane i of the last beat is an input
            keep = (value != 0) if geo.skip_zero_activations else Const(1)
            word, write = Signal(item, name=f"word{i}"), Signal(name=f"write{i}")
            m.d.comb += [word.column.eq(beat), word.value.eq(value), word.slot.eq(bank)]
            with m.If(ending):
                m.d.comb += [word.end.eq(1), write.eq(room)]
            with m.Else():
                m.d.comb += write.eq(take & keep & (Const(int(real)) | ~last))
            # into the queue a cycle later, from registers (the FIFO's own level logic then
            # starts at a flip-flop)
            m.d.sync += [q.w_en.eq(write), q.w_data.eq(word)]
        with m.If(take):
            m.d.sync += [beat.eq(Mux(last, 0, beat + 1)), first.eq(last),
                         last.eq(Mux(last, T == 1, beat + 2 == T))]
            with m.If(last):
                m.d.sync += ending.eq(1)
        m.d.sync += blocked.eq(ending | (take & last))
        with m.If(ending & room):
            m.d.sync += [ending.eq(0), fill.eq(fill ^ (1 << bank)),
                         bank.eq(Mux(bank == B - 1, 0, bank + 1))]
        return m


def _all(bits):
    out = bits[0]
    for bit in bits[1:]:
        out = out & bit
    return out
