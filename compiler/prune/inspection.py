"""``python -m compiler inspect``: a model's sparsity, as numbers and as a picture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch.nn as nn

from core.errors import InputError
from .layers import check_prunable, prunable_layers, rows_of
from .metrics import SparsityReport, sparsity_report
from ..frontend import load_module

__all__ = ["inspect_model", "inspect_file", "plot_sparsity", "default_png"]


def inspect_model(model: nn.Module, reference: nn.Module | None = None) -> SparsityReport:
    """Sparsity metrics of ``model`` (magnitude-weighted ones need the dense ``reference``)."""
    check_prunable(model)
    if reference is not None:
        check_prunable(reference, "the reference model")
        ours, theirs = prunable_layers(model), prunable_layers(reference)
        if [n for n, _ in ours] != [n for n, _ in theirs]:
            raise InputError(f"the reference model's layers {[n for n, _ in theirs]} do not "
                             f"match the model's {[n for n, _ in ours]}; give the dense model "
                             f"this one was pruned from")
        for (n, m), (_, r) in zip(ours, theirs):
            # structured pruning removes units, so a layer may shrink, never grow
            if m.weight.dim() != r.weight.dim() or any(
                    a > b for a, b in zip(m.weight.shape, r.weight.shape)):
                raise InputError(f"layer {n!r} is {'x'.join(map(str, m.weight.shape))} but "
                                 f"{'x'.join(map(str, r.weight.shape))} in the reference "
                                 f"model; give the dense model this one was pruned from")
    return sparsity_report(model, reference)


def default_png(model_path) -> Path:
    path = Path(model_path)
    return path.with_name(f"{path.stem}-sparsity.png")


def _density_blocks(mask: np.ndarray, cells: int = 48) -> np.ndarray:
    """Share of nonzero weights in blocks of ``mask`` (at most ``cells`` per side)."""
    rows, cols = mask.shape
    br, bc = -(-rows // cells), -(-cols // cells)
    padded = np.full((-(-rows // br) * br, -(-cols // bc) * bc), np.nan)
    padded[:rows, :cols] = mask
    blocks = padded.reshape(padded.shape[0] // br, br, padded.shape[1] // bc, bc)
    return np.nanmean(blocks, axis=(1, 3))


def plot_sparsity(model: nn.Module, report: SparsityReport, path, *, title: str = "") -> Path:
    """Write a PNG: each layer's nonzero density (weights binned into blocks), and a heatmap of
    the per-layer sparsity metrics."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = prunable_layers(model)
    n = len(layers)
    fig = plt.figure(figsize=(max(6.0, 3.2 * n), 6.4), constrained_layout=True)
    grid = fig.add_gridspec(2, n, height_ratios=[3, 1.4])
    image = None
    for i, ((name, m), stats) in enumerate(zip(layers, report.layers)):
        ax = fig.add_subplot(grid[0, i])
        mask = (rows_of(m.weight.detach().cpu()) != 0).numpy()
        blocks = _density_blocks(mask)
        br, bc = -(-mask.shape[0] // blocks.shape[0]), -(-mask.shape[1] // blocks.shape[1])
        image = ax.imshow(blocks, cmap="viridis", vmin=0, vmax=1, aspect="auto",
                          interpolation="nearest",
                          extent=(0, blocks.shape[1] * bc, blocks.shape[0] * br, 0))
        ax.set_title(f"{name} ({stats.kind} {'x'.join(map(str, stats.shape))})\n"
                     f"{100 * stats.parameter:.1f} % zero", fontsize=9)
        ax.set_xlabel("inputs" + (f" (blocks of {br}x{bc})" if br * bc > 1 else ""),
                      fontsize=8)
        ax.set_ylabel("outputs", fontsize=8)
        ax.tick_params(labelsize=7)
    if image is not None:
        fig.colorbar(image, ax=fig.axes, shrink=0.6, label="share of nonzero weights")
    ax = fig.add_subplot(grid[1, :])
    metrics = ["parameter", "structural", "magnitude-weighted"]
    rows = [*report.layers, report.total]
    values = np.array([[r.parameter, r.structural,
                        np.nan if r.magnitude is None else r.magnitude] for r in rows]).T
    ax.imshow(values, cmap="magma_r", vmin=0, vmax=1, aspect="auto")
    ax.set_yticks(range(len(metrics)), metrics, fontsize=8)
    ax.set_xticks(range(len(rows)), [r.name for r in rows], fontsize=8)
    for (j, i), v in np.ndenumerate(values):
        ax.text(i, j, "n/a" if np.isnan(v) else f"{100 * v:.1f} %", ha="center",
                va="center", fontsize=8, color="white" if v > 0.5 else "black")
    ax.set_title("sparsity per layer", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    path = Path(path)
    try:
        fig.savefig(path, dpi=110)
    except OSError as e:
        raise InputError(f"cannot write {path}: {e.strerror}; choose another --png") from None
    finally:
        plt.close(fig)
    return path


def inspect_file(model_path, *, reference=None, png=None,
                 trust_pickle: bool = False) -> tuple[SparsityReport, Path]:
    """Load ``model_path`` (and ``reference``), compute the metrics, write the PNG."""
    png = Path(png) if png is not None else default_png(model_path)
    if png.suffix.lower() != ".png":
        raise InputError(f"--png {png}: give a path ending in .png")
    if not png.parent.is_dir():
        raise InputError(f"--png {png}: folder {png.parent} does not exist; create it or "
                         f"choose another path")
    model = load_module(model_path, trust_pickle=trust_pickle)
    check_prunable(model, str(model_path))
    ref = None
    if reference is not None:
        ref = load_module(reference, trust_pickle=trust_pickle)
        check_prunable(ref, str(reference))
    report = inspect_model(model, ref)
    plot_sparsity(model, report, png, title=Path(model_path).name)
    return report, png
