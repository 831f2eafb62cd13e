"""One processing element of the sparse MAC array.

A PE owns some output rows of every layer. It takes *jobs* (a nonzero activation: column,
value) from its source queues - one per PE, plus the input loader - looks up its column pointer,
walks its nonzero weights of that column one per cycle and accumulates ``weight * activation``
into the owning row. When it has consumed every job of a layer, it requantizes its rows and
pushes each nonzero result as a job to exactly the PEs that hold weights in that column.

Layers overlap: a PE starts the next layer's jobs as soon as any PE has sent some, while slower
PEs finish the previous layer. Accumulators are double-banked by layer parity, and every job
carries the parity of the layer that consumes it.

Pipeline (one entry per cycle, no stalls once a job is popped)::

    pop (arbiter) -> pointer read -> walker issues entry reads -> decode row, multiply
                  -> read-modify-write accumulator bank
    writeback: read bank + row parameters -> Requantizer -> push job / write output
"""

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, wiring
from amaranth.lib.wiring import In, Out

from compiler.ir import MULTIPLIER_BITS, SparseProgram

from .images import (Geometry, entry_layout, job_layout, pack_entries, pack_pointers,
                     pack_rows, pointer_layout, row_layout)
from .pool import POOL_AVG, POOL_MAX, Pooler
from .queue import shift_in
from .requant import Requantizer

__all__ = ["SparsePE"]


def _table(values, shape):
    """A per-layer constant table, read combinationally."""
    return Array([Const(int(v), shape) for v in values])


class _RegisteredRead:
    """A synchronous read port built from an asynchronous one and a register (``addr``,
    ``data``: the word at last cycle's ``addr``, as it was before last cycle's writes)."""

    def __init__(self, m, port, name):
        self.addr = port.addr
        self.data = Signal.like(port.data, name=f"{name}_data")
        m.d.sync += self.data.eq(port.data)


#: Words of one iCE40 SPRAM (SB_SPRAM256KA: 16384 x 16): uploaded weight memories come in
#: chunks this deep.
SPRAM_DEPTH = 16384


class _ChunkedRead:
    """One read port over several memories stacked in depth: ``select`` picks the memory
    (with ``read_domain`` "sync", as registered when the read was issued), ``data`` is its
    word. ``ports``: the memories' own read ports (address them)."""

    def __init__(self, m, chunks, width, read_domain):
        self.ports = [chunk.read_port(domain=read_domain) for chunk in chunks]
        self.select = Signal(range(max(2, len(chunks))), name="entry_select")
        self.data = Signal(width, name="entry_data")
        if len(chunks) == 1:
            m.d.comb += self.data.eq(self.ports[0].data)
            return
        chosen = self.select
        if read_domain == "sync":
            chosen = Signal.like(self.select, name="entry_select_q")
            m.d.sync += chosen.eq(self.select)
        m.d.comb += self.data.eq(Array(p.data for p in self.ports)[chosen])


