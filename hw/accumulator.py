"""The MAC and accumulator banks of a PE.

Every entry from the walker is decoded (relative row index -> row), multiplied by its
activation and added into its row of its bank; end tokens are counted per bank, and a bank
whose layer has delivered every token is ``done``. The PE's reducer then drains the bank one
row per cycle through a port of its own (reading a row clears it), and releases it for the
next inference: MACs into one bank and a drain of another never meet, so every bank is a
memory with one write port and one read port.

Pipeline::

    D: row decode, product -> A: bank[row] += product (asynchronous read, one cycle)
"""

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import memory, stream, wiring
from amaranth.lib.wiring import In, Out

from .images import Geometry, drain_layout
from .walker import op_layout

__all__ = ["MacBanks"]


def _select(values, index):
    """``values[index]`` as an AND-OR of one-hot terms (what LUT RAM outputs map to best)."""
    out = 0
    for k, value in enumerate(values):
        out = out | Mux(index == k, value, 0)
    return out


class MacBanks(wiring.Component):
    """Multiply-accumulate into ``geo.slots`` banks for a PE in grid column ``col``.

    Members
    -------
    i : In(stream.Signature(op_layout(geo), always_ready=True))
        Entries and end tokens from the column walker.
    done : Out(slots)
        Bank ``s`` holds its whole layer's sums (every end token it waits for arrived and was
        accumulated after all entries before it); until released.
    drain : In(stream.Signature(drain_layout(geo), always_ready=True))
        Read (and clear) row ``addr`` of bank ``slot``; only of a ``done`` bank.
    partial : Out(signed(partial_width))
        The row a drain read, :attr:`DRAIN_LATENCY` cycles after the request.
    release : In(stream.Signature(range(slots), always_ready=True))
        Bank ``payload`` was drained: it takes the next inference.
    """

    #: cycles from a drain request to its ``partial``: a local register of the request (the
    #: reducer's reaches C PEs), then the read
    DRAIN_LATENCY = 2

    def __init__(self, geo: Geometry, col: int):
        if not isinstance(geo, Geometry):
            raise TypeError(f"geo must be a Geometry, not {geo!r}")
        if not 0 <= col < geo.cols:
            raise ValueError(f"col must be in 0..{geo.cols - 1}, not {col!r}")
        self.geo, self.col = geo, col
        super().__init__({
            "i": In(stream.Signature(op_layout(geo), always_ready=True)),
            "done": Out(geo.slots),
            "drain": In(stream.Signature(drain_layout(geo), always_ready=True)),
            "partial": Out(signed(geo.partial_width)),
            "release": In(stream.Signature(range(geo.slots), always_ready=True)),
        })

    def elaborate(self, platform):
        m = Module()
        geo, op = self.geo, self.i.payload
        S, width = geo.slots, geo.partial_width

        # D: the row of this entry (relative index: rows skipped since the previous entry's),
        # and its product
        prev = Signal(geo.row_bits)
        row = Signal(geo.row_bits)
        m.d.comb += row.eq(Mux(op.first, op.gap, prev + op.gap + 1))
        with m.If(self.i.valid & ~op.end):
            m.d.sync += prev.eq(row)
        d_valid, d_end, d_slot = Signal(), Signal(), Signal.like(op.slot)
        d_row, d_product = Signal(geo.row_bits), Signal(signed(16))
        m.d.sync += [d_valid.eq(self.i.valid), d_end.eq(op.end), d_slot.eq(op.slot),
                     d_row.eq(row), d_product.eq(op.weight * op.act)]

        # A: read-add-write the row of the entry's bank; a drain reads (and clears) another.
        # Each bank is one memory whose single address serves its read and its write: the
        # MAC's row, or the drain's while that bank drains.
        drain_valid = Signal()
        drain = Signal.like(self.drain.payload)
        m.d.sync += [drain_valid.eq(self.drain.valid), drain.eq(self.drain.payload)]
        reads, writes = [], []
        for s in range(S):
            depth = geo.row_slots[geo.layer_of(s)]
            bank = memory.Memory(shape=signed(width), depth=depth, init=[])
            m.submodules[f"bank{s}"] = bank
            wp, rp = bank.write_port(), bank.read_port(domain="comb")
            draining = drain_valid & (drain.slot == s)
            addr = Signal(range(depth), name=f"addr{s}")
            m.d.comb += [addr.eq(Mux(draining, drain.addr, d_row)), rp.addr.eq(addr),
                         wp.addr.eq(addr),
                         wp.en.eq(draining | (d_valid & ~d_end & (d_slot == s)))]
            reads.append(rp.data)
            writes.append((wp, draining))
        total = Signal(signed(width))
        m.d.comb += total.eq(_select(reads, d_slot) + d_product)
        for wp, draining in writes:
            m.d.comb += wp.data.eq(Mux(draining, 0, total))
        m.d.sync += self.partial.eq(_select(reads, drain.slot))

        # end tokens, per bank
        for s in range(S):
            expected = geo.expected_ends[self.col][geo.layer_of(s)]
            ends = Signal(range(expected + 1), name=f"ends{s}")
            token = d_valid & d_end & (d_slot == s)
            with m.If(token):
                with m.If(ends == expected - 1):
                    m.d.sync += [ends.eq(0), self.done[s].eq(1)]
                with m.Else():
                    m.d.sync += ends.eq(ends + 1)
            with m.If(self.release.valid & (self.release.payload == s)):
                m.d.sync += self.done[s].eq(0)
        return m
