"""One processing element of the sparse MAC array: its activation FIFO, its column walker, its
MAC and accumulator banks (see :mod:`hw.walker`, :mod:`hw.accumulator`).

PE ``(r, c)`` listens to bus ``c``: every activation of column group ``c`` (of any layer, any
inference in flight) reaches it, and it walks its own nonzero weights of that column - those
of row group ``r`` - one per cycle. Zero weights are never stored and zero activations never
reach the bus, so neither costs a cycle. The bus never waits on a PE: each PE raises
``almost_full`` early enough that whatever is on its way still fits.
"""

from amaranth.hdl import Module
from amaranth.lib import stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from core.ir import SparseProgram

from .accumulator import MacBanks
from .images import Geometry, bus_layout, drain_layout, entry_layout, pack_entries, pack_pointers
from .walker import ColumnWalker

__all__ = ["SparsePE"]


class SparsePE(wiring.Component):
    """PE ``(row, col)`` of ``program``'s grid.

    Members
    -------
    bus : In(stream.Signature(bus_layout(geo), always_ready=True))
        Activations and end tokens of the PE's column group; never while ``almost_full``
        (give or take what the bus's registers hold).
    almost_full : Out(1)
        The FIFO is nearly full (a register).
    overflow : Out(1)
        Sticky: an item arrived at a full FIFO (the bus broke its contract; never in a
        correct design, watched by the tests).
    done, drain, partial, release
        The accumulator banks' (:class:`~hw.accumulator.MacBanks`).
    load_addr, load_data, load_en
        Uploaded weights only: the walker's entry memory write (:class:`~hw.walker.ColumnWalker`).
    """

    def __init__(self, program: SparseProgram, geo: Geometry, row: int, col: int):
        if not isinstance(program, SparseProgram):
            raise TypeError(f"program must be a SparseProgram, not {program!r}")
        if not (0 <= row < geo.rows and 0 <= col < geo.cols):
            raise ValueError(f"PE ({row}, {col}) is not on the {geo.rows}x{geo.cols} grid")
        self.program, self.geo, self.row, self.col = program, geo, row, col
        self.index = row * geo.cols + col
        uploaded = geo.weights == "uploaded"
        self.walker = ColumnWalker(
            geo, pack_pointers(program, self.index, geo),
            None if uploaded else pack_entries(program, self.index, geo),
            depth=geo.entry_depth[self.index])
        self.banks = MacBanks(geo, col)
        upload = {}
        if uploaded:
            upload = {"load_addr": In(geo.start_bits), "load_data": In(entry_layout(geo).size),
                      "load_en": In(1)}
        super().__init__({
            "bus": In(stream.Signature(bus_layout(geo), always_ready=True)),
            "almost_full": Out(1),
            "overflow": Out(1),
            "done": Out(geo.slots),
            "drain": In(stream.Signature(drain_layout(geo), always_ready=True)),
            "partial": Out(self.banks.partial.shape()),
            "release": In(stream.Signature(range(geo.slots), always_ready=True)),
            **upload,
        })

    def elaborate(self, platform):
        m = Module()
        geo = self.geo
        m.submodules.fifo = fifo = SyncFIFOBuffered(width=bus_layout(geo).size,
                                                    depth=geo.fifo_depth)
        m.submodules.walker = walker = self.walker
        m.submodules.banks = banks = self.banks
        m.d.comb += [fifo.w_data.eq(self.bus.payload), fifo.w_en.eq(self.bus.valid)]
        m.d.sync += self.almost_full.eq(fifo.level >= geo.fifo_threshold)
        with m.If(self.bus.valid & ~fifo.w_rdy):
            m.d.sync += self.overflow.eq(1)
        m.d.comb += [walker.i.valid.eq(fifo.r_rdy), walker.i.payload.eq(fifo.r_data),
                     fifo.r_en.eq(walker.i.ready)]
        wiring.connect(m, walker.o, banks.i)
        if geo.accumulators == "distributed":
            m.d.comb += [banks.drain.valid.eq(self.drain.valid),
                         banks.drain.payload.eq(self.drain.payload)]
        else:       # the walker puts each drained row in the op stream: from a register
            m.d.sync += [walker.drain.valid.eq(self.drain.valid),
                         walker.drain.payload.eq(self.drain.payload)]
        m.d.comb += [
            self.partial.eq(banks.partial), self.done.eq(banks.done),
            banks.release.valid.eq(self.release.valid),
            banks.release.payload.eq(self.release.payload),
        ]
        if geo.weights == "uploaded":
            m.d.comb += [walker.load_addr.eq(self.load_addr),
                         walker.load_data.eq(self.load_data), walker.load_en.eq(self.load_en)]
        return m
