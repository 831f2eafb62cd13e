"""Weight sharing in the memory images: a layer whose stored int8 weights take few distinct
values keeps, in each entry, a B-bit index into a per-layer table of 2**B int8 values instead of
the int8 weight itself (Han et al., Deep Compression step 2; EIE's "virtual weights").

The table is an encoding, nothing more: the reference decodes each code back to its int8
weight (:func:`compiler.reference.decode_pes`) and computes exactly as before, and the hardware
decodes it through the same table (a ROM beside the walker's output). A layer's table holds its
distinct nonzero int8 weights, and 0 where the layer stores zero entries (the padding that
bridges a gap too long for the relative index, or every weight of a dense-mode program), so a
pruner that wants B bits leaves ``2**B - 1`` nonzero values per layer
(:mod:`compiler.prune.sharing`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from core.errors import InputError
from core.ir import PEImage, SparseProgram

__all__ = ["apply_codebook", "layer_values", "codebook_bits", "WEIGHT_BITS_MAX"]

#: The widest codebook index: 8 bits would be no narrower than an int8 weight.
WEIGHT_BITS_MAX = 7


def layer_values(program: SparseProgram) -> list[np.ndarray]:
    """Per layer, the sorted distinct int8 values its entries store (0 included where padding
    or dense storage puts zero entries in the layer)."""
    found = [set() for _ in program.layers]
    for pe in program.pe_images:
        layer = pe.layer_of_entries(program.ptr_base, program.col_slots)
        for m in range(len(program.layers)):
            found[m].update(np.unique(pe.entry_value[layer == m]).tolist())
    return [np.array(sorted(v), dtype=np.int64) for v in found]


def codebook_bits(values: list[np.ndarray]) -> int:
    """The narrowest index that tells every layer's values apart."""
    return max(1, max((len(v) - 1).bit_length() for v in values))


def _saves(program: SparseProgram, bits: int) -> bool:
    """Whether B-bit codes and their tables take fewer bits than int8 weights."""
    entries = sum(len(pe.entry_value) for pe in program.pe_images)
    tables = program.pes * len(program.layers) * (1 << bits) * 8   # a ROM in every PE
    return entries * (8 - bits) > tables


def apply_codebook(program: SparseProgram, weight_bits="auto") -> SparseProgram:
    """``program`` with codebook entries, or unchanged.

    ``weight_bits``: "off" (or None) keeps int8 entries; "auto" uses the narrowest index that
    represents every layer when it is at most :data:`WEIGHT_BITS_MAX` bits and saves memory
    (tables included); a number B forces B-bit codes and raises :class:`InputError` naming the
    first layer with more than 2**B values."""
    if weight_bits in (None, "off"):
        return program
    values = layer_values(program)
    if weight_bits == "auto":
        bits = codebook_bits(values)
        if bits > WEIGHT_BITS_MAX or not _saves(program, bits):
            return program
    elif isinstance(weight_bits, int) and not isinstance(weight_bits, bool) \
            and 1 <= weight_bits <= WEIGHT_BITS_MAX:
        bits = weight_bits
        for layer, v in zip(program.layers, values):
            if len(v) > 1 << bits:
                nonzero = int(np.count_nonzero(v))
                zero = " and 0 for its padding entries" if nonzero < len(v) else ""
                need = codebook_bits([v])
                fix = (f"give --weight-bits {need} or more, or auto" if need <= WEIGHT_BITS_MAX
                       else "it needs int8 weights: give --weight-bits auto or off, or share "
                            "its weights first (prune --weight-bits)")
                raise InputError(
                    f"--weight-bits {bits}: layer {layer.name!r} has {nonzero} distinct "
                    f"nonzero int8 weights{zero}, more than a {bits}-bit codebook's "
                    f"{1 << bits}; {fix}")
    else:
        raise InputError(f"--weight-bits must be auto, off or a number in 1..{WEIGHT_BITS_MAX}, "
                         f"not {weight_bits!r}")
    tables = []
    for v in values:
        table = np.zeros(1 << bits, dtype=np.int64)
        table[:len(v)] = v
        tables.append(table)
    images = []
    for pe in program.pe_images:
        layer = pe.layer_of_entries(program.ptr_base, program.col_slots)
        code = np.zeros(len(pe.entry_value), dtype=np.int64)
        for m, v in enumerate(values):
            here = layer == m
            code[here] = np.searchsorted(v, pe.entry_value[here].astype(np.int64))
        images.append(PEImage(entry_value=pe.entry_value, entry_index=pe.entry_index,
                              ptr=pe.ptr, entry_code=code))
    return dataclasses.replace(program, pe_images=tuple(images),
                               codebooks=tuple(tables)).verify()
