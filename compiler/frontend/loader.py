"""Load a model file without running untrusted code.

``torch.save(model)`` files are pickles: they are opened with ``weights_only=True`` and only the
standard layer classes allow-listed, so a file that asks for anything else is refused before any
of it runs, unless the user passes ``--trust-pickle``. TorchScript files load without pickle.
"""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.utils.prune as prune

from core.errors import FrontendError

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


def _kind(path: Path) -> str:
    """'torchscript', 'zip-pickle' or 'legacy-pickle', from the file's bytes."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:2] == b"PK":
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
                bad = z.testzip()
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise FrontendError(f"{path}: corrupt model file ({e}); re-save it with "
                                f"torch.save(model, ...) or torch.jit.save") from None
        if bad is not None:
            raise FrontendError(f"{path}: corrupt model file (member {bad} fails its CRC); "
                                f"re-save it")
        if any(n.endswith("/constants.pkl") or n == "constants.pkl" for n in names):
            return "torchscript"
        if any(n.endswith("data.pkl") for n in names):
            return "zip-pickle"
        raise FrontendError(f"{path}: a zip file, but not a PyTorch model (no data.pkl); save "
                            f"the model with torch.save(model, ...) or torch.jit.save")
    if head[:1] == b"\x80":
        return "legacy-pickle"
    raise FrontendError(f"{path}: not a model file (expected a torch.save or TorchScript zip); "
                        f"save the model with torch.save(model, ...) or torch.jit.save")


def load_module(path, *, trust_pickle: bool = False):
    """Return the ``nn.Module`` or ``torch.jit.ScriptModule`` stored in ``path``."""
    path = Path(path)
    if not path.exists():
        raise FrontendError(f"{path}: no such file; give the path of a saved model (.pt)")
    if not path.is_file():
        raise FrontendError(f"{path}: not a file; give the path of a saved model (.pt)")
    if path.stat().st_size == 0:
        raise FrontendError(f"{path}: empty file; re-save the model")
    kind = _kind(path)
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