class SparsePE(wiring.Component):
    """Processing element ``lane`` of ``program``.

    Members
    -------
    run : In(1)
        High while the accelerator computes; low holds the PE idle.
    restart : In(1)
        High resets the layer counters for a new inference.
    src_valid : In(pes + 1)
        Source ``s`` has a job at its head (sources ``0..pes-1``: PEs, ``pes``: the input).
    src_busy : In(pes + 1)
        Source ``s`` holds any job, visible at the head or not yet.
    src_job : In(ArrayLayout(job, pes + 1))
        The job at each source's head.
    src_pop : Out(pes + 1)
        One-hot: the job taken this cycle. In the deep pipeline a register (the *grant*,
        decided a cycle ahead from both head registers of every source).
    src_next_valid : In(pes + 1), src_next_job : In(ArrayLayout(job, pes + 1))
        Deep pipeline only: the entry behind each source's head (see hw/queue.py).
    layers_done : In(range(layers + 1))
        Layers every PE has written back (minimum over PEs of ``wb_count``).
    push : Out(StructLayout(job, mask)), push_valid : Out(1)
        A job for the PEs whose bit is set in ``mask``, taken whenever valid.
    out_levels : In(ArrayLayout(range(queue_depth + 1), pes))
        Fill level of each of this PE's outgoing queues; the writeback never starts a row that
        could find its queue full.
    wb_count : Out(range(layers + 1))
        Layers this PE has written back.
    out_addr : In(range(row_slots[-1])), out_en : In(1), out_data : Out(signed(8))
        Read port (one cycle latency, holds while ``out_en`` is low) of this PE's final-layer
        outputs.
    load_addr : In(start_bits), load_data : In(entry), load_en : In(1)
        Uploaded weights only (``geo.weights == "uploaded"``): write ``load_data`` into the
        weight memory at ``load_addr``. A register outside; never high while computing. The
        memory has a single address (a write or the walker's read), so that Yosys can map it
        to single-port RAM (iCE40 SPRAM).
    """

    def __init__(self, program: SparseProgram, lane: int, geo: Geometry):
        if not isinstance(program, SparseProgram):
            raise TypeError(f"program must be a SparseProgram, not {program!r}")
        if not 0 <= lane < program.pes:
            raise ValueError(f"lane must be in 0..{program.pes - 1}, not {lane!r}")
        self.program, self.lane, self.geo = program, lane, geo
        sources = geo.pes + 1
        self._job = job_layout(geo)
        lookahead = {}
        if geo.weights == "uploaded":
            lookahead = {"load_addr": In(geo.start_bits),
                         "load_data": In(entry_layout(geo).size), "load_en": In(1)}
        if geo.pipeline == "deep":
            lookahead |= {"src_next_valid": In(sources),
                         "src_next_job": In(data.ArrayLayout(self._job, sources))}
        super().__init__({
            "run": In(1),
            "restart": In(1),
            "src_valid": In(sources),
            "src_busy": In(sources),
            "src_job": In(data.ArrayLayout(self._job, sources)),
            "src_pop": Out(sources),
            **lookahead,
            "layers_done": In(range(geo.layers + 1)),
            "push": Out(data.StructLayout({"job": self._job, "mask": unsigned(geo.pes)})),
            "push_valid": Out(1),
            "out_levels": In(data.ArrayLayout(range(geo.queue_depth + 1), geo.pes)),
            "wb_count": Out(range(geo.layers + 1)),
            "out_addr": In(range(max(2, geo.out_slots[-1]))),
            "out_en": In(1),
            "out_data": Out(signed(8)),
        })

    def elaborate(self, platform):
        m = Module()
        geo, prog, k = self.geo, self.program, self.lane
        L, P = geo.layers, geo.pes
        layer_shape = range(L + 1)

        # per-layer constants of the writeback, indexed by the layer it works on (entry L:
        # all layers done)
        layer_constants = {
            "rows": ([prog.lanes[k].row_count(i) for i in range(L)] + [0],
                     range(geo.max_row_slots + 1)),
            "outs": ([prog.lanes[k].row_count(i) // geo.groups[i] for i in range(L)] + [0],
                     range(max(geo.out_slots) + 1)),
            "no_outs": ([prog.lanes[k].row_count(i) == 0 for i in range(L)] + [1], 1),
            "one_out": ([prog.lanes[k].row_count(i) == geo.groups[i] for i in range(L)] + [0],
                        1),
            "group": (list(geo.groups) + [1], range(max(geo.groups) + 1)),
            "next_row_base": (list(prog.row_base[1:]) + [0, 0], range(sum(geo.row_slots) + 1)),
            "push_base": ([prog.ptr_base[i + 1] + k * prog.out_slots[i] if i + 1 < L else 0
                           for i in range(L)] + [0], range(geo.ptr_depth + 1)),
            "last": ([i == L - 1 for i in range(L)] + [0], 1),
            "relu": ([layer.relu for layer in prog.layers] + [0], 1),
            "pool_mode": ([0 if layer.pool is None else
                           POOL_MAX if layer.pool.kind == "max" else POOL_AVG
                           for layer in prog.layers] + [0], 2),
            "pool_multiplier": ([layer.quant.pool_multiplier for layer in prog.layers] + [0],
                                MULTIPLIER_BITS),
            "pool_relu": ([bool(layer.pool and layer.pool.relu_after)
                           for layer in prog.layers] + [0], 1),
        }

        # ---- memories -------------------------------------------------------------------
        elay, play, rlay = entry_layout(geo), pointer_layout(geo), row_layout(geo)
        block = geo.memory == "block"
        uploaded = geo.weights == "uploaded"
        if uploaded:
            # empty until the host uploads the weights (no initial contents: on iCE40 the flow
            # drops the all-zero init Amaranth emits, and `ram_style` asks for SPRAM); no read
            # shares a cycle with a write, so no read-during-write emulation either. In chunks
            # of one SPRAM's depth, each written on its own enable: Yosys's own split would
            # decode each block's write enable from the shared address, the walker's included
            # (on the iCEBreaker's LeNet build a path from the job queue across the chip to
            # the SPRAMs' WREN, 54 MHz).
            attrs = {"no_rw_check": 1} if block else {}
            if str(getattr(platform, "family", "")).lower() == "ice40":
                attrs["ram_style"] = "huge"
            depth = geo.entry_depth[k]
            chunks = []
            for c, base in enumerate(range(0, depth, SPRAM_DEPTH)):
                chunk = memory.Memory(shape=elay.size, depth=min(SPRAM_DEPTH, depth - base),
                                      init=[], attrs=attrs or None)
                m.submodules[f"uploaded_entries_{c}"] = chunk
                chunks.append(chunk)
        else:
            m.submodules.entries = entries = memory.Memory(
                shape=elay.size, depth=geo.entry_depth[k], init=pack_entries(prog, k, geo))
        m.submodules.pointers = pointers = memory.Memory(
            shape=play.size, depth=geo.ptr_depth, init=pack_pointers(prog, k, geo))
        m.submodules.rowparams = rowparams = memory.Memory(
            shape=rlay.size, depth=max(1, sum(geo.row_slots)), init=pack_rows(prog, k, geo))
        deep = geo.pipeline == "deep"
        read_domain = "sync" if block else "comb"
        banks = []
        for b in range(2):
            # No read of a bank ever uses the word written in the same cycle (the compute
            # pipeline forwards its own sums; the writeback reads rows nothing writes), so
            # block RAM may return anything on such a collision: `no_rw_check` spares the
            # logic that would emulate read-old-data (on iCE40 a delayed write and an address
            # compare). Yosys honours it when it merges a register into an asynchronous read
            # port, hence the register written out here: the same synchronous read.
            mem = memory.Memory(shape=signed(geo.acc_width), depth=geo.max_row_slots, init=[],
                                attrs={"no_rw_check": 1} if block else None)
            m.submodules[f"acc{b}"] = mem
            wp = mem.write_port()
            rp = mem.read_port(domain="comb")
            if block:
                rp = _RegisteredRead(m, rp, f"acc{b}")
            # LUT RAM reads are cheap: the writeback gets a port of its own
            wb_rp = rp if block else mem.read_port(domain="comb")
            banks.append((rp, wp, wb_rp))
        m.submodules.outputs = outputs = memory.Memory(
            shape=signed(8), depth=max(2, geo.out_slots[-1]), init=[])
        out_wp = outputs.write_port()
        out_rp = outputs.read_port()
        m.d.comb += [out_rp.addr.eq(self.out_addr), out_rp.en.eq(self.out_en),
                     self.out_data.eq(out_rp.data)]

        # deep: `run` and `restart` reach every PE from one register each; a local copy, a
        # cycle later, keeps that fan-out off the arbiter's paths
        run, restart = self.run, self.restart
        if deep:
            run, restart = Signal(name="run_local"), Signal(init=1, name="restart_local")
            m.d.sync += [run.eq(self.run), restart.eq(self.restart)]

        # ---- pop stage: pick a job of the current layer ---------------------------------
        # Short pipeline: the arbiter looks at the sources' heads and pops one in the same
        # cycle. Deep pipeline (slow fabric): the arbiter decides a cycle ahead and registers
        # its grant; the queues pop on that register. It looks at the head a pop will leave
        # behind - the entry behind the head of a source granted this cycle - so a source
        # can still be popped every cycle. No path runs from a head through the arbiter into
        # a queue's control.
        layer = Signal(layer_shape)
        parity = layer[0]
        # flags about `layer`, kept as registers next to it: one LUT decides eligibility
        first_layer = Signal(init=1)                 # layer == 0
        layers_left = Signal(init=1)                 # layer < L
        later_layer = Signal()                       # 0 < layer < L
        popping = run & layers_left
        sources = P + 1
        granted = Signal(sources)                    # deep: the sources popped this cycle
        granted_any = Signal()
        if deep:
            head_valid = [Mux(granted[s], self.src_next_valid[s], self.src_valid[s])
                          for s in range(sources)]
            head_tag = [Mux(granted[s], self.src_next_job[s].tag, self.src_job[s].tag)
                        for s in range(sources)]
        else:
            head_valid = [self.src_valid[s] for s in range(sources)]
            head_tag = [self.src_job[s].tag for s in range(sources)]
        eligible = Signal(sources)
        for s in range(P):
            m.d.comb += eligible[s].eq(head_valid[s] & (head_tag[s] == parity)
                                       & later_layer & run)
        m.d.comb += eligible[P].eq(head_valid[P] & first_layer & run)

        # The input queue is the only source of the first layer and never one of the others:
        # `first_layer` alone chooses it. Among the PEs' queues, round-robin: the first
        # eligible one at or after `rr`, else the first at all (one PE: no choice).
        pe_eligible = eligible[:P]
        pick_pe = Signal(range(P))                   # one PE: always 0
        rr = Signal(range(P))
        if P > 1:
            later = Signal(P)
            m.d.comb += later.eq(pe_eligible & ~((Const(1, P + 1) << rr) - 1)[:P])
            for s in reversed(range(P)):
                with m.If(pe_eligible[s]):
                    m.d.comb += pick_pe.eq(s)
            with m.If(later.any()):
                for s in reversed(range(P)):
                    with m.If(later[s]):
                        m.d.comb += pick_pe.eq(s)
        pick = Signal(range(sources))
        m.d.comb += pick.eq(Mux(first_layer, P, pick_pe))

        # Memory style "block": every RAM read lands in a register before logic uses it
        # (ECP5 block RAM has ~5.6 ns clock-to-out); "distributed": LUT RAM read
        # asynchronously into a register. Stages (block / distributed):
        #   pop -> pointer RAM -> [A] -> B -> walker -> entry RAM -> [E] -> C: decode row,
        #   multiply -> D: accumulate (distributed) / D: read bank, E2: accumulate (block)
        ptr_rp = pointers.read_port(domain=read_domain)
        # Jobs wait for the walker in a queue of registers (`s0` its head). A pop needs only
        # registered occupancy - no path from the walker back to the arbiter - and the queue
        # is deep enough to pop every cycle: it holds every job popped or granted but not yet
        # in it (the block RAM read `a`, the grant), with room for one more.
        slots = 4 if deep else 3
        a_valid, a_value, a_bank = Signal(), Signal(signed(8)), Signal()
        # `ptr.single`/`ptr.double`: the column has one / two entries here (stored flags)
        job_shape = data.StructLayout({"ptr": play, "value": signed(8), "bank": 1})
        s_valid = [Signal(name=f"s{i}_valid") for i in range(slots)]
        s_job = [Signal(job_shape, name=f"s{i}_job") for i in range(slots)]
        b_valid, b_ptr = s_valid[0], s_job[0].ptr
        b_value, b_bank = s_job[0].value, s_job[0].bank
        walk_left = Signal(range(2 ** geo.count_bits))
        walk_addr = Signal(geo.start_bits)
        walk_value = Signal(signed(8))
        walk_bank = Signal()
        walker_free = Signal(init=1)                 # walk_left == 0, as a register
        walk_one = Signal()                          # walk_left == 1, as a register
        take = b_valid & walker_free                 # the walker starts s0's job this cycle
        room = Signal()
        # the queue fills in order (s[i + 1] implies s[i]): "fewer than n queued" is ~s[n-1]
        on_the_way = [a_valid] + ([granted_any] if deep else [])
        ahead = Signal(range(len(on_the_way) + 1))
        m.d.comb += ahead.eq(sum(on_the_way))
        m.d.comb += room.eq(Array([~s_valid[slots - 1 - n] for n in range(len(on_the_way) + 1)])
                            [ahead])
        # the two kinds of source never compete (`first_layer` decides): each pop signal is
        # built from its own sources' flags, not from the round-robin's answer for both
        pop_pe = Signal()
        choice = Signal(sources)
        m.d.comb += [
            pop_pe.eq(pe_eligible.any() & room),
            choice.eq(Cat(Mux(pop_pe, Const(1, P) << pick_pe, 0)[:P], eligible[P] & room)),
        ]
        if P > 1:
            with m.If(pop_pe):
                m.d.sync += rr.eq(Mux(pick_pe == P - 1, 0, pick_pe + 1))
        pop = Signal()
        job = self.src_job[pick]
        if deep:
            picked = Signal(range(sources))
            m.d.sync += [granted.eq(choice), granted_any.eq(choice.any()), picked.eq(pick)]
            with m.If(restart):
                m.d.sync += [granted.eq(0), granted_any.eq(0)]
            m.d.comb += [pop.eq(granted_any), self.src_pop.eq(granted)]
            job = self.src_job[picked]
        else:
            m.d.comb += [pop.eq(choice.any()), self.src_pop.eq(choice)]
        m.d.comb += ptr_rp.addr.eq(job.column)
        arriving = Signal(job_shape)
        arrives = Signal()
        if block:
            m.d.comb += ptr_rp.en.eq(1)
            with m.If(pop):
                m.d.sync += [a_value.eq(job.value), a_bank.eq(parity)]
            m.d.sync += a_valid.eq(pop)
            m.d.comb += [arrives.eq(a_valid), arriving.ptr.eq(ptr_rp.data),
                         arriving.value.eq(a_value), arriving.bank.eq(a_bank)]
        else:
            m.d.comb += [arrives.eq(pop), arriving.ptr.eq(ptr_rp.data),
                         arriving.value.eq(job.value), arriving.bank.eq(parity)]
        # shift down when the head is taken; an arriving job lands in the first free slot
        shift_in(m, take, arrives, arriving, s_valid, s_job)

        # walker: one entry read per cycle
        issue_valid = ~walker_free | take
        walker_addr = Mux(walker_free, b_ptr.start, walk_addr)
        if uploaded:
            entry_rp = _ChunkedRead(m, chunks, elay.size, read_domain)
            # one address for the write and the read: single-port RAMs
            entry_addr = Signal(geo.start_bits)
            m.d.comb += entry_addr.eq(Mux(self.load_en, self.load_addr, walker_addr))
            low = entry_addr[:min(len(entry_addr), SPRAM_DEPTH.bit_length() - 1)]
            for c, (chunk, rp) in enumerate(zip(chunks, entry_rp.ports)):
                wp = chunk.write_port()
                # the write enable from the loader's registers alone
                hit = (self.load_addr >> len(low)) == c if len(chunks) > 1 else 1
                m.d.comb += [wp.addr.eq(low), wp.data.eq(self.load_data),
                             wp.en.eq(self.load_en & hit), rp.addr.eq(low)]
                if block:
                    m.d.comb += rp.en.eq(~self.load_en)
            m.d.comb += entry_rp.select.eq(entry_addr >> len(low))
        else:
            entry_rp = entries.read_port(domain=read_domain)
            m.d.comb += entry_rp.addr.eq(walker_addr)
        with m.If(take):
            m.d.sync += [
                walk_addr.eq(b_ptr.start + 1),
                walk_left.eq(b_ptr.count - 1),
                walker_free.eq(b_ptr.single),
                walk_one.eq(b_ptr.double),
                walk_value.eq(b_value),
                walk_bank.eq(b_bank),
            ]
        with m.Elif(~walker_free):
            m.d.sync += [walk_addr.eq(walk_addr + 1), walk_left.eq(walk_left - 1),
                         walker_free.eq(walk_one), walk_one.eq(walk_left == 2)]

        issue = {"valid": issue_valid, "first": take, "value": Mux(take, b_value, walk_value),
                 "bank": Mux(take, b_bank, walk_bank)}
        e_valid, e_first, e_value, e_bank = Signal(), Signal(), Signal(signed(8)), Signal()
        if block:      # the entry RAM's output, registered next cycle
            m.d.sync += [e_valid.eq(issue["valid"]), e_first.eq(issue["first"]),
                         e_value.eq(issue["value"]), e_bank.eq(issue["bank"])]
            issue = {"valid": e_valid, "first": e_first, "value": e_value, "bank": e_bank}
        c_valid, c_first, c_value, c_bank = Signal(), Signal(), Signal(signed(8)), Signal()
        entry = Signal(elay)
        m.d.sync += [c_valid.eq(issue["valid"]), c_first.eq(issue["first"]),
                     c_value.eq(issue["value"]), c_bank.eq(issue["bank"]),
                     entry.eq(entry_rp.data)]

        # decode: row, product
        row = Signal(geo.row_bits)
        if block and deep:
            # the row is decoded from the entry RAM's output a stage early, into a register:
            # the accumulator RAM's address (and the collision logic around it) sees no adder.
            # (iCE40 EBR outputs are quick; ECP5 block RAM's 5.6 ns clock-to-out is not: the
            # short pipeline registers the RAM output first.)
            e_entry = data.View(elay, entry_rp.data)
            with m.If(e_valid):
                m.d.sync += row.eq(Mux(e_first, e_entry.index, row + e_entry.index + 1))
        else:
            prev_row = Signal(geo.row_bits)
            m.d.comb += row.eq(Mux(c_first, entry.index, prev_row + entry.index + 1))
            with m.If(c_valid):
                m.d.sync += prev_row.eq(row)
        d_valid, d_bank, d_row = Signal(), Signal(), Signal(geo.row_bits)
        d_product = Signal(signed(16))
        m.d.sync += [d_valid.eq(c_valid), d_bank.eq(c_bank), d_row.eq(row),
                     d_product.eq(entry.value * c_value)]

        # accumulate: bank[row] += product, one per cycle. `acc_*` is the sum being formed,
        # `wr_*` the write into the bank (the same, except in the deep block pipeline)
        bank_read = [Signal(name=f"compute_reads{b}") for b in range(2)]
        bank_addr = Signal(geo.row_bits)
        acc_valid, acc_bank, acc_row = Signal(), Signal(), Signal(geo.row_bits)
        acc_sum = Signal(signed(geo.acc_width))
        wr_valid, wr_bank, wr_row = acc_valid, acc_bank, acc_row
        wr_sum = acc_sum
        if block:
            # read at C, register the RAM output at D, add at E2. The sums written in the
            # cycles after an op's read (from C) were not in it: forward the newest that
            # hits its row (the hit tests run a stage early, from registers).
            m.d.comb += bank_addr.eq(row)
            m.d.comb += [bank_read[b].eq(c_valid & (c_bank == b)) for b in range(2)]
            e2_valid, e2_bank, e2_row = Signal(), Signal(), Signal(geo.row_bits)
            e2_product, e2_acc = Signal(signed(16)), Signal(signed(geo.acc_width))
            last_valid, last_bank, last_row = Signal(), Signal(), Signal(geo.row_bits)
            last_sum, last2_sum = Signal(signed(geo.acc_width)), Signal(signed(geo.acc_width))
            hit1 = Signal()
            bank_out = Mux(d_bank, banks[1][0].data, banks[0][0].data)
            m.d.sync += [e2_valid.eq(d_valid), e2_bank.eq(d_bank), e2_row.eq(d_row),
                         e2_product.eq(d_product),
                         last_valid.eq(e2_valid), last_bank.eq(e2_bank), last_row.eq(e2_row),
                         last_sum.eq(acc_sum), last2_sum.eq(last_sum)]
            m.d.comb += [acc_valid.eq(e2_valid), acc_bank.eq(e2_bank), acc_row.eq(e2_row)]
            in_flight = [(d_valid & (d_bank == b)) | (e2_valid & (e2_bank == b))
                         for b in range(2)]
            if deep:
                # The sum is registered (`last`) and written a cycle later (E3), so the adder
                # ends in a flip-flop, not at a RAM's data pin. Three sums are not in an op's
                # read; all but the newest are chosen at D, into `e2_acc`, and the adder sees
                # one two-way choice. The three hit tests run at C, from registers (the deep
                # pipeline's `row` is one).
                hits = [Signal(name=f"d_hit{i}") for i in (1, 2, 3)]
                for hit, (v, b, r) in zip(hits, [(d_valid, d_bank, d_row),
                                                 (e2_valid, e2_bank, e2_row),
                                                 (last_valid, last_bank, last_row)]):
                    m.d.sync += hit.eq(v & (b == c_bank) & (r == row))
                m.d.sync += [hit1.eq(hits[0]),
                             e2_acc.eq(Mux(hits[1], last_sum,
                                           Mux(hits[2], last2_sum, bank_out)))]
                m.d.comb += acc_sum.eq(Mux(hit1, last_sum, e2_acc) + e2_product)
                wr_valid, wr_bank, wr_row, wr_sum = last_valid, last_bank, last_row, last_sum
                in_flight = [in_flight[b] | (last_valid & (last_bank == b)) for b in range(2)]
            else:
                # the two sums written in the two cycles before an op's E2 (hit tests at D)
                hit2 = Signal()
                m.d.sync += [e2_acc.eq(bank_out),
                             hit1.eq(e2_valid & (e2_bank == d_bank) & (e2_row == d_row)),
                             hit2.eq(last_valid & (last_bank == d_bank) & (last_row == d_row))]
                m.d.comb += acc_sum.eq(Mux(hit1, last_sum, Mux(hit2, last2_sum, e2_acc))
                                       + e2_product)
        else:
            m.d.comb += bank_addr.eq(d_row)
            m.d.comb += [bank_read[b].eq(d_valid & (d_bank == b)) for b in range(2)]
            m.d.comb += [acc_valid.eq(d_valid), acc_bank.eq(d_bank), acc_row.eq(d_row),
                         acc_sum.eq(Mux(d_bank, banks[1][0].data, banks[0][0].data)
                                    + d_product)]
            # the writeback may read a row in the cycle its last product is written: it takes
            # the sum being written (see `read` below)
            in_flight = [Const(0), Const(0)]

        # ---- layer advance --------------------------------------------------------------
        quiet = Signal()
        owner_quiet = [~self.src_busy[s] | (self.src_valid[s] & (self.src_job[s].tag != parity))
                       for s in range(P)]
        m.d.comb += quiet.eq(Mux(first_layer, ~self.src_busy[P], Cat(*owner_quiet).all()))
        sources_done = first_layer | (self.layers_done >= layer)
        bank_free = self.wb_count >= layer
        # Never with a grant outstanding (deep: its job belongs to this layer); `quiet` with
        # none outstanding implies that no source is eligible. Once true, the condition stays
        # true until the layer advances (every job of the layer has been sent and taken): the
        # deep pipeline acts on it a cycle later, from a register.
        ready = popping & ~granted_any & quiet & sources_done & bank_free
        advance = Signal()
        if deep:
            m.d.sync += advance.eq(ready & ~advance & ~restart)
        else:
            m.d.comb += advance.eq(ready)
        with m.If(restart):
            m.d.sync += [layer.eq(0), rr.eq(0), first_layer.eq(1), layers_left.eq(1),
                         later_layer.eq(0)]
        with m.Elif(advance):
            m.d.sync += [layer.eq(layer + 1), first_layer.eq(0), layers_left.eq(layer + 1 < L),
                         later_layer.eq(layer + 1 < L)]

        # ---- writeback ------------------------------------------------------------------
        # Layer `wb_count` is written back once the pop stage has moved past it and no job of
        # its bank is left before the final accumulate stage (block RAM reads are transparent
        # to that stage's write, so the last product may land in the same cycle).
        wb_layer = self.wb_count
        wb_bank = wb_layer[0]
        pending_terms = [
            [a_valid & (a_bank == b)] + [s_valid[i] & (s_job[i].bank == b) for i in range(slots)]
            + [~walker_free & (walk_bank == b), e_valid & (e_bank == b), c_valid & (c_bank == b),
               in_flight[b]]
            for b in range(2)]
        pending = [Cat(*terms).any() for terms in pending_terms]
        wb_active = Signal()
        wb_issue_row = Signal(range(geo.max_row_slots + 1))
        wb_issue_out = Signal(range(max(geo.out_slots) + 1))
        wb_in_group = Signal(range(max(geo.groups) + 1))
        wb_outs_left = Signal(range(max(geo.out_slots) + 1))
        wb_last_out = Signal()
        # The layer's constants live in registers loaded from `wb_count`; in the cycle after it
        # changes (`fresh`) they are still loading and no writeback starts. No table lookup or
        # wide comparison sits on the writeback's paths.
        cur = {}
        for name, (values, shape) in layer_constants.items():
            cur[name] = Signal(shape, name=f"wb_{name}", init=int(values[0]))
            m.d.sync += cur[name].eq(_table(values, shape)[wb_layer])
        wb_rows, wb_group = cur["rows"], cur["group"]
        fresh = Signal()
        # Once the pop stage is past a layer and its last job has left the pipeline, nothing
        # of that bank comes back: the deep pipeline may use old answers (registers). Its last
        # pop came at least two cycles before `layer` moved past it (the advance is
        # registered), and a job is in some stage of the pipeline every cycle until its last
        # product is written: `pending` from the cycle before still sees every job of the
        # bank, and `drained` may be a cycle older again.
        if deep:
            # two registers per bank, each the OR of half the stages
            pending = []
            for b, terms in enumerate(pending_terms):
                half = len(terms) // 2
                parts = [Signal(name=f"pending{b}_{i}") for i in range(2)]
                m.d.sync += [parts[0].eq(Cat(*terms[:half]).any()),
                             parts[1].eq(Cat(*terms[half:]).any())]
                pending.append(parts[0] | parts[1])
        drained = Signal()
        drained_now = (run & (wb_layer < L) & (layer > wb_layer)
                       & ~Mux(wb_bank, pending[1], pending[0]))
        if deep:
            m.d.sync += drained.eq(drained_now)
        else:
            m.d.comb += drained.eq(drained_now)
        # deep: `finished` is registered into `finishing`, the cycle `wb_count` moves in
        finishing = Signal()
        wb_start = Signal()
        wb_live = Signal()
        m.d.comb += [
            wb_start.eq(~wb_active & ~fresh & ~finishing & drained),
            wb_live.eq(wb_active | wb_start),
        ]
        with m.If(wb_live):
            m.d.sync += wb_active.eq(1)

        # Credits instead of back-pressure: a row enters the writeback pipeline only if every
        # queue it may push to has room for it and for every output already on its way, so
        # nothing downstream ever waits (no ready signal runs back through the pipeline).
        # The check is registered, one cycle behind: one slot of margin covers it. The deep
        # pipeline also counts a cycle late (from registered events): a second slot.
        margin = 3 if deep else 2
        last_layer = cur["last"]
        # depth - margin - (outputs issued, not yet pushed); negative: no room at all
        limit = Signal(range(-max(geo.out_slots) - margin - 1, geo.queue_depth + 1),
                       init=geo.queue_depth - margin)
        room_now = Cat(*[self.out_levels[j] <= limit for j in range(P)]).all()
        credit_ok = Signal()
        if deep:
            # the whole answer a register: `last` as it will be next cycle (see `cur`), or room
            m.d.sync += credit_ok.eq(_table(layer_constants["last"][0], 1)[wb_layer] | room_now)
        else:
            room_ok = Signal()
            m.d.sync += room_ok.eq(room_now)
            m.d.comb += credit_ok.eq(last_layer | room_ok)

        tag_layout = data.StructLayout({"out": unsigned(geo.row_bits), "fanout": unsigned(P),
                                        "first": 1, "last": 1})
        m.submodules.requant = rq = Requantizer(
            acc_width=geo.acc_width, bias_width=geo.bias_width, shifts=geo.shifts,
            tag_shape=tag_layout, deep=deep)
        param_rp = rowparams.read_port(domain=read_domain)
        rd_valid = Signal()
        rd_row = Signal(geo.row_bits)
        rd_out = Signal(geo.row_bits)
        rd_first = Signal()
        rd_last = Signal()
        issue_wb = Signal()
        if deep:
            # rows are issued from the cycle after the start, while `wb_more` (a register:
            # rows are left) says so - no comparison on the path
            rows_left = Signal(range(geo.max_row_slots + 1))
            wb_more = Signal()
            m.d.comb += issue_wb.eq(wb_active & wb_more & credit_ok)
            with m.If(wb_start):
                m.d.sync += [rows_left.eq(wb_rows), wb_more.eq(wb_rows != 0)]
            with m.Elif(issue_wb):
                m.d.sync += [rows_left.eq(rows_left - 1), wb_more.eq(rows_left != 1)]
        else:
            m.d.comb += issue_wb.eq(wb_live & (wb_issue_row < wb_rows) & credit_ok)
        group_done = wb_in_group + 1 == wb_group
        # the parameter addresses are counters (this layer's base + row), not adders
        param_addr = Signal(range(sum(geo.row_slots) + 1))
        m.d.comb += param_rp.addr.eq(param_addr)
        m.d.sync += rd_valid.eq(issue_wb)
        with m.If(issue_wb):
            m.d.sync += [
                param_addr.eq(param_addr + 1),
                wb_issue_row.eq(wb_issue_row + 1),
                wb_in_group.eq(Mux(group_done, 0, wb_in_group + 1)),
                wb_issue_out.eq(wb_issue_out + group_done),
                rd_row.eq(wb_issue_row),
                rd_out.eq(wb_issue_out),
                rd_first.eq(wb_in_group == 0),
                rd_last.eq(group_done),
            ]
        # the requantizer takes registers only: block RAM outputs one cycle after `rd`,
        # LUT RAM read at issue time and registered into `rd`
        bank_data = Mux(wb_bank, banks[1][2].data, banks[0][2].data)
        if not block:
            written = acc_valid & (acc_bank == wb_bank) & (acc_row == wb_issue_row)
            bank_data = Mux(written, acc_sum, bank_data)
        read = {"acc": bank_data,
                "bias": data.View(rlay, param_rp.data).bias,
                "multiplier": data.View(rlay, param_rp.data).multiplier,
                "fanout": data.View(rlay, param_rp.data).fanout}
        held = {name: Signal(value.shape(), name=f"wb_{name}") for name, value in read.items()}
        if block:
            side = {"valid": rd_valid, "out": rd_out, "first": rd_first, "last": rd_last}
            late = {name: Signal(value.shape(), name=f"wb2_{name}") for name, value in side.items()}
            m.d.sync += [late[name].eq(value) for name, value in side.items()]
            m.d.sync += [held[name].eq(value) for name, value in read.items()]
            side = late
        else:
            with m.If(issue_wb):
                m.d.sync += [held[name].eq(value) for name, value in read.items()]
            side = {"valid": rd_valid, "out": rd_out, "first": rd_first, "last": rd_last}
        m.d.comb += [
            rq.i.valid.eq(side["valid"]),
            rq.i.payload.acc.eq(held["acc"]),
            rq.i.payload.bias.eq(held["bias"]),
            rq.i.payload.multiplier.eq(held["multiplier"]),
            rq.i.payload.shift.eq(wb_layer),
            rq.i.payload.relu.eq(cur["relu"]),
            rq.i.payload.tag.out.eq(side["out"]),
            rq.i.payload.tag.fanout.eq(held["fanout"]),
            rq.i.payload.tag.first.eq(side["first"]),
            rq.i.payload.tag.last.eq(side["last"]),
        ]

        # accumulator banks: the compute pipeline and the writeback never share a bank;
        # the writeback clears each row once it has been read out
        for b, (rp, wp, wb_rp) in enumerate(banks):
            if block:
                m.d.comb += rp.addr.eq(Mux(bank_read[b], bank_addr, wb_issue_row))
            else:
                m.d.comb += [rp.addr.eq(bank_addr), wb_rp.addr.eq(wb_issue_row)]
            with m.If(wr_valid & (wr_bank == b)):
                m.d.comb += [wp.addr.eq(wr_row), wp.data.eq(wr_sum), wp.en.eq(1)]
            with m.Elif(rd_valid & (wb_bank == b)):
                m.d.comb += [wp.addr.eq(rd_row), wp.data.eq(0), wp.en.eq(1)]

        # requantized rows -> pooled outputs -> a job for the next layer, or a final output
        averages = [layer.quant.pool_shift for layer in prog.layers
                    if layer.pool is not None and layer.pool.kind == "avg"]
        m.submodules.pool = pool = Pooler(
            tag_shape=data.StructLayout({"out": unsigned(geo.row_bits), "fanout": unsigned(P)}),
            sum_width=geo.pool_sum_width,
            shifts=[layer.quant.pool_shift for layer in prog.layers] if averages else None,
            deep=deep)
        m.d.comb += [
            pool.i.valid.eq(rq.o.valid),
            pool.i.payload.value.eq(rq.o.payload.value),
            pool.i.payload.first.eq(rq.o.payload.tag.first),
            pool.i.payload.last.eq(rq.o.payload.tag.last),
            pool.i.payload.tag.out.eq(rq.o.payload.tag.out),
            pool.i.payload.tag.fanout.eq(rq.o.payload.tag.fanout),
            pool.mode.eq(cur["pool_mode"]),
            pool.multiplier.eq(cur["pool_multiplier"]),
            pool.shift.eq(wb_layer if averages else 0),
            pool.relu.eq(cur["pool_relu"]),
        ]
        value = pool.o.payload.value
        drop = (value == 0) if geo.skip_zero_activations else Const(0)
        needs_push = ~last_layer & ~drop & (pool.o.payload.tag.fanout != 0)
        # deep: the push leaves from registers, a cycle later (the queue's level moves on the
        # same edge as the credit count and as `wb_count`: see `finishing`)
        push_domain = m.d.sync if deep else m.d.comb
        push_domain += [
            self.push.job.column.eq(cur["push_base"] + pool.o.payload.tag.out),
            self.push.job.value.eq(value),
            self.push.job.tag.eq(~wb_layer[0]),
            self.push.mask.eq(pool.o.payload.tag.fanout),
            self.push_valid.eq(pool.o.valid & needs_push),
        ]
        m.d.comb += [
            out_wp.addr.eq(pool.o.payload.tag.out),
            out_wp.data.eq(value),
            out_wp.en.eq(pool.o.valid & last_layer),
        ]
        retire = pool.o.valid
        took, retired = issue_wb & group_done, retire
        if deep:                                     # counted a cycle late (see `margin`)
            took_r, retired_r = Signal(), Signal()
            m.d.sync += [took_r.eq(took), retired_r.eq(retired)]
            took, retired = took_r, retired_r
        m.d.sync += limit.eq(limit - took + retired)
        # done when the last output retires (or at once for a PE without outputs here)
        finished = Signal()
        m.d.comb += finished.eq((wb_start & cur["no_outs"])
                                | (wb_active & retire & wb_last_out))
        with m.If(wb_start):
            m.d.sync += [wb_outs_left.eq(cur["outs"]), wb_last_out.eq(cur["one_out"])]
        with m.Elif(retire):
            m.d.sync += [wb_outs_left.eq(wb_outs_left - 1), wb_last_out.eq(wb_outs_left == 2)]
        # `wb_count` moves once the layer's last push is in its queues (deep: a cycle later)
        counted = finished
        if deep:
            m.d.sync += finishing.eq(finished & ~restart)
            counted = finishing
        # (deep: the writeback stays active, idle, for that cycle: every row is issued and
        # every output retired)
        m.d.sync += fresh.eq(counted | restart)
        with m.If(counted):
            m.d.sync += [wb_active.eq(0), self.wb_count.eq(self.wb_count + 1),
                         wb_issue_row.eq(0), wb_issue_out.eq(0), wb_in_group.eq(0),
                         param_addr.eq(cur["next_row_base"])]
        with m.If(restart):
            m.d.sync += [wb_active.eq(0), self.wb_count.eq(0), wb_issue_row.eq(0),
                         wb_issue_out.eq(0), wb_in_group.eq(0),
                         limit.eq(geo.queue_depth - margin), param_addr.eq(0)]
        # internal signals a testbench may watch (cycle accounting in benchmarks)
        self.probes = {"issue": issue_valid, "layer": layer, "wb_active": wb_live,
                       "pop": pop}
        return m
