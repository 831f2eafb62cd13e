"""The reducer of one grid row: drains a finished bank of its C PEs row by row, adds the C
partial sums of each row (an exact registered adder tree), requantizes and pools them with one
shared :class:`~hw.requant.Requantizer` and :class:`~hw.pool.Pooler`, and sends the nonzero
results as the next layer's activations on its bus - or, in the last layer, writes them into
its output memory.

A bank of layer ``m`` is drained once all C PEs have it ``done`` and the bank it fills next
(layer ``m + 1``'s, or an output buffer) is free: every reducer has drained that one since this
reducer last filled it (``drained_even``/``drained_odd``: all drain parities 0 / 1). Later
layers go first. Drains follow each other back to back: every row carries its job through the
pipeline, and a job's last row is followed by its *marker*, which becomes the end token for
the next layer (or, in the last layer, marks the output buffer written). The bank is released
to its PEs once its last read is done.

Pipeline of a row::

    issue (drain request, row parameters) -> [fan-out] -> PE read -> adder tree
        -> Requantizer -> Pooler -> output FIFO (bus) / output memory
"""

from types import SimpleNamespace

from amaranth.hdl import Array, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from core.arith import MULTIPLIER_BITS
from core.ir import SparseProgram

from .accumulator import MacBanks
from .adder import AdderTree
from .images import Geometry, bus_layout, drain_layout, pack_rows, result_layout, row_layout
from .pool import POOL_AVG, POOL_MAX, POOL_NONE, Pooler
from .requant import Requantizer

__all__ = ["Reducer"]


def _delay(m, value, cycles: int, name: str):
    """``value``, ``cycles`` cycles later (a chain of registers)."""
    for n in range(cycles):
        reg = Signal.like(value, name=f"{name}_d{n}")
        m.d.sync += reg.eq(value)
        value = reg
    return value


def _table(values, shape):
    return Array([Const(int(v), shape) for v in values])


