"""Load a model file without running untrusted code.

``torch.save(model)`` files are pickles: they are opened with ``weights_only=True`` and only the
standard layer classes allow-listed, so a file that asks for anything else is refused before any
of it runs, unless the user passes ``--trust-pickle``. TorchScript files load without pickle.
``torch.export`` archives (``.pt2``) are checked to hold no pickled payload before
``torch.export.load`` opens them (see :func:`_load_exported`); ONNX files are protobuf and load
with the ``onnx`` package (:mod:`.onnx_graph`). What a file is comes from its bytes, not its
name.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import warnings
import zipfile
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.utils.prune as prune

from core.errors import FrontendError
from .onnx_graph import load_onnx

__all__ = ["load_module", "SAFE_CLASSES"]

#: Classes a weights-only load may construct: torch's own layer classes (so that a model with
#: a layer we cannot compile loads, and the error names that layer) and the containers of
#: torch.nn.utils.prune (plain records of a pruning amount, no code).
SAFE_CLASSES = sorted(
    {cls for cls in vars(nn).values()
     if isinstance(cls, type) and issubclass(cls, nn.Module)
     and cls.__module__.startswith("torch.nn.modules.")}, key=lambda c: c.__name__) + [
    prune.L1Unstructured, prune.RandomUnstructured, prune.LnStructured, prune.RandomStructured,
    prune.PruningContainer, prune.CustomFromMask, prune.Identity,
]


_FORMATS = ("save the model with torch.export.save (recommended), torch.onnx.export, "
            "torch.save(model, ...) or torch.jit.save")


def _resave(path: Path) -> str:
    if path.suffix.lower() == ".pt2":
        return "re-save it with torch.export.save"
    return "re-save it with torch.save(model, ...) or torch.jit.save"


def _kind(path: Path) -> str:
    """'torchscript', 'export', 'zip-pickle', 'legacy-pickle' or 'onnx', from the file's
    bytes."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:2] == b"PK":
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
                bad = z.testzip()
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise FrontendError(f"{path}: corrupt model file ({e}); {_resave(path)}") from None
        if bad is not None:
            raise FrontendError(f"{path}: corrupt model file (member {bad} fails its CRC); "
                                f"re-save it")
        if any(n.endswith("/constants.pkl") or n == "constants.pkl" for n in names):
            return "torchscript"
        if any(n.endswith("/archive_format") or n == "archive_format" for n in names):
            return "export"
        if any(n.endswith("data.pkl") for n in names):
            return "zip-pickle"
        raise FrontendError(f"{path}: a zip file, but not a PyTorch model (no data.pkl); "
                            f"{_FORMATS}")
    if head[:1] == b"\x80":
        return "legacy-pickle"
    if path.suffix.lower() == ".onnx" or head[:1] == b"\x08":    # ModelProto.ir_version
        return "onnx"
    raise FrontendError(f"{path}: not a model file (expected a torch.export .pt2, an .onnx, a "
                        f"torch.save or a TorchScript file); {_FORMATS}")


