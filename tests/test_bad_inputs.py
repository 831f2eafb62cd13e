"""The catalogue of bad inputs: every kind of unusable file, array, folder or option that the
CLI commands meet, each run through ``compiler.cli.main`` in process. Each must give a non-zero
exit, one line on stderr naming the problem (a phrase checked here) and no traceback.

The table :data:`CASES` doubles as the documentation: ``docs/bad_inputs.md`` is generated from
it (the real message of every case) with

    PYTHONPATH=$PWD python tests/test_bad_inputs.py --table > docs/bad_inputs.md

and :func:`test_the_docs_table_is_current` fails when the two drift apart.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "bad_inputs.md"
REGENERATE = "PYTHONPATH=$PWD python tests/test_bad_inputs.py --table > docs/bad_inputs.md"
ROOT_USER = hasattr(os, "geteuid") and os.geteuid() == 0


@dataclass(frozen=True)
class Case:
    """``argv`` with ``{w}`` for the workspace folder (:func:`make_workspace`); ``phrases``
    must all appear in the one-line error."""
    id: str
    command: str
    bad: str                       # the bad input, in words (the docs' second column)
    argv: tuple
    phrases: tuple
    unwritable: bool = False       # needs a folder root could still write to: skipped as root
    must_not_exist: str | None = None   # a file the bad input must not manage to create


def case(id, bad, *argv, phrase, **kw) -> Case:
    phrases = (phrase,) if isinstance(phrase, str) else tuple(phrase)
    return Case(id=id, command=argv[0], bad=bad, argv=argv, phrases=phrases, **kw)


_B = ("--board", "arty_a7", "--no-bitstream", "--out", "{w}/out")   # a build that would work
_M = "{w}/good.pt"                                                   # a model that would work
_P = ("--method", "l1", "--sparsity", "0.5", "--epochs", "0", "--out", "{w}/pruned.pt")
_X = "{w}/x.npy"                                                     # inputs that would work
_PORT = ("--port", "/dev/ttyNOPE-sparsemac")

#: The catalogue: (id, the bad input in words, argv, the phrase the error must contain).
CASES: list[Case] = [
    # build: the model file
    case("model-missing", "model file that does not exist", "build", "{w}/nope.pt", *_B,
         phrase="no such file"),
    case("model-folder", "a folder given as the model", "build", "{w}/bad", *_B,
         phrase="not a file"),
    case("model-zero-bytes", "zero-byte .pt", "build", "{w}/bad/zero.pt", *_B,
         phrase="empty file"),
    case("model-truncated", "truncated .pt (a third of a real one)", "build",
         "{w}/bad/truncated.pt", *_B, phrase="corrupt model file"),
    case("model-text", "text file named .pt", "build", "{w}/bad/text.pt", *_B,
         phrase="not a model file"),
    case("model-other-zip", "a zip that is not a model (a build's program.npz)", "build",
         "{w}/build/program.npz", *_B, phrase="a zip file, but not a PyTorch model"),
    case("model-state-dict", ".pt holding a state_dict", "build", "{w}/bad/state_dict.pt",
         *_B, phrase="holds a state_dict, not a model"),
    case("model-tensor", ".pt holding a tensor", "build", "{w}/bad/tensor.pt", *_B,
         phrase="holds a Tensor, not a model"),
    case("model-dict", ".pt holding a dict of settings", "build", "{w}/bad/dict.pt", *_B,
         phrase="holds a dict, not a model"),
    case("model-foreign-class", "pickled model whose class needs foreign code", "build",
         "{w}/bad/foreign.pt", *_B, phrase=("refused to unpickle", "--trust-pickle")),
    case("model-evil-pickle", "pickle that would run a shell command", "build",
         "{w}/bad/evil.pt", *_B, phrase=("refused to unpickle posix.system", "--trust-pickle"),
         must_not_exist="{w}/PWNED"),
    case("model-nan-weight", "NaN in a weight", "build", "{w}/bad/nan.pt", *_B,
         phrase="has NaN or Inf in its weight"),
    case("model-inf-bias", "Inf in a bias", "build", "{w}/bad/inf_bias.pt", *_B,
         phrase="has NaN or Inf in its bias"),
    case("model-sigmoid", "unsupported layer nn.Sigmoid in a Sequential", "build",
         "{w}/bad/sigmoid.pt", *_B, phrase=("unsupported layer '1' (Sigmoid)", "supported:")),
    case("model-lstm", "unsupported layer nn.LSTM", "build", "{w}/bad/lstm.pt", *_B,
         phrase="unsupported layer '0' (LSTM)"),
    case("model-no-layer", "a model with no Linear or Conv2d", "build", "{w}/bad/relu_only.pt",
         *_B, phrase="no Linear or Conv2d layer"),
    # build: --calibration
    case("cal-nan", "`--calibration` with NaN", "build", _M, "--calibration",
         "{w}/bad/nan.npy", *_B, phrase="contains NaN or Inf"),
    case("cal-inf", "`--calibration` with Inf", "build", _M, "--calibration",
         "{w}/bad/inf.npy", *_B, phrase="contains NaN or Inf"),
    case("cal-empty", "`--calibration` empty .npy (0 rows)", "build", _M, "--calibration",
         "{w}/bad/empty.npy", *_B, phrase="has shape [0, 64]"),
    case("cal-strings", "`--calibration` .npy of strings", "build", _M, "--calibration",
         "{w}/bad/strings.npy", *_B, phrase="holds <U1, not real numbers"),
    case("cal-complex", "`--calibration` .npy of complex numbers", "build", _M,
         "--calibration", "{w}/bad/complex.npy", *_B, phrase="holds complex64, not real numbers"),
    case("cal-bool", "`--calibration` .npy of booleans", "build", _M, "--calibration",
         "{w}/bad/bool.npy", *_B, phrase="holds bool, not real numbers"),
    case("cal-object", "`--calibration` object (pickle) .npy: allow_pickle stays off", "build",
         _M, "--calibration", "{w}/bad/object.npy", *_B,
         phrase=("not a plain numeric .npy array", "Object arrays")),
    case("cal-not-npy", "`--calibration` a file that is not .npy at all", "build", _M,
         "--calibration", "{w}/bad/text.pt", *_B, phrase="no NumPy header"),
    case("cal-npz", "`--calibration` an .npz archive instead of .npy", "build", _M,
         "--calibration", "{w}/bad/data.npz", *_B, phrase="is an .npz archive, not a .npy"),
    case("cal-shape", "`--calibration` of the wrong shape", "build", _M, "--calibration",
         "{w}/bad/shape_10x5.npy", *_B, phrase=("has shape [10, 5]", "[N, 64]")),
    case("cal-missing", "`--calibration` file that does not exist", "build", _M,
         "--calibration", "{w}/nope.npy", *_B, phrase="not found"),
    case("cal-folder", "`--calibration` a folder", "build", _M, "--calibration", "{w}/bad",
         *_B, phrase="is a folder"),
    # build: options
    case("pes-zero", "`--pes 0`", "build", _M, "--pes", "0", *_B,
         phrase="--pes: must be at least 1, not 0"),
    case("pes-negative", "`--pes -3`", "build", _M, "--pes", "-3", *_B,
         phrase="--pes: must be at least 1, not -3"),
    case("pes-too-many", "`--pes 100000`, above the maximum", "build", _M, "--pes", "100000",
         *_B, phrase="above the maximum of 1024 PEs"),
    case("pes-text", "`--pes many`", "build", _M, "--pes", "many", *_B,
         phrase="--pes: expected a whole number"),
    case("grid-shape", "`--grid 2x4` (fewer rows than columns)", "build", _M, "--grid", "2x4",
         *_B, phrase="needs at least as many rows as columns"),
    case("board-unknown", "unknown `--board`", "build", _M, "--board", "de10nano", "--out",
         "{w}/out", phrase=("unknown board 'de10nano'", "known boards:")),
    case("board-none", "neither `--board` nor `--platform`", "build", _M, "--out", "{w}/out",
         phrase="give either --board NAME or --platform module:Class"),
    case("platform-no-class", "`--platform` without `:Class`", "build", _M, "--platform",
         "amaranth_boards", "--out", "{w}/out", phrase="is not module:Class"),
    case("platform-missing-module", "`--platform` naming a module that does not exist", "build",
         _M, "--platform", "amaranth_boards.nope:Nope", "--out", "{w}/out",
         phrase="cannot load platform"),
    case("platform-not-platform", "`--platform` naming something that is not a platform",
         "build", _M, "--platform", "os:path", "--out", "{w}/out",
         phrase="names a module, not a platform class"),
    case("platform-not-fpga", "`--platform` naming a class of no supported FPGA family",
         "build", _M, "--platform", "collections:OrderedDict", "--out", "{w}/out",
         phrase="only iCE40, ECP5, Xilinx 7-series and Gowin platforms are supported"),
    case("clock-zero", "`--clock-mhz 0`", "build", _M, "--clock-mhz", "0", *_B,
         phrase="--clock-mhz must be in 1..1000"),
    case("banks-bad", "`--banks 7`", "build", _M, "--banks", "7", *_B,
         phrase="--banks must be one of 1, 2, 3, 4"),
    case("weight-bits-bad", "`--weight-bits 8` (no narrower than int8)", "build", _M,
         "--weight-bits", "8", *_B, phrase="must be auto, off or in 1..7"),
    case("weight-bits-too-few", "`--weight-bits 1` for a model with more weight values",
         "build", _M, "--weight-bits", "1", *_B,
         phrase=("--weight-bits 1: layer", "distinct nonzero int8 weights")),
    case("memory-bad", "`--memory sram`", "build", _M, "--memory", "sram", *_B,
         phrase="--memory must be one of block, distributed"),
    case("out-file", "`--out` that is an existing file", "build", _M, "--board", "arty_a7",
         "--no-bitstream", "--out", "{w}/bad/text.pt", phrase="is a file, not a folder"),
    case("out-unwritable", "`--out` in a folder you may not write", "build", _M, "--board",
         "arty_a7", "--no-bitstream", "--out", "{w}/readonly/build",
         phrase=("cannot create build folder", "Permission denied"), unwritable=True),
    # simulate
    case("sim-not-build", "a folder that is not a build folder", "simulate", "{w}/bad",
         phrase="is not a build folder"),
    case("sim-inputs-shape", "`--inputs` of the wrong shape", "simulate", "{w}/build",
         "--inputs", "{w}/bad/shape_3x63.npy", phrase=("has shape [3, 63]", "[N, 64]")),
    case("sim-inputs-strings", "`--inputs` .npy of strings", "simulate", "{w}/build",
         "--inputs", "{w}/bad/strings.npy", phrase="not real numbers"),
    case("sim-inputs-empty", "`--inputs` empty .npy", "simulate", "{w}/build", "--inputs",
         "{w}/bad/empty.npy", phrase="has shape [0, 64]"),
    case("sim-inputs-nan", "`--inputs` with NaN", "simulate", "{w}/build", "--inputs",
         "{w}/bad/nan.npy", phrase="contains NaN or Inf"),
    case("sim-program-key", "program.npz missing an array", "simulate", "{w}/b_missing_key",
         "--inputs", _X, phrase=("corrupt compiled program", "pe0.ptr", "rebuild")),
    case("sim-program-old", "program.npz from an older version", "simulate", "{w}/b_old_format",
         "--inputs", _X, phrase="unknown format 'sparsemac-program/2'"),
    case("sim-program-junk", "program.npz that is not an archive", "simulate",
         "{w}/b_junk_program", "--inputs", _X, phrase="corrupt compiled program"),
    case("sim-report-corrupt", "corrupt report.json", "simulate", "{w}/b_corrupt_report",
         "--inputs", _X, phrase="report.json cannot be read"),
    case("sim-config-missing", "build folder without build_config.json", "simulate",
         "{w}/b_no_config", phrase="build_config.json cannot be read"),
    case("sim-simulator", "unknown `--simulator`", "simulate", "{w}/build", "--simulator",
         "modelsim", phrase="invalid choice: 'modelsim'"),
    case("sim-limit", "`--limit 0`", "simulate", "{w}/build", "--limit", "0",
         phrase="--limit: must be at least 1"),
    # run
    case("run-no-port", "a serial port that does not exist", "run", "{w}/build", *_PORT,
         "--inputs", _X, phrase="cannot open serial port /dev/ttyNOPE-sparsemac"),
    case("run-report-corrupt", "build whose report.json is corrupt", "run",
         "{w}/b_corrupt_report", *_PORT, "--inputs", _X, phrase="report.json cannot be read"),
    case("run-report-list", "build whose report.json is not an object", "run",
         "{w}/b_list_report", *_PORT, "--inputs", _X,
         phrase="holds a JSON list, not a build report"),
    case("run-not-build", "a folder that is not a build folder", "run", "{w}/bad", *_PORT,
         "--inputs", _X, phrase="is not a build folder"),
    case("run-inputs-shape", "`--inputs` of the wrong shape", "run", "{w}/build", *_PORT,
         "--inputs", "{w}/bad/shape_3x63.npy", phrase="has shape [3, 63]"),
    case("run-baud", "`--baud 0`", "run", "{w}/build", *_PORT, "--inputs", _X, "--baud", "0",
         phrase="--baud: must be at least 300"),
    # flash
    case("flash-no-bitstream", "`--dry-run` on a build without a bitstream", "flash",
         "{w}/build", "--dry-run", phrase="holds no bitstream"),
    case("flash-not-build", "a folder that is not a build folder", "flash", "{w}/bad",
         "--dry-run", phrase="is not a build folder"),
    case("flash-report-corrupt", "corrupt report.json", "flash", "{w}/b_corrupt_report",
         "--dry-run", phrase="report.json cannot be read"),
    case("flash-bitstream-gone", "report naming a bitstream that was deleted", "flash",
         "{w}/b_gone_bitstream", "--dry-run", phrase="is gone; rebuild"),
    # prune
    case("prune-weight-bits", "`--weight-bits 1` (below 2)", "prune", _M, "--method", "l1",
         "--sparsity", "0.5", "--weight-bits", "1", phrase="--weight-bits: must be in 2..7"),
    case("prune-sparsity-high", "`--sparsity 1.5`", "prune", _M, "--method", "l1",
         "--sparsity", "1.5", phrase="--sparsity: must be in [0, 1)"),
    case("prune-sparsity-one", "`--sparsity 1` (nothing left)", "prune", _M, "--method", "l1",
         "--sparsity", "1", phrase="--sparsity: must be in [0, 1)"),
    case("prune-sparsity-negative", "`--sparsity -0.1`", "prune", _M, "--method", "l1",
         "--sparsity", "-0.1", phrase="--sparsity: must be in [0, 1)"),
    case("prune-sparsity-text", "`--sparsity lots`", "prune", _M, "--method", "l1",
         "--sparsity", "lots", phrase="must be a number in [0, 1) or 'auto'"),
    case("prune-method", "unknown `--method`", "prune", _M, "--method", "magic", "--sparsity",
         "0.5", phrase=("invalid choice: 'magic'", "'l1'")),
    case("prune-data-junk", "`--data` .npz that is not an archive", "prune", _M, *_P,
         "--data", "{w}/bad/junk.npz", phrase="is not a .npz archive"),
    case("prune-data-keys", "`--data` .npz without X and y", "prune", _M, *_P, "--data",
         "{w}/bad/no_keys.npz", phrase="lacks 'X' and 'y'"),
    case("prune-data-nan", "`--data` with NaN in X", "prune", _M, *_P, "--data",
         "{w}/bad/nan_x.npz", phrase="X contains NaN or Inf"),
    case("prune-data-labels-float", "`--data` with float labels", "prune", _M, *_P, "--data",
         "{w}/bad/float_y.npz", phrase="y is float32, not integer class labels"),
    case("prune-data-object", "`--data` with an object array (pickle)", "prune", _M, *_P,
         "--data", "{w}/bad/object.npz", phrase="Object arrays cannot be loaded"),
    case("prune-data-features", "`--data` whose X does not fit the model", "prune", _M, *_P,
         "--data", "{w}/bad/features.npz", phrase="does not accept the data's inputs"),
    case("prune-data-classes", "`--data` with more classes than outputs", "prune", _M, *_P,
         "--data", "{w}/bad/classes.npz", phrase="labels up to 50 but the model has only 10"),
    case("prune-data-npy", "`--data` a .npy instead of .npz", "prune", _M, *_P, "--data", _X,
         phrase="expected 'digits' or a .npz file"),
    case("prune-val-missing", "`--val` file that does not exist", "prune", _M, *_P, "--val",
         "{w}/nope.npz", phrase=("--val {w}/nope.npz: no such file", "numpy.savez")),
    case("prune-val-npy", "`--val` a .npy instead of .npz", "prune", _M, *_P, "--val", _X,
         phrase="--val {w}/x.npy: expected a .npz file"),
    case("prune-val-junk", "`--val` .npz that is not an archive", "prune", _M, *_P, "--val",
         "{w}/bad/junk.npz", phrase="--val {w}/bad/junk.npz is not a .npz archive"),
    case("prune-val-keys", "`--val` .npz without X and y", "prune", _M, *_P, "--val",
         "{w}/bad/no_keys.npz", phrase="--val {w}/bad/no_keys.npz lacks 'X' and 'y'"),
    case("prune-val-shape", "`--val` whose X and y lengths differ", "prune", _M, *_P, "--val",
         "{w}/bad/lengths.npz", phrase=("X has shape [20, 64] and y [5]", "same N")),
    case("prune-val-nan", "`--val` with NaN in X", "prune", _M, *_P, "--val",
         "{w}/bad/nan_x.npz", phrase="--val {w}/bad/nan_x.npz: X contains NaN or Inf"),
    case("prune-val-labels-float", "`--val` with float labels", "prune", _M, *_P, "--val",
         "{w}/bad/float_y.npz", phrase="y is float32, not integer class labels"),
    case("prune-val-labels-negative", "`--val` with negative labels", "prune", _M, *_P,
         "--val", "{w}/bad/negative_y.npz", phrase="negative labels (-1)"),
    case("prune-val-features", "`--val` with other features than the model takes", "prune",
         _M, *_P, "--val", "{w}/bad/features.npz",
         phrase=("--val {w}/bad/features.npz: its samples have shape [5] but the model takes "
                 "[64]", "same features")),
    case("prune-val-classes", "`--val` with more classes than outputs", "prune", _M, *_P,
         "--val", "{w}/bad/classes.npz",
         phrase="--val {w}/bad/classes.npz has labels up to 50 but the model has only 10"),
    case("prune-accuracy-drop", "pruned model that lost more than `--max-accuracy-drop` "
         "(default 3 points)", "prune", "{w}/trained.pt", "--method", "magnitude",
         "--sparsity", "0.97", "--epochs", "0", "--out", "{w}/collapsed.pt",
         phrase=("accuracy points on digits test split", "more than --max-accuracy-drop 3",
                 "nothing saved", "--force"), must_not_exist="{w}/collapsed.pt"),
    case("prune-nan-model", "model with NaN weights", "prune", "{w}/bad/nan.pt", *_P,
         phrase="holds NaN or Inf; fix or retrain the model before pruning"),
    case("prune-no-layers", "model with nothing to prune", "prune", "{w}/bad/relu_only.pt",
         *_P, phrase="has no prunable layers"),
    case("prune-foreign", "pickled model whose class needs foreign code", "prune",
         "{w}/bad/foreign.pt", *_P, phrase="--trust-pickle"),
    case("prune-out-suffix", "`--out` not ending in .pt", "prune", _M, *_P, "--out",
         "{w}/pruned.txt", phrase="give a .pt path"),
    case("prune-out-folder", "`--out` in a folder that does not exist", "prune", _M, *_P,
         "--out", "{w}/nowhere/p.pt", phrase="folder {w}/nowhere does not exist"),
    case("prune-epochs", "`--epochs -1`", "prune", _M, *_P, "--epochs", "-1",
         phrase="--epochs: must be at least 0"),
    # inspect
    case("inspect-text", "a file that is not a model", "inspect", "{w}/bad/text.pt",
         phrase="not a model file"),
    case("inspect-npy", "a .npy array instead of a model", "inspect", _X,
         phrase="not a model file"),
    case("inspect-tensor", ".pt holding a tensor", "inspect", "{w}/bad/tensor.pt",
         phrase="holds a Tensor, not a model"),
    case("inspect-foreign", "pickled model whose class needs foreign code", "inspect",
         "{w}/bad/foreign.pt", phrase="--trust-pickle"),
    case("inspect-reference", "`--reference` that is another model", "inspect", _M,
         "--reference", "{w}/bad/sigmoid.pt", "--png", "{w}/i.png",
         phrase="in the reference model; give the dense model"),
    case("inspect-png", "`--png` not ending in .png", "inspect", _M, "--png", "{w}/i.jpg",
         phrase="give a path ending in .png"),
]



def _foreign_model():
    import torch.nn as nn

    class Net(nn.Module):       # pickled by reference to this module's class
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            return self.fc(x)
    Net.__module__, Net.__qualname__ = __name__, "Net"
    globals()["Net"] = Net
    return Net()


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def make_workspace(w: Path) -> Path:
    """Every bad input of :data:`CASES` under ``w`` (and a good model, inputs and build)."""
    import torch
    import torch.nn as nn
    from models import torch_mlp

    from compiler.build import BuildConfig, build

    bad = w / "bad"
    bad.mkdir(parents=True)
    torch.save(torch_mlp([64, 16, 10]), w / "good.pt")
    np.save(w / "x.npy", np.zeros((3, 64), np.float32))
    # models
    (bad / "zero.pt").write_bytes(b"")
    data = (w / "good.pt").read_bytes()
    (bad / "truncated.pt").write_bytes(data[: len(data) // 3])
    (bad / "text.pt").write_text("not a model\n")
    torch.save(torch_mlp([64, 16, 10]).state_dict(), bad / "state_dict.pt")
    torch.save(torch.zeros(3), bad / "tensor.pt")
    torch.save({"epochs": 3, "lr": 0.1}, bad / "dict.pt")
    torch.save(_foreign_model(), bad / "foreign.pt")
    torch.save({"model": _Evil()}, bad / "evil.pt")
    nan = torch_mlp([64, 16, 10])
    inf = torch_mlp([64, 16, 10])
    with torch.no_grad():
        nan[0].weight[0, 0] = float("nan")
        inf[2].bias[1] = float("inf")
    torch.save(nan, bad / "nan.pt")
    torch.save(inf, bad / "inf_bias.pt")
    torch.save(nn.Sequential(nn.Linear(64, 8), nn.Sigmoid(), nn.Linear(8, 10)),
               bad / "sigmoid.pt")
    torch.save(nn.Sequential(nn.LSTM(64, 8)), bad / "lstm.pt")
    torch.save(nn.Sequential(nn.ReLU()), bad / "relu_only.pt")
    # arrays
    np.save(bad / "nan.npy", np.full((4, 64), np.nan, np.float32))
    inf_x = np.ones((4, 64), np.float32)
    inf_x[1, 2] = np.inf
    np.save(bad / "inf.npy", inf_x)
    np.save(bad / "empty.npy", np.zeros((0, 64), np.float32))
    np.save(bad / "strings.npy", np.array([["a"] * 64] * 3))
    np.save(bad / "complex.npy", np.ones((3, 64), np.complex64))
    np.save(bad / "bool.npy", np.ones((3, 64), bool))
    np.save(bad / "object.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    np.save(bad / "shape_10x5.npy", np.zeros((10, 5), np.float32))
    np.save(bad / "shape_3x63.npy", np.zeros((3, 63), np.float32))
    np.savez(bad / "data.npz", X=np.zeros((3, 64), np.float32))
    # --data archives
    y = np.zeros(20, np.int64)
    (bad / "junk.npz").write_bytes(b"junk, not a zip")
    np.savez(bad / "no_keys.npz", a=np.zeros(3))
    np.savez(bad / "nan_x.npz", X=np.full((20, 64), np.nan, np.float32), y=y)
    np.savez(bad / "float_y.npz", X=np.zeros((20, 64), np.float32), y=y.astype(np.float32))
    np.savez(bad / "object.npz", X=np.array([None] * 20, dtype=object), y=y)
    np.savez(bad / "features.npz", X=np.zeros((20, 5), np.float32), y=y)
    np.savez(bad / "classes.npz", X=np.zeros((20, 64), np.float32), y=y + 50)
    np.savez(bad / "lengths.npz", X=np.zeros((20, 64), np.float32), y=y[:5])
    np.savez(bad / "negative_y.npz", X=np.zeros((20, 64), np.float32), y=y - 1)
    from _prune_helpers import digits_mlp           # trained: pruning 97 % collapses it
    torch.save(digits_mlp(), w / "trained.pt")
    # a good build and its broken copies
    good = w / "build"
    build(BuildConfig(model=str(w / "good.pt"), board="arty_a7", pes=2, out=str(good),
                      bitstream=False))

    def broken(name):
        shutil.copytree(good, w / name)
        return w / name

    with np.load(good / "program.npz") as f:
        arrays = {k: f[k] for k in f.files}
    np.savez(broken("b_missing_key") / "program.npz",
             **{k: v for k, v in arrays.items() if k != "pe0.ptr"})
    header = json.loads(arrays["header"].tobytes())
    header["format"] = "sparsemac-program/2"
    np.savez(broken("b_old_format") / "program.npz",
             **{**arrays, "header": np.frombuffer(json.dumps(header).encode(), np.uint8)})
    (broken("b_junk_program") / "program.npz").write_bytes(b"PK\x03\x04 not really")
    (broken("b_corrupt_report") / "report.json").write_text('{"board": ')
    (broken("b_list_report") / "report.json").write_text("[]")
    (broken("b_no_config") / "build_config.json").unlink()
    report = json.loads((good / "report.json").read_text())
    report["bitstream"] = str(w / "deleted.bit")
    (broken("b_gone_bitstream") / "report.json").write_text(json.dumps(report))
    (w / "readonly").mkdir()
    (w / "readonly").chmod(0o500)
    return w


def argv_of(c: Case, w: Path) -> list[str]:
    return [str(a).replace("{w}", str(w)) for a in c.argv]


def run_case(c: Case, w: Path) -> tuple[int, str, str]:
    """``main(argv)`` in process, from inside ``w``: (exit status, stdout, stderr)."""
    import contextlib
    import io

    from compiler.cli import main

    out, err = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    os.chdir(w)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv_of(c, w))
            except SystemExit as e:         # argparse's errors exit
                code = e.code
    finally:
        os.chdir(cwd)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    w = make_workspace(tmp_path_factory.mktemp("bad_inputs"))
    yield w
    (w / "readonly").chmod(0o700)


def _params():
    for c in CASES:
        marks = [pytest.mark.skipif(ROOT_USER, reason="running as root, which may write into "
                                                      "any folder: no unwritable folder")] \
            if c.unwritable else []
        yield pytest.param(c, id=c.id, marks=marks)


def test_the_catalogue_is_distinct():
    assert len({c.id for c in CASES}) == len(CASES)
    assert len({(c.command, c.bad) for c in CASES}) == len(CASES)
    assert {c.command for c in CASES} == {"build", "simulate", "prune", "inspect", "run",
                                          "flash"}


@pytest.mark.parametrize("c", list(_params()))
def test_bad_input(c: Case, workspace):
    code, out, err = run_case(c, workspace)
    assert "Traceback" not in out + err, err
    assert code not in (0, None), (code, out, err)
    assert code == 2, f"exit {code} (2 is a user error, 3 an internal one): {err}"
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for phrase in c.phrases:
        phrase = phrase.replace("{w}", str(workspace))
        assert phrase in lines[0], f"{phrase!r} not in {lines[0]!r}"
    if c.must_not_exist:
        assert not Path(c.must_not_exist.replace("{w}", str(workspace))).exists()


# the docs ------------------------------------------------------------------------------------

def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table(w: Path) -> str:
    """docs/bad_inputs.md: every case's real message, paths relative to the workspace."""
    rows = [f"<!-- generated from tests/test_bad_inputs.py; regenerate with: {REGENERATE} -->",
            "# Bad inputs and the errors they give", "",
            f"Regenerate this file with `{REGENERATE}` (the test suite checks it is current).",
            "", "Each row is one case of the catalogue in `tests/test_bad_inputs.py`, run through "
            "`compiler.cli.main`: the command exits with status 2 and prints this one line on "
            "stderr, no traceback. Paths are relative to the folder the cases are made in "
            "(`good.pt` is a model that builds, `build/` a build folder, `bad/` the bad files).",
            "", "| command | bad input | the one-line error |", "| --- | --- | --- |"]
    for c in CASES:
        if c.unwritable and ROOT_USER:
            message = (f"(not run as root, who may write anywhere) error: … "
                       f"{' … '.join(c.phrases)} …")
        else:
            code, out, err = run_case(c, w)
            message = err.strip().replace(str(w) + os.sep, "").replace(str(w), ".")
        rows.append(f"| `{c.command}` | {_cell(c.bad)} | {_cell(message)} |")
    return "\n".join(rows) + "\n"


