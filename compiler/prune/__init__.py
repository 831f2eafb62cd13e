"""Pruning, the software side: methods, schedules, sparsity metrics and fine-tuning.

``prune_model(model, PruneConfig(method=..., sparsity=...))`` returns a pruned copy and its
figures; ``prune_file`` is the ``python -m compiler prune`` path. Runs on CUDA when present,
on the CPU otherwise, and on several processes under ``torchrun`` with the same result.
"""

from .api import PruneConfig, PruneResult, default_out, parse_sparsity, prune_file, prune_model
from .masks import Targets
from .methods import METHODS
from .metrics import LayerSparsity, SparsityReport, sparsity_report

__all__ = ["PruneConfig", "PruneResult", "prune_model", "prune_file", "default_out",
           "parse_sparsity", "METHODS", "Targets", "LayerSparsity", "SparsityReport",
           "sparsity_report"]
