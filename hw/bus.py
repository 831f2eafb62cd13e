"""A column bus: the activations of one column group, from their sources to the R PEs of a grid
column.

Sources are the reducers that drive this bus (taken round-robin) and the input loader (taken
when no reducer has anything: the deeper layers' activations free banks sooner). The chosen
item waits in the root register and goes out when no PE of the column is almost full; it
reaches the PEs through registered fan-out levels (eight ends each), and their almost-full
flags come back through a registered OR tree. Nothing combinational crosses the chip; the PEs'
FIFOs are sized for what is on its way (:attr:`~hw.images.Geometry.fifo_threshold`).
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .images import REPLICA, Geometry, bus_layout

__all__ = ["ColumnBus", "or_tree"]


def or_tree(m, bits, levels: int, name: str):
    """The OR of ``bits`` through ``levels`` register levels, eight inputs a level."""
    values = list(bits)
    for level in range(levels):
        groups = [values[k:k + 8] for k in range(0, len(values), 8)]
        regs = []
        for g, group in enumerate(groups):
            reg = Signal(name=f"{name}_l{level}_{g}")
            m.d.sync += reg.eq(Cat(*group).any())
            regs.append(reg)
        values = regs
    assert len(values) == 1, "too few levels for the tree"
    return values[0]


class ColumnBus(wiring.Component):
    """Bus of ``sources`` inputs (the last one the input loader) to ``geo.rows`` PEs.

    Members
    -------
    src{i} : In(stream.Signature(bus_layout(geo)))
    pe{j} : Out(stream.Signature(bus_layout(geo), always_ready=True))
    almost_full : In(rows)
        Each PE's (a register there).
    """

    def __init__(self, geo: Geometry, sources: int):
        if not isinstance(sources, int) or sources < 1:
            raise ValueError(f"sources must be a positive integer, not {sources!r}")
        self.geo, self.sources = geo, sources
        item = bus_layout(geo)
        super().__init__({
            **{f"src{i}": In(stream.Signature(item)) for i in range(sources)},
            **{f"pe{j}": Out(stream.Signature(item, always_ready=True))
               for j in range(geo.rows)},
            "almost_full": In(geo.rows),
        })

    def elaborate(self, platform):
        m = Module()
        geo = self.geo
        item = bus_layout(geo)
        srcs = [getattr(self, f"src{i}") for i in range(self.sources)]
        stall = or_tree(m, [self.almost_full[j] for j in range(geo.rows)],
                        geo.stall_stages, "stall")
        root_valid = Signal()
        root = Signal(item)
        send = root_valid & ~stall
        accept = ~root_valid | send

        # round-robin among the reducers; the input loader when none has an item
        reducers = srcs[:-1]
        grant = Signal(range(max(1, self.sources)))
        if reducers:
            rr = Signal(range(len(reducers)))
            valid = Cat(*(s.valid for s in reducers))
            later = Signal(len(reducers))
            m.d.comb += later.eq(valid & ~((Const(1, len(reducers) + 1) << rr) - 1)
                                 [:len(reducers)])
            m.d.comb += grant.eq(len(reducers))
            for i in reversed(range(len(reducers))):
                with m.If(valid[i]):
                    m.d.comb += grant.eq(i)
            with m.If(later.any()):
                for i in reversed(range(len(reducers))):
                    with m.If(later[i]):
                        m.d.comb += grant.eq(i)
            with m.If(accept & valid.any()):
                m.d.sync += rr.eq(Mux(grant == len(reducers) - 1, 0, grant + 1))
        else:
            m.d.comb += grant.eq(0)
        for i, s in enumerate(srcs):
            m.d.comb += s.ready.eq(accept & (grant == i))
        offered = Cat(*(s.valid for s in srcs)).any()
        with m.If(accept):
            m.d.sync += root_valid.eq(offered)
            for i, s in enumerate(srcs):
                with m.If(grant == i):
                    m.d.sync += root.eq(s.payload)

        # registered fan-out to the PEs
        copies = [(send, root)]
        for level in range(geo.bus_stages):
            remaining = geo.bus_stages - level
            count = -(-geo.rows // 8 ** remaining)
            per = -(-count // len(copies))
            regs = []
            for k in range(count):
                valid, payload = copies[min(k // per, len(copies) - 1)]
                v = Signal(name=f"fan{level}_{k}_valid", attrs=REPLICA)
                p = Signal(item, name=f"fan{level}_{k}_item", reset_less=True, attrs=REPLICA)
                m.d.sync += [v.eq(valid), p.eq(payload)]
                regs.append((v, p))
            copies = regs
        for j in range(geo.rows):
            valid, payload = copies[j * len(copies) // geo.rows]
            pe = getattr(self, f"pe{j}")
            m.d.comb += [pe.valid.eq(valid), pe.payload.eq(payload)]
        return m
