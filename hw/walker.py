"""The column walker of a PE: column pointers in, one weight entry per cycle out.

Each activation from the bus names a local column of its bank's layer. The walker looks the
column up in the PE's CSC pointer table (two reads of one dual-port memory: the column's start
and the next column's), drops a column with no entries here, queues the others, and walks
their entries one per cycle: (weight, relative row index) with the activation beside it. End
tokens pass through in order, as ops of their own.

Pipeline (``block`` memories add the two bracketed registers)::

    pop -> L0: pointer addresses -> L1: pointer words -> [L2] -> queue -> walker
        -> E1: entry word -> [E2] -> [D: codebook decode] -> op out

With weight sharing an entry holds a B-bit code, not its int8 weight; a ROM of every layer's
codebook (indexed by the op's bank slot, which names its layer, and the code) turns it into
the weight in one more registered stage (D).
"""

from amaranth.hdl import Array, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from .images import (_WALKER_QUEUE, SPRAM_DEPTH, Geometry, bus_layout, codebook_rom,
                     drain_layout, entry_layout, job_layout, pointer_width)
from .weights import UploadedWeightMemory

__all__ = ["ColumnWalker", "op_layout", "_count"]


def _count(m, counter, up, down):
    """``counter`` += ``up`` - ``down`` (one-bit events), without a multi-operand adder."""
    with m.If(up & ~down):
        m.d.sync += counter.eq(counter + 1)
    with m.Elif(down & ~up):
        m.d.sync += counter.eq(counter - 1)


def op_layout(geo: Geometry) -> data.StructLayout:
    """One weight entry with its activation (``first``: the column's first entry), or an end
    token (``end``), or (block-style accumulators) a drain of row ``row`` (``drain``, with
    ``act`` and ``weight`` 0, so that its product is 0)."""
    return data.StructLayout({
        "slot": bus_layout(geo)["slot"].shape,
        "first": unsigned(1),
        "end": unsigned(1),
        "drain": unsigned(1),
        "row": unsigned(geo.row_bits),
        "act": signed(8),
        "weight": signed(8),
        "gap": unsigned(geo.index_bits),
    })


