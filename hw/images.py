"""Host side of the memory images: packs a :class:`~core.ir.SparseProgram` into the words
the gateware memories are initialised with, and derives every width and depth from it.

The reference model reads the same :class:`~core.ir.PEImage` arrays, so the two cannot
drift: this module only fixes bit positions. :func:`memories` lists every memory the design
holds (what the fit check weighs against a board); the components build theirs from the same
:class:`Geometry`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from amaranth.hdl import signed, unsigned
from amaranth.lib import data

from core.arith import MULTIPLIER_BITS, SHIFT_MAX
from core.ir import SparseProgram

from .options import HardwareOptions

__all__ = ["Geometry", "geometry", "bus_layout", "entry_layout", "job_layout", "loader_queue_depth",
           "row_layout",
           "drain_layout", "REPLICA", "result_layout", "pack_entries", "pack_pointers", "pointer_width",
           "pack_rows", "memory_bits", "codebook_rom",
           "entry_bytes", "weight_image", "value_bits", "MemorySpec", "memories", "SPRAM_DEPTH",
           "deepest_memory"]

#: Attributes of a register that copies another on purpose (a fan-out level, a PE's own copy
#: of a request its neighbours get too). Yosys's ``opt_merge`` would fold identical registers
#: back into one and undo the fan-out; the board flows mark the flip-flops behind such wires
#: ``keep`` (``boards/flow.py``), which ``opt_merge`` respects.
REPLICA = {"sparsemac_replica": 1}

#: Words of one iCE40 SPRAM (SB_SPRAM256KA: 16384 x 16): uploaded weight memories come in
#: chunks this deep.
SPRAM_DEPTH = 16384


def _bits(n: int) -> int:
    """Unsigned bits to hold values 0..n."""
    return max(1, int(n).bit_length())


def _stages(fanout: int, per_stage: int = 8) -> int:
    """Register levels of a tree that reaches ``fanout`` ends, ``per_stage`` per level."""
    levels, reach = 1, per_stage
    while reach < fanout:
        levels += 1
        reach *= per_stage
    return levels


@dataclass(frozen=True)
class Geometry:
    """Every width, depth and latency of the gateware, derived from one program."""
    rows: int                 # grid rows R (reducers)
    cols: int                 # grid columns C (buses, input lanes)
    layers: int
    banks: tuple              # accumulator banks, per layer (inferences in flight per layer)
    in_features: int
    out_features: int
    index_bits: int
    value_bits: int           # signed bits of a stored weight (8 for int8; 4 for 4-bit weights)
    row_slots: tuple          # accumulator rows per row group, per layer
    row_base: tuple           # per layer: offset into the reducers' row tables
    out_slots: tuple          # outputs per row group, per layer (rows / pooling window)
    col_slots: tuple          # local columns per column group, per layer
    ptr_base: tuple           # per layer: offset into every PE's pointer table
    groups: tuple             # accumulator rows per output, per layer
    pool_sum_width: int       # signed bits of a pooling window's sum of int8 values
    shifts: tuple             # requantization shift, per layer
    expected_ends: tuple      # per bus, per layer: end-of-layer tokens a PE waits for
    memory: str               # "block" or "distributed" (see hw.options)
    accumulators: str         # "distributed" or "block" (see hw.options)
    pipeline: str             # "short" or "deep"
    weights: str              # "bitstream" or "uploaded"
    entry_depth: tuple        # per PE
    ptr_width: int            # bits of a column pointer (an entry address)
    count_bits: int           # bits of a column's entry count in one PE
    pointers: str             # "csc" or "counted" (see hw.options)
    partial_width: int        # a PE's partial sums
    acc_width: int            # a row's whole sum
    bias_width: int
    fifo_depth: int           # each PE's activation FIFO
    reducer_fifo_depth: int   # each reducer's output FIFO
    skip_zero_activations: bool
    weight_bits: int = 8      # an entry's weight field: 8 (int8) or a B-bit codebook index
    codebooks: tuple = ()     # weight sharing: per layer, 2**B int8 values (the PEs' ROM)

    @property
    def pes(self) -> int:
        return self.rows * self.cols

    @property
    def field_bits(self) -> int:
        """Bits of an entry's weight field: the codebook index, or the signed value."""
        return self.weight_bits if self.codebooks else self.value_bits

    @property
    def slots(self) -> int:
        """Accumulator banks of a PE, all layers: bank ``b`` of layer ``m`` is slot
        :meth:`slot` ``(m, b)``."""
        return sum(self.banks)

    def slot(self, layer: int, bank: int) -> int:
        return sum(self.banks[:layer]) + bank

    def layer_of(self, slot: int) -> int:
        """The layer whose bank ``slot`` is."""
        for m in range(self.layers):
            if slot < sum(self.banks[:m + 1]):
                return m
        raise ValueError(f"slot {slot} is past the last layer's banks")

    @property
    def beats(self) -> int:
        """Input beats per inference (``cols`` values each)."""
        return self.col_slots[0]

    @property
    def ptr_depth(self) -> int:
        return sum(self.col_slots) + 1

    @property
    def col_bits(self) -> int:
        return _bits(max(self.col_slots) - 1)

    @property
    def row_bits(self) -> int:
        return _bits(max(self.row_slots) - 1)

    @property
    def start_bits(self) -> int:
        """Bits of an entry address."""
        return _bits(max(self.entry_depth) - 1)

    @property
    def shift_bits(self) -> int:
        return SHIFT_MAX.bit_length()

    @property
    def out_depth(self) -> int:
        """Words of each reducer's output memory: two inferences of the last layer."""
        return 2 * self.out_slots[-1]

    @property
    def bus_stages(self) -> int:
        """Register levels from a bus's root to its PEs' FIFOs."""
        return _stages(self.rows)

    @property
    def stall_stages(self) -> int:
        """Register levels of a bus's almost-full OR, after each PE's own register."""
        return _stages(self.rows)

    @property
    def fifo_threshold(self) -> int:
        """A PE's FIFO says almost full at this level: what may still be on its way when the
        bus's root sees it (fan-out, the OR tree, the PE's own register) still fits."""
        return self.fifo_depth - (self.bus_stages + self.stall_stages + 3)

    @property
    def drain_stages(self) -> int:
        """Register levels from a reducer to its PEs' drain ports (the reducer's own register
        reaches eight; more need a level each)."""
        return _stages(self.cols) - 1

    @property
    def in_flight(self) -> int:
        """Inferences the array can hold at once (timestamps kept for each): every bank, the
        two output buffers, one being loaded."""
        return self.slots + 3


