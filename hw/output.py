"""The output unit: the last layer's results, from the reducers' output memories, streamed in
the model's output order.

Each reducer writes its last-layer outputs into a memory of its own holding two inferences
(output buffers 0 and 1, in turn). Buffer ``b`` is complete once every reducer has written it
since the output unit last read it (all fill parities differ from its read parity); the unit
then streams it and flips its read parity, freeing the buffer.
"""

from amaranth.hdl import Array, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from core.ir import SparseProgram

from .images import Geometry, result_layout
from .walker import _count

__all__ = ["OutputUnit"]


class OutputUnit(wiring.Component):
    """Members
    -------
    result{r} : In(stream.Signature(result_layout(geo), always_ready=True))
        Reducer ``r``'s last-layer outputs.
    filled_even, filled_odd : In(2)
        Every reducer's fill parity of each buffer is 0 / 1.
    parity : Out(2)
        Reads of each buffer, mod 2.
    output : Out(stream.Signature(signed(8)))
        ``out_features`` values per inference, in model order.
    completed : Out(1)
        A buffer was found complete (an inference is done) this cycle.
    idle : Out(1)
        Nothing being streamed.
    """

    #: entries of the output queue
    QUEUE = 4

    def __init__(self, program: SparseProgram, geo: Geometry):
        self.program, self.geo = program, geo
        results = {f"result{r}": In(stream.Signature(result_layout(geo), always_ready=True))
                   for r in range(geo.rows)}
        super().__init__({
            **results,
            "filled_even": In(2),
            "filled_odd": In(2),
            "parity": Out(2),
            "output": Out(stream.Signature(signed(8))),
            "completed": Out(1),
            "idle": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        geo = self.geo
        R, N = geo.rows, geo.out_features
        group, local = self.program.output_place()
        addr_w = result_layout(geo)["addr"].shape.width
        place = data.StructLayout({"group": unsigned(max(1, (R - 1).bit_length())),
                                   "local": unsigned(addr_w)})
        m.submodules.places = places = memory.Memory(
            shape=place, depth=N, init=[{"group": int(g), "local": int(k)}
                                        for g, k in zip(group, local)])
        place_rp = places.read_port()
        reads = []
        for r in range(R):
            mem = memory.Memory(shape=signed(8), depth=geo.out_depth, init=[])
            m.submodules[f"buffer{r}"] = mem
            wp, rp = mem.write_port(), mem.read_port()
            res = getattr(self, f"result{r}")
            m.d.comb += [wp.addr.eq(res.payload.addr), wp.data.eq(res.payload.value),
                         wp.en.eq(res.valid)]
            reads.append(rp)
        m.submodules.queue = queue = SyncFIFOBuffered(width=8, depth=self.QUEUE)
        m.d.comb += [self.output.valid.eq(queue.r_rdy), self.output.payload.eq(queue.r_data),
                     queue.r_en.eq(self.output.ready)]

        buf = Signal()
        index = Signal(range(N + 1))
        in_flight = Signal(range(self.QUEUE + 1))
        issue = Signal()
        # registered (the reducers' fill parities come from far away); a cycle's SETTLE after
        # a buffer was read lets it see the next buffer before IDLE reads it
        ready = Signal()
        m.d.sync += ready.eq(Mux(self.parity.bit_select(buf, 1),
                                 self.filled_even.bit_select(buf, 1),
                                 self.filled_odd.bit_select(buf, 1)))
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.idle.eq(~queue.r_rdy)
                with m.If(ready & ~queue.r_rdy):
                    m.d.comb += self.completed.eq(1)
                    m.d.sync += index.eq(0)
                    m.next = "STREAM"
            with m.State("STREAM"):
                with m.If(index == N):
                    with m.If(in_flight == 0):
                        m.d.sync += [self.parity.eq(self.parity ^ Mux(buf, 2, 1)),
                                     buf.eq(~buf)]
                        m.next = "SETTLE"
                with m.Elif(queue.level + in_flight < self.QUEUE):
                    m.d.comb += issue.eq(1)
            with m.State("SETTLE"):
                m.next = "IDLE"
        # issue: the place of output `index` (a ROM read), then its buffer word, then the queue
        m.d.comb += place_rp.addr.eq(index)
        with m.If(issue):
            m.d.sync += index.eq(index + 1)
        s1_valid, s2_valid = Signal(), Signal()
        s2_group = Signal.like(data.View(place, place_rp.data).group)
        m.d.sync += [s1_valid.eq(issue), s2_valid.eq(s1_valid)]
        word = data.View(place, place_rp.data)
        base = Mux(buf, geo.out_slots[-1], 0)
        for rp in reads:
            m.d.comb += rp.addr.eq(base + word.local)
        m.d.sync += s2_group.eq(word.group)
        value = Array(rp.data for rp in reads)[s2_group]
        m.d.comb += [queue.w_data.eq(value), queue.w_en.eq(s2_valid)]
        _count(m, in_flight, issue, s2_valid)
        return m