class ColumnWalker(wiring.Component):
    """Pointer lookup and entry walk for PE ``pe`` of ``geo``.

    Parameters
    ----------
    geo : Geometry
    pointers : list of int
        The PE's pointer table as words (:func:`hw.images.pack_pointers`; for "csc" tables the
        CSC starts themselves, :attr:`core.ir.PEImage.ptr`).
    entries : list of int or None
        Packed entry words (:func:`hw.images.pack_entries`); None for uploaded weights.
    depth : int or None
        Uploaded weights: the entry memory's depth (default: the last CSC start).

    Members
    -------
    i : In(stream.Signature(bus_layout(geo)))
        Activations and end tokens, from the PE's FIFO.
    o : Out(stream.Signature(op_layout(geo), always_ready=True))
        Entries (and end tokens), at most one a cycle, in order.
    load_addr : In(start_bits), load_data : In(entry), load_en : In(1)
        Uploaded weights only: write ``load_data`` into the entry memory at ``load_addr``
        (never while computing). The memory has a single address, a write's or the walker's,
        so that Yosys can map it to single-port RAM (iCE40 SPRAM).
    drain : In(stream.Signature(drain_layout(geo), always_ready=True))
        Block-style accumulators only: a drain request (a register), issued as an op in this
        cycle's place; the walk waits a cycle.
    """

    def __init__(self, geo: Geometry, pointers, entries=None, *, depth: int | None = None):
        if not isinstance(geo, Geometry):
            raise TypeError(f"geo must be a Geometry, not {geo!r}")
        if len(pointers) != geo.ptr_depth:
            raise ValueError(f"the pointer table needs {geo.ptr_depth} words, not "
                             f"{len(pointers)}")
        if (entries is None) != (geo.weights == "uploaded"):
            raise ValueError("entries must be given exactly when the weights are in the "
                             "bitstream")
        self.geo, self.pointers, self.entries = geo, list(pointers), entries
        if entries is not None:
            depth = len(entries)
        elif depth is None:
            if geo.pointers != "csc":
                raise ValueError("uploaded weights with counted pointers need the depth")
            depth = max(1, max(int(p) for p in pointers))
        self.depth = depth
        upload = {}
        if entries is None:
            upload = {"load_addr": In(geo.start_bits), "load_data": In(entry_layout(geo).size),
                      "load_en": In(1)}
        if geo.accumulators == "block":
            upload["drain"] = In(stream.Signature(drain_layout(geo), always_ready=True))
        super().__init__({
            "i": In(stream.Signature(bus_layout(geo))),
            "o": Out(stream.Signature(op_layout(geo), always_ready=True)),
            **upload,
        })

    @staticmethod
    def latency(geo: Geometry) -> int:
        """Cycles from an op's issue to ``o``: the entry read (and its register), and with
        weight sharing the codebook's decode register."""
        return (2 if geo.memory == "block" else 1) + (1 if geo.codebooks else 0)

    def elaborate(self, platform):
        m = Module()
        geo = self.geo
        block = geo.memory == "block"
        job = job_layout(geo)

        # ---- lookup: pointer addresses from the column, both pointer words ---------------
        # `reserved`: columns popped and not yet taken by the walker (or dropped); never more
        # than the queue holds, so the queue never refuses one
        reserved = Signal(range(_WALKER_QUEUE + 1))
        can_pop = Signal()
        m.d.comb += can_pop.eq(reserved != _WALKER_QUEUE)
        pop = self.i.valid & can_pop
        m.d.comb += self.i.ready.eq(can_pop)
        base = [geo.ptr_base[geo.layer_of(s)] for s in range(geo.slots)]
        start, count, nonzero, p_valid, p_item = self._lookup(m, pop, base)

        # ---- queue: columns with entries here, and end tokens ----------------------------
        m.submodules.queue = queue = SyncFIFOBuffered(width=job.size, depth=_WALKER_QUEUE)
        push = Signal()
        drop = Signal()
        pushed = Signal(job)
        m.d.comb += [
            push.eq(p_valid & (p_item.end | nonzero)),
            drop.eq(p_valid & ~p_item.end & ~nonzero),
            pushed.start.eq(start), pushed.count.eq(count), pushed.single.eq(count == 1),
            pushed.value.eq(p_item.value), pushed.slot.eq(p_item.slot),
            pushed.end.eq(p_item.end),
            queue.w_data.eq(pushed), queue.w_en.eq(push),
        ]

        # ---- walker: one entry address per cycle ----------------------------------------
        head = data.View(job, queue.r_data)
        free = Signal(init=1)               # no column in progress
        hold = self.drain.valid if geo.accumulators == "block" else Const(0)
        take = queue.r_rdy & free & ~hold
        m.d.comb += queue.r_en.eq(take)
        # a column can be dropped in the cycle the walker takes another: both count
        change = Signal(signed(3))
        m.d.comb += change.eq(pop - take - drop)
        m.d.sync += reserved.eq(reserved + change)
        walk_addr = Signal(geo.start_bits)
        walk_left = Signal(geo.count_bits)
        walk_one = Signal()                 # one entry left after this one
        walk_value = Signal(signed(8))
        walk_slot = Signal.like(head.slot)
        with m.If(take):
            m.d.sync += [walk_addr.eq(head.start + 1), walk_left.eq(head.count - 1),
                         free.eq(head.end | head.single), walk_one.eq(head.count == 2),
                         walk_value.eq(head.value), walk_slot.eq(head.slot)]
        with m.Elif(~free & ~hold):
            m.d.sync += [walk_addr.eq(walk_addr + 1), walk_left.eq(walk_left - 1),
                         free.eq(walk_one), walk_one.eq(walk_left == 2)]
        issue = {"valid": take | ~free | hold, "first": take, "end": take & head.end,
                 "drain": hold, "row": 0,
                 "act": Mux(hold, 0, Mux(take, head.value, walk_value)),
                 "slot": Mux(take, head.slot, walk_slot)}
        if geo.accumulators == "block":
            issue["row"] = self.drain.payload.addr
            issue["slot"] = Mux(hold, self.drain.payload.slot, issue["slot"])
        entry_addr = Mux(take, head.start, walk_addr)
        entry = self._entry_read(m, entry_addr)

        # ---- entry word: E1 (and E2) ----------------------------------------------------
        e1 = {name: Signal(Value.cast(value).shape(), name=f"e1_{name}")
              for name, value in issue.items()}
        m.d.sync += [e1[name].eq(value) for name, value in issue.items()]
        out, word = e1, entry
        if block:
            e2 = {name: Signal(value.shape(), name=f"e2_{name}") for name, value in e1.items()}
            m.d.sync += [e2[name].eq(value) for name, value in e1.items()]
            word = Signal(entry_layout(geo).size)
            m.d.sync += word.eq(entry)
            out = e2
        word = data.View(entry_layout(geo), word)
        # a drain's weight is 0 as well as its act: the entry word read beside it can be
        # any (in RTL simulation an X, which 0 x X does not clear)
        weight, gap = Mux(out["drain"], 0, word.value), word.index
        if geo.codebooks:
            out, weight, gap = self._decode(m, out, word)
        m.d.comb += [
            self.o.valid.eq(out["valid"]),
            self.o.payload.slot.eq(out["slot"]), self.o.payload.first.eq(out["first"]),
            self.o.payload.end.eq(out["end"]), self.o.payload.act.eq(out["act"]),
            self.o.payload.drain.eq(out["drain"]), self.o.payload.row.eq(out["row"]),
            self.o.payload.weight.eq(weight),
            self.o.payload.gap.eq(gap),
        ]
        return m

    def _decode(self, m, out, word):
        """Weight sharing, stage D: the entry's code through its layer's codebook (a ROM of
        every layer's table, :func:`hw.images.codebook_rom`; the op's bank slot names its
        layer) into a register, with the op's other fields registered beside it."""
        geo = self.geo
        rom = codebook_rom(geo)
        d = {name: Signal(value.shape(), name=f"d_{name}") for name, value in out.items()}
        m.d.sync += [d[name].eq(value) for name, value in out.items()]
        layer_w = max(1, (geo.layers - 1).bit_length())
        layer = Array(Const(geo.layer_of(s), layer_w) for s in range(geo.slots))[out["slot"]]
        address = Signal(range(len(rom)))
        m.d.comb += address.eq(word.value | (layer << geo.weight_bits))
        weight = Signal(signed(8), name="d_weight")
        gap = Signal(geo.index_bits, name="d_gap")
        table = Array(Const(v, signed(8)) for v in rom)
        m.d.sync += [weight.eq(Mux(out["drain"], 0, table[address])), gap.eq(word.index)]
        return d, weight, gap

    def _lookup(self, m, pop, base):
        """L0: the column's pointer-table address; L1: the table's words; [L2: them in a
        register]. Returns ``(start, count, nonzero, valid, item)`` of the column at the last
        stage (``nonzero``: ``count != 0``):
        "csc" tables read the column's start and the next column's (two ports), "counted"
        ones a word holding both."""
        geo = self.geo
        block = geo.memory == "block"
        ptr_w = geo.ptr_width
        csc = geo.pointers == "csc"
        # block RAM even when small: Yosys would build a two-port table this size from LUTs
        m.submodules.pointers = pointers = memory.Memory(
            shape=unsigned(pointer_width(geo)), depth=geo.ptr_depth, init=self.pointers,
            attrs={"ram_style": "block"} if block else None)
        ports = [pointers.read_port() for _ in range(2 if csc else 1)]
        width = max(1, (geo.ptr_depth - 1).bit_length())
        l0_valid, l0_item = Signal(), Signal(bus_layout(geo))
        m.d.sync += [l0_valid.eq(pop), l0_item.eq(self.i.payload)]
        col, slot = self.i.payload.column, self.i.payload.slot
        for k, port in enumerate(ports):          # k = 1: the next column's start
            addr = Signal(width, name=f"addr{k}")
            m.d.sync += addr.eq(Array(Const(b + k, width) for b in base)[slot] + col)
            m.d.comb += port.addr.eq(addr)
        l1_valid, l1_item = Signal(), Signal(bus_layout(geo))
        m.d.sync += [l1_valid.eq(l0_valid), l1_item.eq(l0_item)]
        valid, item = l1_valid, l1_item
        words = [port.data for port in ports]

        def has_entries(w):
            return (w[1] != w[0]) if csc else w[0][ptr_w:].any()

        nonzero = has_entries(words)
        if block:           # block RAM's output into a register before any logic
            l2_valid, l2_item = Signal(), Signal(bus_layout(geo))
            held = [Signal.like(w, name=f"word{k}") for k, w in enumerate(words)]
            m.d.sync += [l2_valid.eq(l1_valid), l2_item.eq(l1_item)]
            m.d.sync += [h.eq(w) for h, w in zip(held, words)]
            valid, item, words = l2_valid, l2_item, held
            if csc:         # a compare of the two registered words
                nonzero = has_entries(held)
            else:           # counted: the count's bits registered as one flag beside the words
                nonzero = Signal()           # (the push decision then reads a flag)
                m.d.sync += nonzero.eq(has_entries([port.data for port in ports]))
        start = words[0][:ptr_w]
        count = Signal(geo.count_bits)
        m.d.comb += count.eq(words[1] - words[0] if csc else words[0][ptr_w:])
        return start, count, nonzero, valid, item

    def _entry_read(self, m, addr):
        """The entry memory (bitstream-initialised, or uploaded in SPRAM-deep chunks): its word
        at ``addr``, a cycle later."""
        width = entry_layout(self.geo).size
        if self.entries is not None:
            m.submodules.entries = entries = memory.Memory(shape=width, depth=len(self.entries),
                                                           init=self.entries)
            rp = entries.read_port()
            m.d.comb += rp.addr.eq(addr)
            return rp.data
        # Uploaded: empty until the host sends the weights (no initial contents: on iCE40 the
        # flow drops the all-zero init Amaranth emits, and the platform maps the memory to
        # SPRAM). In chunks of one SPRAM's depth, each written on its own enable from the
        # loader's registers: Yosys's own split would decode each block's write enable from
        # the shared address, the walker's included.
        chunks = []
        for c, base in enumerate(range(0, self.depth, SPRAM_DEPTH)):
            chunk = UploadedWeightMemory(shape=width, depth=min(SPRAM_DEPTH, self.depth - base),
                                         init=[])
            m.submodules[f"uploaded_entries_{c}"] = chunk
            chunks.append(chunk)
        addr_w = self.geo.start_bits
        one = Signal(addr_w)
        m.d.comb += one.eq(Mux(self.load_en, self.load_addr, addr))
        low = one[:min(addr_w, SPRAM_DEPTH.bit_length() - 1)]
        ports = []
        for c, chunk in enumerate(chunks):
            wp, rp = chunk.write_port(), chunk.read_port()
            hit = (self.load_addr >> len(low)) == c if len(chunks) > 1 else 1
            m.d.comb += [wp.addr.eq(low), wp.data.eq(self.load_data),
                         wp.en.eq(self.load_en & hit), rp.addr.eq(low), rp.en.eq(~self.load_en)]
            ports.append(rp)
        if len(ports) == 1:
            return ports[0].data
        chosen = Signal(range(len(ports)))
        m.d.sync += chosen.eq(one >> len(low))
        return Array(p.data for p in ports)[chosen]