def geometry(program: SparseProgram, options: HardwareOptions | None = None) -> Geometry:
    options = options or HardwareOptions()
    grid = program.grid
    entries = [max(1, len(pe.entry_value)) for pe in program.pe_images]
    groups = tuple(layer.group for layer in program.layers)
    ends = tuple(tuple([1] + [len(grid.reducers_on(c))] * (len(program.layers) - 1))
                 for c in range(grid.cols))
    fifo_depth = options.fifo_depth
    minimum = 2 * (_stages(grid.rows) + 2) + 2
    if fifo_depth < minimum:
        raise ValueError(f"fifo_depth {fifo_depth} is too shallow for a {grid} grid: its buses "
                         f"need at least {minimum}")
    return Geometry(
        rows=grid.rows, cols=grid.cols, layers=len(program.layers),
        banks=options.banks_for(len(program.layers)),
        in_features=program.model.in_features, out_features=program.model.out_features,
        index_bits=program.index_bits, value_bits=value_bits(program),
        row_slots=tuple(program.row_slots),
        row_base=tuple(program.row_base), out_slots=tuple(program.out_slots),
        col_slots=tuple(program.col_slots), ptr_base=tuple(program.ptr_base), groups=groups,
        pool_sum_width=max(9, (128 * max(groups)).bit_length() + 1),
        shifts=tuple(_layer_shift(layer) for layer in program.layers), expected_ends=ends,
        memory=options.memory, accumulators=options.accumulators, pipeline=options.pipeline,
        weights=options.weights,
        entry_depth=tuple(entries), ptr_width=_bits(max(entries)),
        count_bits=_bits(max(int(np.diff(pe.ptr).max(initial=0)) for pe in program.pe_images)),
        pointers=options.pointers,
        partial_width=program.widths.partial, acc_width=program.widths.accumulator,
        bias_width=program.widths.biased, fifo_depth=fifo_depth, reducer_fifo_depth=16,
        skip_zero_activations=program.skip_zero_activations,
        weight_bits=program.weight_bits,
        codebooks=tuple(tuple(int(v) for v in t) for t in program.codebooks or ()))


def deepest_memory(program: SparseProgram) -> int:
    """Words of the deepest per-PE memory of ``program``: a PE's weights or its pointer
    table."""
    geo = geometry(program)
    return max(max(geo.entry_depth), geo.ptr_depth)


