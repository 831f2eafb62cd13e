"""Which parts of a model pruning touches, and the small operations on them.

The prunable layers are ``nn.Linear`` and ``nn.Conv2d``; their ``weight`` is pruned, biases
are kept. A weight's *rows* are its output units: a Linear layer's neurons, a Conv2d layer's
output channels (``weight.reshape(out, -1)``).
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from core.errors import InputError

__all__ = ["PRUNABLE", "prunable_layers", "check_prunable", "check_finite", "rows_of",
           "copy_model", "set_train_mode", "weight_count"]

#: Layer types whose weights are pruned.
PRUNABLE = (nn.Linear, nn.Conv2d)


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(qualified name, module)`` of every prunable layer, in registration order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, PRUNABLE)]


def check_prunable(model, name: str = "model") -> list[tuple[str, nn.Module]]:
    """The prunable layers of ``model``; :class:`InputError` when it cannot be pruned."""
    if isinstance(model, torch.jit.ScriptModule):
        raise InputError(f"{name} is a TorchScript file, which cannot be changed; prune the "
                         f"eager model and save it with torch.save(model, ...)")
    layers = prunable_layers(model)
    if not layers:
        kinds = sorted({type(m).__name__ for m in model.modules()})
        raise InputError(f"{name} has no prunable layers (it holds {', '.join(kinds)}); "
                         f"pruning needs nn.Linear or nn.Conv2d layers")
    return layers


def check_finite(model: nn.Module, name: str = "model") -> None:
    """:class:`InputError` when a parameter of ``model`` holds NaN or Inf (fine-tuning would
    only spread it, and the magnitudes that rank the weights mean nothing)."""
    for pname, param in model.named_parameters():
        if not torch.isfinite(param.detach()).all():
            raise InputError(f"{name}: parameter {pname!r} holds NaN or Inf; fix or retrain "
                             f"the model before pruning it")


def rows_of(weight: torch.Tensor) -> torch.Tensor:
    """The weight as a matrix ``[output units, fan-in]`` (a view)."""
    return weight.reshape(weight.shape[0], -1)


def weight_count(model: nn.Module) -> int:
    """Number of prunable weights (biases excluded)."""
    return sum(m.weight.numel() for _, m in prunable_layers(model))


def copy_model(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model)


def set_train_mode(model: nn.Module) -> nn.Module:
    """Train mode, except BatchNorm (statistics frozen) and Dropout (off).

    Fine-tuning then computes the same function on every process whatever share of the batch
    each one sees, and needs no random numbers beyond the batch order.
    """
    model.train()
    for m in model.modules():
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.Dropout, nn.Dropout1d,
                          nn.Dropout2d, nn.AlphaDropout)):
            m.eval()
    return model
