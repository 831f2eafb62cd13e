"""Sparsity metrics, per prunable layer and for the whole model.

Only weights count (biases are never pruned). For a layer with ``N`` weights and ``U`` output
units (a Linear layer's neurons, a Conv2d layer's output channels) in the *reference* model —
the dense model before pruning, or the model itself when none is given:

parameter sparsity
    ``1 - nonzero / N``: the share of weights that are zero or were removed. Weights removed
    by shrinking a layer (``structured``) count as zeros of the reference layer.
structural sparsity
    the share of the ``U`` units that are gone: all their weights are zero, or the unit was
    removed. These are the savings that need no sparse hardware.
magnitude-weighted relative sparsity
    ``sum(|w_ref| over removed weights) / sum(|w_ref|)``: the share of the dense layer's L1 mass
    that pruning removed, where a weight is *removed* when it is zero in the pruned model (or
    its row/column is gone). At 90 % parameter sparsity a value near 0.9 means pruning hit
    weights as large as the rest; a small value means it removed many small weights and kept
    the mass. Needs the reference model (``None`` without one).

The totals pool the layers: ``1 - sum(nonzero) / sum(N)``, ``sum(zero units) / sum(U)`` and
``sum(removed mass) / sum(mass)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from .layers import prunable_layers, rows_of

__all__ = ["LayerSparsity", "SparsityReport", "sparsity_report", "Kept"]

#: Per layer: the reference rows and input columns (Linear features / Conv2d channels) a shrunk
#: layer kept, in order (``None``: all of them).
Kept = dict[str, tuple[torch.Tensor | None, torch.Tensor | None]]


@dataclass(frozen=True)
class LayerSparsity:
    """Sparsity of one layer (or, with ``name == "total"``, of the whole model)."""
    name: str
    kind: str
    shape: tuple[int, ...]            # weight shape in this model
    reference_shape: tuple[int, ...]  # weight shape in the reference
    weights: int                      # N: weights of the reference layer
    nonzero: int
    units: int                        # U: output units of the reference layer
    zero_units: int
    mass: float | None                # sum |w_ref|
    removed_mass: float | None

    @property
    def parameter(self) -> float:
        return 1.0 - self.nonzero / self.weights if self.weights else 0.0

    @property
    def structural(self) -> float:
        return self.zero_units / self.units if self.units else 0.0

    @property
    def magnitude(self) -> float | None:
        if self.mass is None or self.removed_mass is None:
            return None
        return self.removed_mass / self.mass if self.mass > 0 else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(parameter_sparsity=self.parameter, structural_sparsity=self.structural,
                 magnitude_sparsity=self.magnitude)
        return d


@dataclass(frozen=True)
class SparsityReport:
    layers: tuple[LayerSparsity, ...]
    total: LayerSparsity

    def to_dict(self) -> dict:
        return {"layers": [layer.to_dict() for layer in self.layers],
                "total": self.total.to_dict()}


def _embed(weight: torch.Tensor, ref_shape, kept) -> torch.Tensor | None:
    """``weight`` placed into a zero tensor of the reference shape, by the kept indices."""
    if tuple(weight.shape) == tuple(ref_shape):
        return weight
    if kept is None:
        return None
    rows, cols = kept
    full = torch.zeros(ref_shape, dtype=weight.dtype)
    r = torch.arange(ref_shape[0]) if rows is None else rows.cpu()
    c = torch.arange(ref_shape[1]) if cols is None else cols.cpu()
    full[r[:, None], c[None, :]] = weight
    return full


def _layer(name, module, ref_module, kept) -> LayerSparsity:
    w = module.weight.detach().cpu().float()
    ref = w if ref_module is None else ref_module.weight.detach().cpu().float()
    nonzero = int((w != 0).sum())
    units_ref = ref.shape[0]
    full = _embed(w, ref.shape, kept)
    if full is not None:
        zero_units = int((rows_of(full) == 0).all(dim=1).sum())
    else:       # shrunk, correspondence unknown: removed rows plus zero rows
        zero_units = units_ref - w.shape[0] + int((rows_of(w) == 0).all(dim=1).sum())
    mass = removed = None
    if ref_module is not None and full is not None:
        mass = float(ref.abs().sum())
        removed = float((ref.abs() * (full == 0)).sum())
    return LayerSparsity(name=name, kind=type(module).__name__, shape=tuple(w.shape),
                         reference_shape=tuple(ref.shape), weights=ref.numel(),
                         nonzero=nonzero, units=units_ref, zero_units=zero_units,
                         mass=mass, removed_mass=removed)


def sparsity_report(model: nn.Module, reference: nn.Module | None = None, *,
                    kept: Kept | None = None) -> SparsityReport:
    """Metrics of ``model``'s prunable layers against ``reference`` (matched by layer name).

    ``kept`` says which reference rows/columns a shrunk layer kept (from ``structured``);
    without it a shrunk layer's magnitude-weighted sparsity is unknown (``None``).
    """
    refs = dict(prunable_layers(reference)) if reference is not None else {}
    if reference is not None:
        missing = [n for n, _ in prunable_layers(model) if n not in refs]
        if missing:
            raise ValueError(f"layers {missing} are not in the reference model")
    layers = tuple(_layer(name, m, refs.get(name) if reference is not None else None,
                          (kept or {}).get(name))
                   for name, m in prunable_layers(model))
    has_mass = all(layer.mass is not None for layer in layers) and bool(layers)
    total = LayerSparsity(
        name="total", kind="", shape=(), reference_shape=(),
        weights=sum(layer.weights for layer in layers),
        nonzero=sum(layer.nonzero for layer in layers),
        units=sum(layer.units for layer in layers),
        zero_units=sum(layer.zero_units for layer in layers),
        mass=sum(layer.mass for layer in layers) if has_mass else None,
        removed_mass=sum(layer.removed_mass for layer in layers) if has_mass else None)
    return SparsityReport(layers=layers, total=total)