def _doc_rows() -> dict:
    rows = {}
    for line in DOC.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        if len(cells) == 3 and cells[0].startswith("`"):
            rows[(cells[0].strip("`"), cells[1].replace("\\|", "|"))] = cells[2]
    return rows


def test_the_docs_table_is_current():
    """Every case has its row in docs/bad_inputs.md, and the row's message holds its phrases
    (any other change to the table: regenerate it)."""
    rows = _doc_rows()
    assert len(rows) == len(CASES), f"docs/bad_inputs.md is stale: {REGENERATE}"
    for c in CASES:
        message = rows.get((c.command, c.bad))
        assert message is not None, f"no row for {c.id} in docs/bad_inputs.md: {REGENERATE}"
        for phrase in c.phrases:
            assert phrase.replace("{w}/", "") in message, \
                f"{c.id}: {phrase!r} not in the docs' {message!r}: {REGENERATE}"


if __name__ == "__main__":
    import tempfile

    if sys.argv[1:] != ["--table"]:
        sys.exit(f"usage: {REGENERATE}")
    sys.path.insert(0, str(Path(__file__).parent))
    with tempfile.TemporaryDirectory() as tmp:
        w = make_workspace(Path(tmp) / "w")
        try:
            sys.stdout.write(table(w))
        finally:
            (w / "readonly").chmod(0o700)
