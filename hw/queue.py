"""A job queue for slow fabric: a buffered FIFO followed by four head registers.

Amaranth's FIFOs update their pointers from the read enable in the same cycle, so a consumer
that decides to read from the head (an arbiter) forms one path from the head, through its own
logic, into the FIFO's control. Here the first two heads are registers the consumer can see
(``r_data``/``r_rdy`` and the one behind it, ``r_next_data``/``r_next_rdy``), so it can decide a
cycle ahead and drive ``r_en`` from a register of its own (the PEs' registered grant in
hw/lane.py); the RAM refills the heads whenever they have room, judged from registers, so
neither side's control waits on the other's. Same interface as
:class:`amaranth.lib.fifo.SyncFIFOBuffered` (``w_*``, ``r_*``, ``level``); two more cycles from
a write to the head, and one read per cycle.
"""

from amaranth.hdl import Const, Elaboratable, Module, Mux, Signal
from amaranth.lib import memory

__all__ = ["PrefetchQueue", "shift_in"]


def shift_in(m, take, arrive, word, valid, slots):
    """Registers ``slots`` (``valid`` filled in order, ``slots[0]`` the head): shift down by
    one when ``take``; ``word`` lands in the first slot left empty when ``arrive``.

    Every slot left empty loads ``word`` whether it arrives or not (an empty slot's contents
    do not matter), so each slot's multiplexer is chosen by a LUT of registers: hold, shift, or
    load."""
    n = len(slots)
    for i in range(n):
        above = valid[i + 1] if i + 1 < n else Const(0)
        below = valid[i - 1] if i > 0 else Const(1)
        hold = ~take & valid[i]
        shift = take & above
        with m.If(~hold):
            m.d.sync += slots[i].eq(Mux(shift, slots[i + 1] if i + 1 < n else word, word))
        m.d.sync += valid[i].eq(Mux(take, above | (arrive & valid[i]),
                                    valid[i] | (arrive & below)))


class PrefetchQueue(Elaboratable):
    """``depth`` entries of ``width`` bits; ``r_data``/``r_rdy`` and
    ``r_next_data``/``r_next_rdy`` come straight from registers.

    The writer works on credit: ``w_en`` only while ``level < depth`` (``w_rdy``); a write
    beyond that is lost."""

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
        self.r_next_data = Signal(width)              # the entry behind the head
        self.r_next_rdy = Signal()
        self.level = Signal(range(depth + 1))         # a register
        self.busy = Signal()                          # level != 0, a register

    def elaborate(self, platform):
        m = Module()
        depth = self.depth
        # Entries wait in a RAM (block RAM: read synchronously), then in four head registers
        # filled in order (v[i + 1] implies v[i]); the consumer sees the first two. A RAM
        # read is issued whenever the heads have room for it and for the read in flight,
        # judged from registers alone; with four heads a read every cycle leaves two full.
        # The RAM never reads the word written in the same cycle (a read needs an entry
        # written before; the write pointer meets the read pointer only when all `depth`
        # entries are held, and the writer never writes then): `no_rw_check`.
        m.submodules.storage = storage = memory.Memory(
            shape=self.width, depth=depth, init=[], attrs={"no_rw_check": 1})
        wp = storage.write_port()
        rp = storage.read_port(domain="comb")
        read_data = Signal(self.width)
        m.d.sync += read_data.eq(rp.data)             # merged into the block RAM's read port
        produce = Signal(range(depth))
        consume = Signal(range(depth))
        stored_any = Signal()                         # entries in the RAM, not yet read
        stored = Signal(range(depth + 1))
        in_flight = Signal()                          # a RAM read lands in `read_data` now
        heads = 4
        v = [Signal(name=f"v{i}") for i in range(heads)]
        h = [Signal(self.width, name=f"h{i}") for i in range(heads)]

        m.d.comb += [wp.addr.eq(produce), wp.data.eq(self.w_data), wp.en.eq(self.w_en),
                     self.w_rdy.eq(self.level != depth)]
        with m.If(self.w_en):
            m.d.sync += produce.eq(Mux(produce == depth - 1, 0, produce + 1))

        # room for one more: at most 3 heads full with nothing in flight, or 2 with a read
        issue = stored_any & ~v[heads - 1] & ~(in_flight & v[heads - 2])
        m.d.comb += rp.addr.eq(consume)
        m.d.sync += in_flight.eq(issue)
        with m.If(issue):
            m.d.sync += consume.eq(Mux(consume == depth - 1, 0, consume + 1))
        with m.If(self.w_en & ~issue):
            m.d.sync += [stored.eq(stored + 1), stored_any.eq(1)]
        with m.Elif(issue & ~self.w_en):
            m.d.sync += [stored.eq(stored - 1), stored_any.eq(stored != 1)]

        m.d.comb += [self.r_rdy.eq(v[0]), self.r_data.eq(h[0]),
                     self.r_next_rdy.eq(v[1]), self.r_next_data.eq(h[1])]
        take = self.r_en & v[0]
        shift_in(m, take, in_flight, read_data, v, h)
        # the level is a counter of its own (no adder behind it), busy its nonzero flag
        with m.If(self.w_en & ~take):
            m.d.sync += [self.level.eq(self.level + 1), self.busy.eq(1)]
        with m.Elif(take & ~self.w_en):
            m.d.sync += [self.level.eq(self.level - 1), self.busy.eq(self.level != 1)]
        return m
