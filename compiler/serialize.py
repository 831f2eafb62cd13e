"""Save and load a compiled :class:`~core.ir.SparseProgram` without pickle.

A build folder keeps its program as ``program.npz``: plain arrays plus one JSON header, read
back with ``allow_pickle=False``, so ``simulate`` can check the hardware against the very images
it was built from.
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
from pathlib import Path

import numpy as np

from core.errors import InputError
from core.ir import (Conv2dShape, Grid, Layer, LayerKind, Model, PEImage, Pool, Quantization,
    ReducerImage, SparseProgram, Widths)

__all__ = ["save_program", "load_program"]

_FORMAT = "sparsemac-program/3"
_QUANT_ARRAYS = ("weight", "bias", "multiplier", "shift", "weight_scale")
_PE_ARRAYS = ("entry_value", "entry_index", "ptr")
_REDUCER_ARRAYS = ("bias", "multiplier")


def save_program(program: SparseProgram, path) -> None:
    arrays = {}
    layers = []
    for m, layer in enumerate(program.layers):
        q = layer.quant
        arrays[f"layer{m}.weight"] = layer.weight
        arrays[f"layer{m}.bias"] = layer.bias
        for name in _QUANT_ARRAYS:
            arrays[f"layer{m}.q.{name}"] = getattr(q, name)
        layers.append({"name": layer.name, "kind": layer.kind.value, "relu": layer.relu,
                       "in_features": layer.in_features, "out_features": layer.out_features,
                       "in_scale": q.in_scale, "out_scale": q.out_scale,
                       "pool_multiplier": q.pool_multiplier, "pool_shift": q.pool_shift,
                       "half_even": q.half_even,
                       "conv": dataclasses.asdict(layer.conv) if layer.conv else None,
                       "pool": dataclasses.asdict(layer.pool) if layer.pool else None})
    for k, pe in enumerate(program.pe_images):
        for name in _PE_ARRAYS:
            arrays[f"pe{k}.{name}"] = getattr(pe, name)
        if pe.entry_code is not None:
            arrays[f"pe{k}.entry_code"] = pe.entry_code
    for m, table in enumerate(program.codebooks or ()):
        arrays[f"codebook{m}"] = np.asarray(table, dtype=np.int64)
    for r, red in enumerate(program.reducers):
        for name in _REDUCER_ARRAYS:
            arrays[f"reducer{r}.{name}"] = getattr(red, name)
        for m, rows in enumerate(red.rows):
            arrays[f"reducer{r}.rows{m}"] = rows
    header = {
        "format": _FORMAT, "name": program.model.name, "layers": layers,
        "grid": [program.grid.rows, program.grid.cols],
        "input_shape": list(program.model.input_shape),
        "index_bits": program.index_bits, "row_slots": list(program.row_slots),
        "row_base": list(program.row_base), "out_slots": list(program.out_slots),
        "col_slots": list(program.col_slots), "ptr_base": list(program.ptr_base),
        "widths": dataclasses.asdict(program.widths),
        "skip_zero_activations": program.skip_zero_activations,
        "codebooks": program.codebooks is not None,
    }
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    np.savez_compressed(path, **arrays)


def load_program(path) -> SparseProgram:
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {key: f[key] for key in f.files}
        header = json.loads(arrays["header"].tobytes().decode())
        if header.get("format") != _FORMAT:
            raise ValueError(f"unknown format {header.get('format')!r}")
        layers = []
        for m, info in enumerate(header["layers"]):
            q = Quantization(**{name: arrays[f"layer{m}.q.{name}"] for name in _QUANT_ARRAYS},
                             in_scale=info["in_scale"], out_scale=info["out_scale"],
                             pool_multiplier=info["pool_multiplier"],
                             pool_shift=info["pool_shift"],
                             half_even=info.get("half_even", False))
            conv = info["conv"] and Conv2dShape(**{k: tuple(v) if isinstance(v, list) else v
                                                   for k, v in info["conv"].items()})
            pool = info["pool"] and Pool(**{k: tuple(v) if isinstance(v, list) else v
                                            for k, v in info["pool"].items()})
            layers.append(Layer(name=info["name"], kind=LayerKind(info["kind"]),
                                in_features=info["in_features"],
                                out_features=info["out_features"],
                                weight=arrays[f"layer{m}.weight"],
                                bias=arrays[f"layer{m}.bias"], relu=info["relu"], quant=q,
                                conv=conv or None, pool=pool or None))
        grid = Grid(*header["grid"])
        shared = bool(header.get("codebooks", False))
        pe_images = tuple(PEImage(**{name: arrays[f"pe{k}.{name}"] for name in _PE_ARRAYS},
                                  entry_code=arrays[f"pe{k}.entry_code"] if shared else None)
                          for k in range(grid.pes))
        codebooks = (tuple(arrays[f"codebook{m}"] for m in range(len(layers))) if shared
                     else None)
        reducers = tuple(ReducerImage(
            rows=tuple(arrays[f"reducer{r}.rows{m}"] for m in range(len(layers))),
            **{name: arrays[f"reducer{r}.{name}"] for name in _REDUCER_ARRAYS})
            for r in range(grid.rows))
        return SparseProgram(
            model=Model(name=header["name"], layers=tuple(layers),
                        input_shape=tuple(header["input_shape"])), grid=grid,
            index_bits=header["index_bits"], row_slots=tuple(header["row_slots"]),
            row_base=tuple(header["row_base"]), out_slots=tuple(header["out_slots"]),
            col_slots=tuple(header["col_slots"]), ptr_base=tuple(header["ptr_base"]),
            pe_images=pe_images, reducers=reducers, widths=Widths(**header["widths"]),
            skip_zero_activations=header["skip_zero_activations"],
            codebooks=codebooks).verify()
    except FileNotFoundError:
        raise InputError(f"{path}: no compiled program here; run `python -m compiler build` "
                         f"first") from None
    except (KeyError, ValueError, TypeError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise InputError(f"{path}: corrupt compiled program ({e}); rebuild it") from None