def load_module(path, *, trust_pickle: bool = False):
    """Return the model stored in ``path``: an ``nn.Module``, a ``torch.jit.ScriptModule``, the
    graph module of a ``torch.export`` program, or an :class:`~.onnx_graph.OnnxModel`."""
    path = Path(path)
    if not path.exists():
        raise FrontendError(f"{path}: no such file; give the path of a saved model (.pt2, "
                            f".onnx, .pt)")
    if not path.is_file():
        raise FrontendError(f"{path}: not a file; give the path of a saved model (.pt2, .onnx, "
                            f".pt)")
    if path.stat().st_size == 0:
        raise FrontendError(f"{path}: empty file; re-save the model")
    kind = _kind(path)
    if kind == "onnx":
        return load_onnx(path)
    if kind == "export":
        return _load_exported(path)
    if kind == "torchscript":
        try:
            with warnings.catch_warnings():     # deprecated upstream, still a format we read
                warnings.simplefilter("ignore", DeprecationWarning)
                return torch.jit.load(str(path), map_location="cpu")
        except Exception as e:  # torch raises RuntimeError with C++ context on corrupt archives
            raise FrontendError(f"{path}: corrupt TorchScript file "
                                f"({_first_line(e)}); re-save it with torch.jit.save") from None
    try:
        with torch.serialization.safe_globals(SAFE_CLASSES):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        needed = re.search(r"GLOBAL ([\w.]+)", str(e))
        if needed is None:
            raise FrontendError(f"{path}: corrupt model file ({_first_line(e)}); re-save it")
        if not trust_pickle:
            raise FrontendError(
                f"{path}: refused to unpickle {needed.group(1)} - a pickle can run arbitrary "
                f"code; save the model as TorchScript (torch.jit.script) or as nn.Sequential, or "
                f"pass --trust-pickle if you trust this file") from None
        obj = _load_trusted(path)
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise FrontendError(f"{path}: corrupt model file ({_first_line(e)}); re-save it") \
            from None
    return _check_module(path, obj)


def _load_exported(path: Path):
    """``torch.export.load``, but only of an archive whose payloads are plain tensors.

    torch 2.13's loader unpickles with ``weights_only=False`` any weight or constant the
    archive marks ``use_pickle``, custom and opaque objects, legacy ``.pt`` weight files, and
    sample inputs that a weights-only load refuses. Such archives are refused here before
    torch reads them, and the load itself runs with ``TORCH_FORCE_WEIGHTS_ONLY_LOAD=1`` so that
    whatever torch still unpickles can only build tensors and containers.
    """
    try:
        with zipfile.ZipFile(path) as z:
            for name in z.namelist():
                folder, _, base = name.rpartition("/")
                if folder.endswith("data/weights") and base.endswith(".pt") or \
                        folder.endswith("data/constants") and base.endswith(".pt"):
                    _refuse_pickle(path, name)
                if base.endswith("_weights_config.json") or \
                        base.endswith("_constants_config.json"):
                    for fqn, meta in json.loads(z.read(name))["config"].items():
                        if meta.get("use_pickle") or not str(meta.get("path_name", "")) \
                                .startswith(("weight_", "tensor_")):
                            _refuse_pickle(path, f"{name}: {fqn}")
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise FrontendError(f"{path}: corrupt torch.export archive ({_first_line(e)}); re-save "
                            f"it with torch.export.save") from None
    try:
        with _weights_only(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.load(str(path))
    except Exception as e:   # torch raises RuntimeError/AssertionError/KeyError on bad archives
        raise FrontendError(f"{path}: corrupt or unreadable torch.export archive "
                            f"({_first_line(e)}); re-save it with torch.export.save") from None
    module = program.module()
    module.sparsemac_source = "torch.export"
    return module


def _refuse_pickle(path: Path, what: str):
    raise FrontendError(f"{path}: refused: the torch.export archive stores {what} as a pickle, "
                        f"which can run arbitrary code; export a model whose parameters are "
                        f"plain tensors")


@contextlib.contextmanager
def _weights_only():
    old = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if old is None:
            del os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"]
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = old


def _load_trusted(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (AttributeError, ModuleNotFoundError, ImportError) as e:
        raise FrontendError(f"{path}: the model's class cannot be imported ({_first_line(e)}); "
                            f"run from where its module is importable, or save it as "
                            f"TorchScript") from None
    except Exception as e:
        raise FrontendError(f"{path}: corrupt model file ({_first_line(e)}); re-save it") \
            from None


def _check_module(path: Path, obj):
    if isinstance(obj, nn.Module):
        return obj
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise FrontendError(f"{path}: holds a state_dict, not a model; save the module itself "
                            f"(torch.save(model, ...)) or a TorchScript file")
    raise FrontendError(f"{path}: holds a {type(obj).__name__}, not a model; save the module "
                        f"itself (torch.save(model, ...)) or a TorchScript file")


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__

