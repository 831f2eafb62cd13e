"""The library path from a float IR to an encoded program: quantize (from calibration, or with
a QONNX / QDQ graph's own quantizers) and encode for P PEs. ``build`` runs it inside its steps;
``prune``'s balanced method and fit search, the tests and the benchmarks call it directly."""

from __future__ import annotations

import numpy as np

from core.ir import Grid, Model, SparseProgram

from . import reference
from .passes.codebook import apply_codebook
from .passes.encode import encode
from .passes.imported import quantize_imported
from .passes.quantize import quantize

__all__ = ["encode_calibrated", "compile_model"]


def encode_calibrated(quantized: Model, calibration: np.ndarray, pes: int, *,
                      grid: Grid | str | None = None, index_bits: int | None = None,
                      dense: bool = False, weight_bits="off") -> SparseProgram:
    """Encode ``quantized`` for ``pes`` PEs, balancing them on the activity that
    ``calibration`` (float [N, in]) produces in every layer; ``weight_bits``: weight sharing
    (:func:`~compiler.passes.codebook.apply_codebook`)."""
    x = reference.quantize_input(calibration, quantized.input_scale)
    _, acts = reference.run_dense(quantized, x[:256], return_activations=True)
    program = encode(quantized, pes, grid=grid, index_bits=index_bits,
                     activity=[a != 0 for a in acts[:-1]], skip_zero_activations=not dense)
    return apply_codebook(program, weight_bits)


def compile_model(model: Model, calibration: np.ndarray, pes: int, *,
                  grid: Grid | str | None = None, index_bits: int | None = None,
                  dense: bool = False, weight_bits="off", quantization=None) -> SparseProgram:
    """Float IR -> quantized, encoded program (the library path of ``build`` without files).
    ``weight_bits`` other than "off" also quantizes a weight-shared layer on one scale.
    ``quantization``: a QONNX / QDQ graph's own quantizers (``OnnxModel.quantization``), used
    instead of calibrating."""
    if quantization is not None and quantization.present:
        quantized = quantize_imported(model, quantization, calibration)[0]
    else:
        quantized = quantize(model, calibration,
                             weight_sharing=weight_bits not in (None, "off"))
    return encode_calibrated(quantized, calibration, pes, grid=grid, index_bits=index_bits,
                             dense=dense, weight_bits=weight_bits)
