"""Host side of the memory images: packs a :class:`~compiler.ir.SparseProgram` into the words
the gateware memories are initialised with, and derives every width and depth from it.

The reference model reads the same :class:`~compiler.ir.LaneImage` arrays, so the two cannot
drift: this module only fixes bit positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from amaranth.hdl import signed, unsigned
from amaranth.lib import data

from compiler.ir import MULTIPLIER_BITS, SHIFT_MAX, SparseProgram

from .options import HardwareOptions

__all__ = ["Geometry", "geometry", "job_layout", "entry_layout", "pointer_layout", "row_layout",
           "pack_entries", "pack_pointers", "pack_rows", "row_fanout", "memory_bits",
           "entry_bytes", "weight_image"]


def _bits(n: int) -> int:
    """Unsigned bits to hold values 0..n."""
    return max(1, int(n).bit_length())


@dataclass(frozen=True)
class Geometry:
    """Every width and depth of the gateware, derived from one program."""
    pes: int
    layers: int
    in_features: int
    out_features: int
    index_bits: int
    row_slots: tuple          # accumulator rows per PE, per layer
    max_row_slots: int
    out_slots: tuple          # outputs per PE, per layer (rows / pooling window)
    groups: tuple             # accumulator rows per output, per layer
    pool_sum_width: int       # signed bits of a pooling window's sum of int8 values
    shifts: tuple             # requantization shift, per layer
    memory: str               # "block" or "distributed" (see hw.options)
    pipeline: str             # "short" or "deep" (see hw.options)
    ptr_depth: int
    ptr_width: int            # bits of a pointer-memory address (a job's column)
    entry_depth: tuple        # per lane
    start_bits: int
    count_bits: int
    row_bits: int
    acc_width: int
    bias_width: int
    queue_depth: int
    input_queue_depth: int
    skip_zero_activations: bool
    weights: str              # "bitstream" or "uploaded" (see hw.options)

    @property
    def shift_bits(self) -> int:
        return SHIFT_MAX.bit_length()


def geometry(program: SparseProgram, options: HardwareOptions | None = None) -> Geometry:
    options = options or HardwareOptions()
    queue_depth = options.queue_depth
    ptr_depth = program.ptr_base[-1] + program.column_count(len(program.layers) - 1)
    entries = [max(1, len(lane.entry_value)) for lane in program.lanes]
    max_count = max(int(lane.ptr_count.max(initial=0)) for lane in program.lanes)
    slots = max(program.row_slots)
    groups = tuple(layer.group for layer in program.layers)
    if queue_depth is None:
        # A queue never holds more than one layer's outputs of one PE: this depth never stalls.
        queue_depth = max(2, min(max(program.out_slots), 16))
    if options.pipeline == "deep":
        queue_depth = max(queue_depth, 3)     # two head registers and a FIFO (hw/queue.py)
    return Geometry(
        pes=program.pes, layers=len(program.layers),
        in_features=program.model.in_features, out_features=program.model.out_features,
        index_bits=program.index_bits, row_slots=tuple(program.row_slots), max_row_slots=slots,
        out_slots=tuple(program.out_slots), groups=groups,
        pool_sum_width=max(9, (128 * max(groups)).bit_length() + 1),
        shifts=tuple(_layer_shift(layer) for layer in program.layers),
        ptr_depth=ptr_depth, ptr_width=_bits(ptr_depth - 1),
        entry_depth=tuple(entries), start_bits=_bits(max(entries)),
        count_bits=_bits(max(1, max_count)), row_bits=_bits(slots),
        acc_width=program.widths.accumulator, bias_width=program.widths.biased,
        queue_depth=queue_depth, input_queue_depth=max(2, program.model.in_features),
        skip_zero_activations=program.skip_zero_activations, memory=options.memory,
        pipeline=options.pipeline, weights=options.weights)


def _layer_shift(layer) -> int:
    shifts = set(layer.quant.shift.tolist())
    if len(shifts) != 1:
        raise ValueError(f"layer {layer.name!r}: the hardware needs one shift per layer, the "
                         f"program has {sorted(shifts)}")
    return shifts.pop()


def job_layout(geo: Geometry) -> data.StructLayout:
    """A job: one nonzero activation sent to one PE - which column, its value, and the parity
    of the layer that consumes it."""
    return data.StructLayout({
        "column": unsigned(geo.ptr_width),
        "value": signed(8),
        "tag": unsigned(1),
    })


def entry_layout(geo: Geometry) -> data.StructLayout:
    return data.StructLayout({"value": signed(8), "index": unsigned(geo.index_bits)})


def pointer_layout(geo: Geometry) -> data.StructLayout:
    """A column's entries in one PE: where they start, how many; and whether that is one or two
    (stored, so that no comparison follows the block RAM's output: on iCE40 a deep pointer
    memory is several EBRs behind a multiplexer already)."""
    return data.StructLayout({"start": unsigned(geo.start_bits),
                              "count": unsigned(geo.count_bits),
                              "single": unsigned(1), "double": unsigned(1)})


def row_layout(geo: Geometry) -> data.StructLayout:
    """Requantization parameters of one accumulator row (the shift is per layer)."""
    return data.StructLayout({
        "bias": signed(geo.bias_width),
        "multiplier": unsigned(MULTIPLIER_BITS),
        # the PEs (bit mask) holding weights in the column that this row's output feeds:
        # every row of a pooling window carries its output's mask, so the writeback reads
        # one memory at one address per row
        "fanout": unsigned(geo.pes),
    })


def pack_entries(program: SparseProgram, lane: int, geo: Geometry) -> list:
    img = program.lanes[lane]
    layout = entry_layout(geo)
    words = [layout.const({"value": int(v), "index": int(i)}).as_value().value
             for v, i in zip(img.entry_value, img.entry_index)]
    return words or [0]


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
    for lane in range(program.pes):
        for word in pack_entries(program, lane, geo):
            out += int(word).to_bytes(size, "little")
    return bytes(out)


def pack_pointers(program: SparseProgram, lane: int, geo: Geometry) -> list:
    img = program.lanes[lane]
    layout = pointer_layout(geo)
    return [layout.const({"start": int(s), "count": int(c), "single": int(c) == 1,
                          "double": int(c) == 2}).as_value().value
            for s, c in zip(img.ptr_start, img.ptr_count)]


def row_fanout(program: SparseProgram, lane: int, geo: Geometry) -> np.ndarray:
    """Per row of ``lane``'s row tables: its output's fan-out mask (0 for padding rows)."""
    img = program.lanes[lane]
    fanout = np.zeros(len(img.bias), dtype=np.int64)
    for m in range(len(program.layers)):
        rows = img.row_count(m)
        local = np.arange(rows)
        fanout[program.row_base[m] + local] = img.fanout[program.out_base[m]
                                                         + local // geo.groups[m]]
    return fanout


def pack_rows(program: SparseProgram, lane: int, geo: Geometry) -> list:
    img = program.lanes[lane]
    layout = row_layout(geo)
    return [layout.const({"bias": int(b), "multiplier": int(m), "fanout": int(f)})
            .as_value().value
            for b, m, f in zip(img.bias, img.multiplier, row_fanout(program, lane, geo))]


def memory_bits(geo: Geometry) -> dict:
    """Storage the design needs, by kind, in bits (what the fit check weighs against a
    board's block RAM)."""
    job_bits = job_layout(geo).size
    return {
        "weights": sum(geo.entry_depth) * (8 + geo.index_bits),
        "pointers": geo.pes * geo.ptr_depth * pointer_layout(geo).size,
        "row_parameters": geo.pes * sum(geo.row_slots) * row_layout(geo).size,
        "accumulators": geo.pes * 2 * geo.max_row_slots * geo.acc_width,
        "job_queues": geo.pes * geo.pes * geo.queue_depth * job_bits,
        "input_queues": geo.pes * geo.input_queue_depth * job_bits,
        "outputs": geo.pes * max(2, geo.out_slots[-1]) * 8,
    }