class Reducer(wiring.Component):
    """Reducer of grid row ``row``.

    Members
    -------
    pe_done : In(ArrayLayout(slots, cols))
        Each of the row's PEs' ``done``.
    drain : Out(stream.Signature(drain_layout(geo), always_ready=True))
        The row read of every PE of the grid row (a register; the PEs' partial sums come back
        :attr:`latency` cycles after it).
    partials : In(ArrayLayout(signed(partial_width), cols))
        The PEs' partial sums.
    release : Out(stream.Signature(range(slots), always_ready=True))
        A bank whose last row has been read, to the PEs.
    out : Out(stream.Signature(bus_layout(geo)))
        Next-layer activations and end tokens, to the bus this reducer drives.
    result : Out(stream.Signature(result_layout(geo), always_ready=True))
        Last-layer outputs, into this reducer's output memory (buffer ``b`` at ``b *
        out_slots[-1]``).
    drained_even, drained_odd : In(slots)
        Every reducer's drain parity of each bank is 0 / 1.
    drain_parity : Out(slots)
        This reducer's drains of each bank, mod 2.
    out_parity : In(2)
        The output unit's reads of each output buffer, mod 2.
    fill_parity : Out(2)
        This reducer's writes of each output buffer, mod 2.
    """

    def __init__(self, program: SparseProgram, geo: Geometry, row: int):
        if not 0 <= row < geo.rows:
            raise ValueError(f"row must be in 0..{geo.rows - 1}, not {row!r}")
        self.program, self.geo, self.row = program, geo, row
        S, C = geo.slots, geo.cols
        self.latency = MacBanks.drain_latency(geo) + geo.drain_stages
        super().__init__({
            "pe_done": In(data.ArrayLayout(S, C)),
            "drain": Out(stream.Signature(drain_layout(geo), always_ready=True)),
            "partials": In(data.ArrayLayout(signed(geo.partial_width), C)),
            "release": Out(stream.Signature(range(S), always_ready=True)),
            "out": Out(stream.Signature(bus_layout(geo))),
            "result": Out(stream.Signature(result_layout(geo), always_ready=True)),
            "drained_even": In(S),
            "drained_odd": In(S),
            "drain_parity": Out(S),
            "out_parity": In(2),
            "fill_parity": Out(2),
        })

    def _constants(self):
        """Per-layer constants of this row group, as (values, shape)."""
        geo, prog, r = self.geo, self.program, self.row
        L = geo.layers
        red = prog.reducers[r]
        rank = prog.grid.rank(r)
        return {
            "rows": ([red.row_count(m) for m in range(L)], range(max(geo.row_slots) + 1)),
            "group_last": ([g - 1 for g in geo.groups], range(max(geo.groups))),
            "row_base": (list(geo.row_base), range(sum(geo.row_slots) + 1)),
            "col_base": ([rank * geo.out_slots[m] for m in range(L)],
                         range(max(geo.col_slots) + 1)),
            "relu": ([layer.relu for layer in prog.layers], 1),
            "pool_mode": ([POOL_NONE if layer.pool is None else
                           POOL_MAX if layer.pool.kind == "max" else POOL_AVG
                           for layer in prog.layers], 2),
            "pool_multiplier": ([layer.quant.pool_multiplier for layer in prog.layers],
                                MULTIPLIER_BITS),
            "pool_relu": ([bool(layer.pool and layer.pool.relu_after)
                           for layer in prog.layers], 1),
        }

    def _slot(self, layer, pointer):
        """The slot of bank ``pointer`` (a signal) of ``layer``."""
        geo = self.geo
        shape = bus_layout(geo)["slot"].shape
        return Array(Const(geo.slot(layer, b), shape) for b in range(geo.banks[layer]))[pointer]

    def _pick(self, all_done, seen_low, drains, fills, fill, written):
        """Per layer: its next bank is done and the bank it fills next is free."""
        geo = self.geo
        L = geo.layers
        ready = []
        for n in range(L):
            done = (all_done & seen_low).bit_select(self._slot(n, drains[n]), 1)
            if n + 1 < L:
                t = self._slot(n + 1, fills[n + 1])
                free = Mux(fill.bit_select(t, 1), self.drained_odd.bit_select(t, 1),
                           self.drained_even.bit_select(t, 1))
            else:           # `written` flips at the marker's issue, fill_parity when it is out
                out_bank = fills[L]
                free = (written.bit_select(out_bank, 1)
                        == self.out_parity.bit_select(out_bank, 1))
            ready.append(done & free)
        return ready

    def elaborate(self, platform):
        m = Module()
        consts = self._constants()
        issued = self._issue(m, consts)
        pool = self._compute(m, consts, issued)
        self._emit(m, consts, issued, pool)
        return m

    def _issue(self, m, consts):
        """Which bank is ready, the job FSM that drains it row by row, the drain requests and
        row-parameter reads, the bus FIFO's accounting and the banks' release. Returns what the
        later stages need (a namespace)."""
        geo, prog = self.geo, self.program
        S, L, C = geo.slots, geo.layers, geo.cols
        item = bus_layout(geo)
        slot_shape = item["slot"].shape

        # ---- which bank is ready ---------------------------------------------------------
        all_done = Signal(S)
        m.d.sync += all_done.eq(_and_all([self.pe_done[c] for c in range(C)]))
        seen_low = Signal(S, init=(1 << S) - 1)     # all_done fell since the bank was drained
        cleared = Signal(S)                         # banks picked this cycle
        m.d.sync += seen_low.eq((seen_low | ~all_done) & ~cleared)
        # per layer, the bank to drain next and the bank to fill next (layers may have
        # different bank counts: both pointers advance once an inference); fills[L]: the
        # next output buffer
        drains = [Signal(range(geo.banks[n]), name=f"drain{n}") for n in range(L)]
        fills = [None] + [Signal(range(geo.banks[n]), name=f"fill{n}") for n in range(1, L)]
        fills.append(Signal(name="out_bank"))
        fill = Signal(S)                            # fill parities of the banks I fill
        written = Signal(2)                         # output buffers' fills begun, mod 2
        # registered: the pick reads flags, not the bank selects behind them. A flag a cycle
        # old is only ever late, never wrong: it turns false only by this reducer's own pick
        # (DRAIN follows) or marker (the drained bank's flag was false since the pick)
        ready = []
        for n, now in enumerate(self._pick(all_done, seen_low, drains, fills, fill, written)):
            ready.append(Signal(name=f"ready{n}"))
            m.d.sync += ready[n].eq(now)

        # ---- the job being issued --------------------------------------------------------
        job = data.StructLayout({"layer": range(L), "slot": slot_shape, "target": slot_shape,
                                 "out_bank": 1})
        cur = Signal(job)
        last_row = Signal(consts["rows"][1])            # the job's last row
        group_last = Signal(consts["group_last"][1])    # a pooling window's last row
        group_before = Signal.like(group_last)          # ... and the one before it
        row_base = Signal(consts["row_base"][1])
        row = Signal.like(last_row)
        in_group = Signal(range(max(geo.groups) + 1))
        k_out = Signal(range(max(geo.out_slots) + 1))
        q = geo.reducer_fifo_depth
        m.submodules.fifo = fifo = SyncFIFOBuffered(width=item.size, depth=q)
        # items in the FIFO or on their way to it; `space`: fewer than q, as a register (the
        # issue decision must not wait on a sum and a compare)
        held = Signal(range(q + 64))
        space = Signal(init=1)
        to_fifo = cur.layer != L - 1      # this job's outputs and marker go to the bus
        room = ~to_fifo | space

        issue, marker = Signal(), Signal()
        # row past the last row, in_group == 0 and in_group == group_last, kept as registers: the issue
        # decision reads only flags
        at_end, first, last = Signal(), Signal(), Signal()
        with m.FSM():
            with m.State("IDLE"):
                for n in range(L):                  # later layers win: they come last
                    with m.If(ready[n]):
                        s = self._slot(n, drains[n])
                        target = self._slot(n + 1, fills[n + 1]) if n + 1 < L else 0
                        m.d.sync += [cur.layer.eq(n), cur.slot.eq(s), cur.target.eq(target),
                                     cur.out_bank.eq(fills[L]),
                                     last_row.eq(max(consts["rows"][0][n] - 1, 0)),
                                     group_last.eq(consts["group_last"][0][n]),
                                     group_before.eq(max(consts["group_last"][0][n] - 1, 0)),
                                     row_base.eq(consts["row_base"][0][n]),
                                     row.eq(0), in_group.eq(0), k_out.eq(0),
                                     at_end.eq(consts["rows"][0][n] == 0), first.eq(1),
                                     last.eq(consts["group_last"][0][n] == 0)]
                        m.d.comb += cleared.eq(1 << s)
                        m.next = "DRAIN"
            with m.State("DRAIN"):
                with m.If(room):
                    with m.If(at_end):
                        m.d.comb += marker.eq(1)
                        m.next = "IDLE"
                    with m.Else():
                        m.d.comb += issue.eq(1)
        with m.If(marker):
            for n in range(L):
                with m.If(cur.layer == n):
                    m.d.sync += [_advance(drains[n], geo.banks[n]),
                                 _advance(fills[n + 1], geo.banks[n + 1] if n + 1 < L else 2)]
            with m.If(cur.layer != L - 1):        # only this reducer's guard reads it
                m.d.sync += fill.eq(fill ^ (1 << cur.target))
            with m.Else():
                m.d.sync += written.eq(written ^ Mux(cur.out_bank, 2, 1))

        # issue a row: the drain request and its row parameters; the marker: no read
        m.d.sync += [self.drain.valid.eq(issue), self.drain.payload.slot.eq(cur.slot),
                     self.drain.payload.addr.eq(row)]
        m.submodules.rowparams = rowparams = memory.Memory(
            shape=row_layout(geo).size, depth=max(1, sum(geo.row_slots)),
            init=pack_rows(prog, self.row, geo))
        param_rp = rowparams.read_port()
        param_addr = Signal(range(sum(geo.row_slots) + 1))
        m.d.comb += param_addr.eq(row_base + row)
        with m.If(issue):
            m.d.sync += [row.eq(row + 1), in_group.eq(Mux(last, 0, in_group + 1)),
                         k_out.eq(k_out + last), at_end.eq(row == last_row),
                         first.eq(last),
                         last.eq(Mux(last, group_last == 0, in_group == group_before))]
        side = data.StructLayout({"valid": 1, "marker": 1, "first": 1, "last": 1,
                                  "k": unsigned(len(k_out)), "job": job})
        issued = Signal(side)
        m.d.sync += [issued.valid.eq(issue | marker), issued.marker.eq(marker),
                     issued.first.eq(first), issued.last.eq(last | marker), issued.k.eq(k_out),
                     issued.job.eq(cur)]
        # the events that change `held` are registered before they count: one item issued in
        # the cycle before is not in `held` yet, so `space` leaves room for it
        dropped = Signal()                        # a zero left the pooler: not kept
        events = [Signal(name=f"held_{n}") for n in ("in", "dropped", "popped")]
        m.d.sync += [events[0].eq(((issue & last) | marker) & to_fifo),
                     events[1].eq(dropped), events[2].eq(fifo.r_en & fifo.r_rdy)]
        held_next = Signal.like(held)
        m.d.comb += held_next.eq(held + events[0] - events[1] - events[2])
        m.d.sync += [held.eq(held_next), space.eq(held_next < q - 1)]

        # the bank is free to its PEs once its last read is done: `latency` after the marker
        done_at = data.StructLayout({"valid": 1, "marker": 1, "slot": slot_shape})
        gone = Signal(done_at)
        m.d.comb += [gone.valid.eq(_delay(m, issued.valid, self.latency, "gone_valid")),
                     gone.marker.eq(_delay(m, issued.marker, self.latency, "gone_marker")),
                     gone.slot.eq(_delay(m, issued.job.slot, self.latency, "gone_slot"))]
        with m.If(gone.valid & gone.marker):
            m.d.sync += self.drain_parity.eq(self.drain_parity ^ (1 << gone.slot))
        m.d.sync += [self.release.valid.eq(gone.valid & gone.marker),
                     self.release.payload.eq(gone.slot)]
        return SimpleNamespace(issued=issued, side=side, param_addr=param_addr,
                               param_rp=param_rp, dropped=dropped, fifo=fifo)

    def _compute(self, m, consts, s):
        """The PEs' partial sums added, requantized and pooled, with the row's parameters
        read to arrive beside its sum. Returns the pooler."""
        geo, prog = self.geo, self.program
        C = geo.cols
        deep = geo.pipeline == "deep"
        issued, side, param_addr, param_rp = s.issued, s.side, s.param_addr, s.param_rp

        # the partial sums come back; their sum, with the row's parameters beside it
        m.submodules.tree = tree = AdderTree(C, geo.partial_width, geo.acc_width,
                                             levels_per_stage=1)
        m.d.comb += tree.i.eq(self.partials)
        wait = self.latency + tree.latency        # from `issued` to the tree's sum
        # the row's parameters are read to arrive with its sum: the address waits, not the
        # (wider) words
        m.d.comb += param_rp.addr.eq(_delay(m, param_addr, wait, "param_addr"))
        params = data.View(row_layout(geo), param_rp.data)
        at_sum = _delay(m, issued, wait, "at_sum")
        m.submodules.requant = rq = Requantizer(
            acc_width=geo.acc_width, bias_width=geo.bias_width, shifts=geo.shifts,
            tag_shape=side, deep=deep,
            half_even=[layer.quant.half_even for layer in prog.layers])
        m.d.comb += [
            rq.i.valid.eq(at_sum.valid),
            rq.i.payload.acc.eq(Mux(at_sum.marker, 0, tree.o)),
            rq.i.payload.bias.eq(Mux(at_sum.marker, 0, params.bias)),
            rq.i.payload.multiplier.eq(params.multiplier),
            rq.i.payload.shift.eq(at_sum.job.layer),
            rq.i.payload.relu.eq(_table(*consts["relu"])[at_sum.job.layer]),
            rq.i.payload.tag.eq(at_sum),
        ]
        averages = [layer.quant.pool_shift for layer in prog.layers
                    if layer.pool is not None and layer.pool.kind == "avg"]
        m.submodules.pool = pool = Pooler(
            tag_shape=side, sum_width=geo.pool_sum_width,
            shifts=[layer.quant.pool_shift for layer in prog.layers] if averages else None,
            deep=deep)
        tag = data.View(side, rq.o.payload.tag)
        layer = tag.job.layer
        m.d.comb += [
            pool.i.valid.eq(rq.o.valid),
            pool.i.payload.value.eq(rq.o.payload.value),
            pool.i.payload.first.eq(tag.first),
            pool.i.payload.last.eq(tag.last),
            pool.i.payload.mode.eq(Mux(tag.marker, POOL_NONE,
                                       _table(*consts["pool_mode"])[layer])),
            pool.i.payload.multiplier.eq(_table(*consts["pool_multiplier"])[layer]),
            pool.i.payload.shift.eq(layer if averages else 0),
            pool.i.payload.relu.eq(_table(*consts["pool_relu"])[layer]),
            pool.i.payload.tag.eq(tag),
        ]
        return pool

    def _emit(self, m, consts, s, pool):
        """The pooler's outputs: next-layer activations and end tokens to the bus (through
        the FIFO), last-layer results and the output buffers' fill parity."""
        geo = self.geo
        L = geo.layers
        item = bus_layout(geo)
        side, dropped, fifo = s.side, s.dropped, s.fifo

        # out: nonzero activations of the next layer, the end token at each marker; in the
        # last layer, results and (at the marker) the output buffer's fill parity
        # (the pooler's output into registers first, with what becomes of it decided on the
        # way: the FIFO's write enable and the result's valid are flags)
        now = data.View(side, pool.o.payload.tag)
        hidden_now = now.job.layer != L - 1
        keep = (pool.o.payload.value != 0) if geo.skip_zero_activations else Const(1)
        to_bus, to_result, flip = Signal(), Signal(), Signal()
        value, tag = Signal(signed(8)), Signal(side)
        m.d.sync += [value.eq(pool.o.payload.value), tag.eq(pool.o.payload.tag),
                     to_bus.eq(pool.o.valid & hidden_now & (now.marker | keep)),
                     dropped.eq(pool.o.valid & hidden_now & ~(now.marker | keep)),
                     to_result.eq(pool.o.valid & ~hidden_now & ~now.marker),
                     flip.eq(pool.o.valid & now.marker & ~hidden_now)]
        done = data.View(side, tag)
        pushed = Signal(item)
        m.d.comb += [
            pushed.column.eq(_table(*consts["col_base"])[done.job.layer] + done.k),
            pushed.value.eq(value), pushed.slot.eq(done.job.target),
            pushed.end.eq(done.marker),
            fifo.w_data.eq(pushed),
            fifo.w_en.eq(to_bus),
            self.out.valid.eq(fifo.r_rdy), self.out.payload.eq(fifo.r_data),
            fifo.r_en.eq(self.out.ready),
        ]
        # the output buffer is complete once the last layer's marker is out: the output unit
        # reads this parity
        with m.If(flip):
            m.d.sync += self.fill_parity.eq(self.fill_parity ^ Mux(done.job.out_bank, 2, 1))
        m.d.comb += [
            self.result.valid.eq(to_result),
            self.result.payload.addr.eq(Mux(done.job.out_bank, geo.out_slots[-1], 0)
                                        + done.k),
            self.result.payload.value.eq(value),
        ]

def _advance(pointer, count: int):
    """``pointer`` to the next of ``count`` banks, round."""
    return pointer.eq(Mux(pointer == count - 1, 0, pointer + 1))


def _and_all(values):
    """Bitwise AND of several equal-width values."""
    out = values[0]
    for value in values[1:]:
        out = out & value
    return out