def _layer_shift(layer) -> int:
    shifts = set(layer.quant.shift.tolist())
    if len(shifts) != 1:
        raise ValueError(f"layer {layer.name!r}: the hardware needs one shift per layer, the "
                         f"program has {sorted(shifts)}")
    return shifts.pop()


def value_bits(program: SparseProgram) -> int:
    """Signed bits the stored weights need: 8 for int8 weights, fewer for a model trained
    with narrower ones (4-bit weights, -7..7, take 4 bits an entry). A program without a
    nonzero weight keeps 8."""
    peak = max((int(np.abs(pe.entry_value.astype(np.int64)).max(initial=0))
                for pe in program.pe_images), default=0)
    return peak.bit_length() + 1 if peak else 8


def bus_layout(geo: Geometry) -> data.StructLayout:
    """What a bus carries: one nonzero activation (its local column, its value) for the bank
    ``slot``, or (``end``) the token that closes one source's part of that bank's layer."""
    return data.StructLayout({
        "column": unsigned(geo.col_bits),
        "value": signed(8),
        "slot": unsigned(_bits(geo.slots - 1)),
        "end": unsigned(1),
    })


def entry_layout(geo: Geometry) -> data.StructLayout:
    """One stored entry: its weight (a signed value of :attr:`Geometry.value_bits`, 8 for
    int8, or with weight sharing a B-bit index into its layer's codebook) in the low bits, its
    relative row index above."""
    value = unsigned(geo.weight_bits) if geo.codebooks else signed(geo.value_bits)
    return data.StructLayout({"value": value, "index": unsigned(geo.index_bits)})


def codebook_rom(geo: Geometry) -> list:
    """The PEs' codebook ROM, every layer's table in turn: layer ``m``'s code ``c`` at
    ``m << B | c``."""
    return [int(v) for table in geo.codebooks for v in table]


def job_layout(geo: Geometry) -> data.StructLayout:
    """A column for a PE's walker: its entries (start, count; ``single``: just one), the
    activation, its bank, or an end token (``end``, no entries)."""
    return data.StructLayout({
        "start": unsigned(geo.ptr_width),
        "count": unsigned(geo.count_bits),
        "single": unsigned(1),
        "value": signed(8),
        "slot": unsigned(_bits(geo.slots - 1)),
        "end": unsigned(1),
    })


def drain_layout(geo: Geometry) -> data.StructLayout:
    """A reducer's read of one accumulator row of one bank in each of its PEs."""
    return data.StructLayout({"slot": unsigned(_bits(geo.slots - 1)),
                              "addr": unsigned(geo.row_bits)})


def result_layout(geo: Geometry) -> data.StructLayout:
    """One final output, into a reducer's output memory."""
    return data.StructLayout({"addr": unsigned(_bits(geo.out_depth - 1)), "value": signed(8)})


def row_layout(geo: Geometry) -> data.StructLayout:
    """Requantization parameters of one accumulator row (the shift is per layer)."""
    return data.StructLayout({"bias": signed(geo.bias_width),
                              "multiplier": unsigned(MULTIPLIER_BITS)})


def pointer_width(geo: Geometry) -> int:
    """Bits of a pointer-table word: a column's start ("csc": the next word is the column's
    end), or its start and its count ("counted": one read a column)."""
    return geo.ptr_width + (geo.count_bits if geo.pointers == "counted" else 0)


def pack_pointers(program: SparseProgram, pe: int, geo: Geometry) -> list:
    """PE ``pe``'s pointer table as words (:func:`pointer_width` bits each)."""
    ptr = [int(p) for p in program.pe_images[pe].ptr]
    if geo.pointers == "csc":
        return ptr
    counts = [b - a for a, b in zip(ptr, ptr[1:])] + [0]
    return [a | c << geo.ptr_width for a, c in zip(ptr, counts)]


def pack_entries(program: SparseProgram, pe: int, geo: Geometry) -> list:
    """PE ``pe``'s entry words (:func:`entry_layout`): weight field, then relative index."""
    img = program.pe_images[pe]
    mask = (1 << geo.index_bits) - 1
    bits = geo.field_bits
    weight = img.entry_value if img.entry_code is None else img.entry_code
    values = (weight.astype(np.int64) & ((1 << bits) - 1)) | (
        img.entry_index.astype(np.int64) & mask) << bits
    return [int(v) for v in values] or [0]


def pack_rows(program: SparseProgram, r: int, geo: Geometry) -> list:
    red = program.reducers[r]
    bias = red.bias.astype(np.int64) & ((1 << geo.bias_width) - 1)
    return [int(b | (int(m) << geo.bias_width)) for b, m in zip(bias, red.multiplier)]


