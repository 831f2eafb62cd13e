"""The whole accelerator: input loader, P processing elements, the job queues between them, the
output unit and a cycle counter.

Queue ``(j, k)`` carries jobs from PE ``j``'s writeback to PE ``k``; the input loader has one
queue per PE, deep enough for a whole input vector. An inference is three phases::

    LOAD   input stream -> nonzero inputs become jobs for the PEs that need them
    RUN    PEs compute all layers (counted in ``cycles``)
    OUTPUT final-layer values streamed out in the model's output order

A design built with uploaded weights (``HardwareOptions.weights == "uploaded"``) starts with
empty weight memories and takes them on its ``weights`` stream: the image of
:func:`hw.images.weight_image`, bytes in order, the first one flagged ``first``.
"""

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.fifo import SyncFIFO, SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from compiler.ir import SparseProgram

from .images import entry_bytes, entry_layout, geometry, job_layout
from .options import HardwareOptions
from .queue import PrefetchQueue
from .lane import SparsePE

__all__ = ["SparseAccelerator", "WEIGHT_BYTE"]

#: One beat of an uploaded weight image.
WEIGHT_BYTE = data.StructLayout({"data": 8, "first": 1})


class SparseAccelerator(wiring.Component):
    """Sparse MAC array for one compiled model.

    Parameters
    ----------
    program : SparseProgram
        Memory images and shapes from :func:`compiler.passes.encode.encode`.
    options : HardwareOptions or None
        Queue depth and memory style (see :mod:`hw.options`); None: the defaults.

    Members
    -------
    input : In(stream.Signature(signed(8)))
        ``in_features`` quantized inputs per inference, in model order.
    output : Out(stream.Signature(signed(8)))
        ``out_features`` quantized outputs per inference, in model order.
    cycles : Out(32)
        Compute cycles of the last inference (valid once its first output is out).
    busy : Out(1)
        An inference is in progress (past its first input beat).
    weights : In(stream.Signature(StructLayout({"data": 8, "first": 1})))
        Uploaded weights only: the weight image (:func:`hw.images.weight_image`), one byte a
        beat, ``first`` set on its first byte (which restarts the load). Only between
        inferences; bytes past the image's end are dropped.
    """

    def __init__(self, program: SparseProgram, options: HardwareOptions | None = None):
        if not isinstance(program, SparseProgram):
            raise TypeError(f"program must be a SparseProgram, not {program!r}")
        if options is not None and not isinstance(options, HardwareOptions):
            raise TypeError(f"options must be HardwareOptions, not {options!r}")
        self.program = program
        self.options = options or HardwareOptions()
        self.geo = geometry(program, self.options)
        upload = {}
        if self.geo.weights == "uploaded":
            upload = {"weights": In(stream.Signature(WEIGHT_BYTE))}
        super().__init__({
            "input": In(stream.Signature(signed(8))),
            "output": Out(stream.Signature(signed(8))),
            "cycles": Out(32),
            "busy": Out(1),
            **upload,
        })

    def elaborate(self, platform):
        m = Module()
        geo, prog = self.geo, self.program
        P, L = geo.pes, geo.layers
        job = job_layout(geo)

        lanes = self._lanes = [SparsePE(prog, k, geo) for k in range(P)]
        for k, lane in enumerate(lanes):
            m.submodules[f"pe{k}"] = lane
        # the deep pipeline's queues show two head registers, which the PEs' registered
        # arbiters read a cycle ahead (two more cycles from push to pop, see hw/queue.py)
        deep = geo.pipeline == "deep"
        queue = PrefetchQueue if deep else SyncFIFO
        queues = [[queue(width=job.size, depth=geo.queue_depth) for _ in range(P)]
                  for _ in range(P)]
        in_queue = PrefetchQueue if deep else SyncFIFOBuffered
        in_queues = [in_queue(width=job.size, depth=max(3, geo.input_queue_depth))
                     for _ in range(P)]
        for j in range(P):
            m.submodules[f"inq{j}"] = in_queues[j]
            for k in range(P):
                m.submodules[f"q{j}_{k}"] = queues[j][k]

        # PE k reads queues (j, k) for every j, then its input queue
        for k, lane in enumerate(lanes):
            sources = [queues[j][k] for j in range(P)] + [in_queues[k]]
            for s, q in enumerate(sources):
                m.d.comb += [
                    lane.src_valid[s].eq(q.r_rdy),
                    lane.src_busy[s].eq(q.busy if isinstance(q, PrefetchQueue)
                                        else q.level != 0),
                    lane.src_job[s].eq(q.r_data),
                    q.r_en.eq(lane.src_pop[s]),
                ]
                if deep:
                    m.d.comb += [lane.src_next_valid[s].eq(q.r_next_rdy),
                                 lane.src_next_job[s].eq(q.r_next_data)]
        # PE j writes queues (j, k) for the k in its push mask, all at once; it watches their
        # levels and never pushes into a full one
        for j, lane in enumerate(lanes):
            for k in range(P):
                m.d.comb += lane.out_levels[k].eq(queues[j][k].level)
                m.d.comb += [
                    queues[j][k].w_data.eq(lane.push.job),
                    queues[j][k].w_en.eq(lane.push_valid & lane.push.mask[k]),
                ]

        if geo.weights == "uploaded":
            self._weight_loader(m, lanes)

        layers_done = Signal(range(L + 1))
        counts = [lane.wb_count for lane in lanes]
        while len(counts) > 1:          # a balanced tree: log2(P) levels, not P
            pairs = [counts[i:i + 2] for i in range(0, len(counts), 2)]
            counts = [Mux(p[1] < p[0], p[1], p[0]) if len(p) == 2 else p[0] for p in pairs]
        m.d.comb += layers_done.eq(counts[0])
        for lane in lanes:
            m.d.comb += lane.layers_done.eq(layers_done)

        # ---- input loader ----------------------------------------------------------------
        m.submodules.fanout = fanout_rom = memory.Memory(
            shape=unsigned(P), depth=geo.in_features,
            init=[int(f) for f in prog.input_fanout])
        fan_rp = fanout_rom.read_port()
        in_count = Signal(range(geo.in_features + 1))
        last_input = Signal(init=geo.in_features == 1)      # in_count == in_features - 1
        loaded = Signal()
        output_done = Signal()
        staged_valid = Signal()
        staged_keep = Signal()                  # staged.value != 0, as a register
        staged = Signal(job)
        m.d.comb += fan_rp.addr.eq(in_count)

        # ---- output unit -----------------------------------------------------------------
        out_index = Signal(range(geo.out_features + 1))
        out_valid = Signal()
        issued_all = Signal()                   # out_index == out_features, as a register
        out_lane = Signal(range(P))
        lane_of = Array([Const(int(v), range(P)) for v in prog.output_lane])
        row_of = Array([Const(int(v), range(max(2, geo.out_slots[-1])))
                        for v in prog.output_row])
        out_data = Array([lane.out_data for lane in lanes])
        m.d.comb += [
            self.output.valid.eq(out_valid),
            self.output.payload.eq(out_data[out_lane]),
        ]
        issue = Signal()
        for lane in lanes:
            m.d.comb += [lane.out_addr.eq(row_of[out_index]), lane.out_en.eq(issue)]

        # The cycle counter counts while `running`; its high half takes the low half's carry a
        # cycle late, from a register (no 32-bit carry chain in one cycle). The count settles
        # a cycle after `running` falls, long before anything reads it.
        cycles_lo, cycles_hi, carry = Signal(16), Signal(16), Signal()
        m.d.comb += self.cycles.eq(Cat(cycles_lo, cycles_hi))
        all_done = Signal()
        if deep:                        # a register: the minimum tree ends in it (one cycle)
            m.d.sync += all_done.eq(layers_done == L)
        else:
            m.d.comb += all_done.eq(layers_done == L)
        # the PEs' run/restart are registers, set on the same edges as the phase changes
        running, restarting = Signal(), Signal(init=1)
        taking = Signal(init=1)                 # input.ready, as a register (LOAD only)
        m.d.comb += self.input.ready.eq(taking)
        for lane in lanes:
            m.d.comb += [lane.run.eq(running), lane.restart.eq(restarting)]

        m.d.sync += carry.eq(running & (cycles_lo == 0xFFFF))
        with m.If(running):
            m.d.sync += cycles_lo.eq(cycles_lo + 1)
        with m.If(carry):
            m.d.sync += cycles_hi.eq(cycles_hi + 1)

        # the phase, one-hot: every decision below reads a single flag (RUN's is `running`)
        load_phase, output_phase = Signal(init=1), Signal()
        # `taking` (the input's ready) is only ever set in LOAD: the loader needs no phase flag
        accept = self.input.valid & self.input.ready
        # `in_count` wraps to 0 with the last input (`last_input`: a register)
        with m.If(accept & last_input):
            m.d.sync += taking.eq(0)
        m.d.sync += staged_valid.eq(accept)
        with m.If(accept):
            m.d.sync += [
                staged_keep.eq(self.input.payload != 0),
                staged.value.eq(self.input.payload),
                staged.column.eq(in_count),
                staged.tag.eq(0),
                in_count.eq(Mux(last_input, 0, in_count + 1)),
                last_input.eq(Mux(last_input, geo.in_features == 1,
                                  in_count == geo.in_features - 2)),
            ]
        keep = staged_keep if geo.skip_zero_activations else Const(1)
        # deep: the queue writes leave from registers, a cycle later
        queued = Signal()                       # deep: a write is in that register
        write = m.d.sync if deep else m.d.comb
        for k in range(P):
            write += [
                in_queues[k].w_data.eq(staged),
                in_queues[k].w_en.eq(staged_valid & keep & fan_rp.data[k]),
            ]
        if deep:
            m.d.sync += queued.eq(staged_valid)
        with m.If(load_phase):
            m.d.comb += self.busy.eq((in_count != 0) | ~taking)
            # every input taken (`taking` fell with the last) and the last one queued;
            # registered (`loaded`), it stays true until the phase changes
            m.d.sync += loaded.eq(~taking & ~staged_valid & ~queued & ~loaded)
            with m.If(loaded):
                m.d.sync += [cycles_lo.eq(0), cycles_hi.eq(0),
                             running.eq(1), restarting.eq(0)]
                m.d.sync += load_phase.eq(0)
        with m.If(running):
            m.d.comb += self.busy.eq(1)
            with m.If(all_done):
                m.d.sync += [out_index.eq(0), issued_all.eq(0), running.eq(0)]
                m.d.sync += output_phase.eq(1)
        with m.If(output_phase):
            m.d.comb += self.busy.eq(1)
            m.d.comb += issue.eq((~out_valid | self.output.ready) & ~issued_all)
            with m.If(issue):
                m.d.sync += [
                    out_valid.eq(1),
                    out_lane.eq(lane_of[out_index]),
                    out_index.eq(out_index + 1),
                    issued_all.eq(out_index == geo.out_features - 1),
                ]
            with m.Elif(self.output.ready):
                m.d.sync += out_valid.eq(0)
            # the last output taken: back to LOAD a cycle later, from a register
            m.d.sync += output_done.eq(issued_all & out_valid & self.output.ready)
            with m.If(output_done):
                m.d.sync += [restarting.eq(1), taking.eq(1)]
                m.d.sync += [output_phase.eq(0), load_phase.eq(1)]
        return m

    def _weight_loader(self, m, lanes):
        """Bytes of the weight image -> words -> PE 0's memory from address 0, then PE 1's...
        A word's write leaves from registers (address, data, one-hot enable) a cycle after its
        last byte; no byte is taken in that cycle."""
        geo, P = self.geo, self.geo.pes
        size = entry_bytes(geo)
        width = entry_layout(geo).size
        beat = self.weights
        word = Signal(8 * size)
        count = Signal(range(size + 1))                # bytes of the word taken so far
        byte_last = Signal(init=size == 1)             # the next byte completes a word
        lane = Signal(range(P + 1))                    # P: the image is complete
        lane_hot = Signal(P + 1, init=1 << P)          # one-hot `lane`; starts complete
        addr = Signal(geo.start_bits)
        left = Signal(geo.start_bits)                  # words of this PE after this one
        at_end = Signal()                              # left == 0
        depth_left = Array([Const(d - 1, geo.start_bits) for d in geo.entry_depth] + [Const(0)])
        load_addr = Signal(geo.start_bits)
        load_data = Signal(width)
        load_en = Signal(P)
        writing = Signal()                             # load_en.any(), as a register
        for k, pe in enumerate(lanes):
            m.d.comb += [pe.load_addr.eq(load_addr), pe.load_data.eq(load_data),
                         pe.load_en.eq(load_en[k])]
        m.d.comb += beat.ready.eq(~writing)
        m.d.sync += [load_en.eq(0), writing.eq(0)]
        take = beat.valid & ~writing
        start = beat.payload.first
        with m.If(take):
            whole = Cat(word[8:], beat.payload.data)
            m.d.sync += word.eq(whole)
            complete = Mux(start, size == 1, byte_last)
            with m.If(complete):
                m.d.sync += [count.eq(0), byte_last.eq(size == 1)]
                cur_hot = Mux(start, 1, lane_hot)
                cur_lane = Mux(start, 0, lane)
                cur_addr = Mux(start, 0, addr)
                cur_left = Mux(start, geo.entry_depth[0] - 1, left)
                cur_end = Mux(start, geo.entry_depth[0] == 1, at_end)
                with m.If(~cur_hot[P]):                # not past the image's end
                    m.d.sync += [load_en.eq(cur_hot[:P]), writing.eq(1),
                                 load_addr.eq(cur_addr), load_data.eq(whole[:width])]
                    with m.If(cur_end):
                        nxt = depth_left[cur_lane + 1]
                        m.d.sync += [lane.eq(cur_lane + 1), lane_hot.eq(cur_hot << 1),
                                     addr.eq(0), left.eq(nxt), at_end.eq(nxt == 0)]
                    with m.Else():
                        m.d.sync += [lane.eq(cur_lane), lane_hot.eq(cur_hot),
                                     addr.eq(cur_addr + 1), left.eq(cur_left - 1),
                                     at_end.eq(cur_left == 1)]
                with m.Else():
                    m.d.sync += lane_hot.eq(cur_hot)
            with m.Else():
                got = Mux(start, 0, count) + 1        # bytes of this word so far
                m.d.sync += [count.eq(got), byte_last.eq(got == size - 1)]
                with m.If(start):
                    m.d.sync += [lane.eq(0), lane_hot.eq(1), addr.eq(0),
                                 left.eq(geo.entry_depth[0] - 1),
                                 at_end.eq(geo.entry_depth[0] == 1)]