def entry_bytes(geo: Geometry) -> int:
    """Bytes of one weight entry in an uploaded image (little-endian, zero-padded)."""
    return (entry_layout(geo).size + 7) // 8


def weight_image(program: SparseProgram, geo: Geometry | None = None) -> bytes:
    """The weight entries of every PE, PE 0 first, each PE's memory from address 0, each entry
    :func:`entry_bytes` bytes little-endian: what the host uploads into a design built with
    ``weights="uploaded"``, in order (the gateware's loader writes it sequentially)."""
    geo = geo or geometry(program)
    size = entry_bytes(geo)
    out = bytearray()
    for pe in range(geo.pes):
        for word in pack_entries(program, pe, geo):
            out += int(word).to_bytes(size, "little")
    return bytes(out)


@dataclass(frozen=True)
class MemorySpec:
    """One kind of memory of the design: ``count`` copies of ``depth`` x ``width`` bits.
    ``read``: "sync" (a registered read: block RAM) or "async" (LUT RAM, flip-flops);
    ``ports``: read ports; ``kind``: what it holds (the fit check maps each kind)."""
    name: str
    depth: int
    width: int
    count: int = 1
    read: str = "sync"
    ports: int = 1
    kind: str = "ram"

    @property
    def bits(self) -> int:
        return self.depth * self.width * self.count


def memories(geo: Geometry) -> list[MemorySpec]:
    """Every memory of the accelerator, by kind (the fit check's input)."""
    out = []
    entry_w = entry_layout(geo).size
    if geo.weights == "uploaded":
        for depth in geo.entry_depth:
            for base in range(0, depth, SPRAM_DEPTH):
                out.append(MemorySpec("pe.uploaded_entries", min(SPRAM_DEPTH, depth - base),
                                      entry_w, kind="uploaded_weights"))
    else:
        for depth in geo.entry_depth:
            out.append(MemorySpec("pe.entries", depth, entry_w, kind="weights"))
    if geo.codebooks:       # weight sharing: a small ROM in every PE (LUTs, in the bitstream)
        out.append(MemorySpec("pe.codebook", len(codebook_rom(geo)), 8, count=geo.pes,
                              read="async", kind="codebooks"))
    out.append(MemorySpec("pe.pointers", geo.ptr_depth, pointer_width(geo), count=geo.pes,
                          ports=2 if geo.pointers == "csc" else 1, kind="pointers"))
    if geo.accumulators == "block":
        depth = sum(geo.row_slots[m] * geo.banks[m] for m in range(geo.layers))
        out.append(MemorySpec("pe.accumulators", depth, geo.partial_width, count=geo.pes,
                              kind="accumulators"))
    else:
        for m in range(geo.layers):
            out.append(MemorySpec(f"pe.acc_layer{m}", geo.row_slots[m], geo.partial_width,
                                  count=geo.pes * geo.banks[m], read="async",
                                  kind="accumulators"))
    item = bus_layout(geo).size
    out.append(MemorySpec("pe.fifo", geo.fifo_depth, item, count=geo.pes, kind="fifo"))
    out.append(MemorySpec("pe.walker_queue", _WALKER_QUEUE, job_layout(geo).size,
                          count=geo.pes, kind="fifo"))
    out.append(MemorySpec("reducer.rowparams", max(1, sum(geo.row_slots)),
                          row_layout(geo).size, count=geo.rows, kind="row_parameters"))
    out.append(MemorySpec("reducer.fifo", geo.reducer_fifo_depth, item, count=geo.rows,
                          kind="fifo"))
    out.append(MemorySpec("loader.queues", loader_queue_depth(geo), item, count=geo.cols,
                          kind="fifo"))
    out.append(MemorySpec("output.buffers", geo.out_depth, 8, count=geo.rows, kind="outputs"))
    return out


def loader_queue_depth(geo: Geometry) -> int:
    """Entries of each bus's input queue in the loader: two inferences' layer-0 activations,
    so a bus whose PEs are busy with a long column does not hold up the beats and with them
    the other buses; with one bus there are no others, and a few entries do."""
    if geo.cols == 1:
        return 4
    return max(4, 2 * geo.beats + 2)


#: Depth of each PE's walker queue (columns looked up, waiting for the walker).
_WALKER_QUEUE = 8


def memory_bits(geo: Geometry) -> dict:
    """Storage the design needs, by kind, in bits."""
    out: dict = {}
    for spec in memories(geo):
        out[spec.kind] = out.get(spec.kind, 0) + spec.bits
    return out
