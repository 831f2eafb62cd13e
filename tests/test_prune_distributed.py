"""Several processes (``torchrun``, Gloo on the CPU) give the same pruned model as one."""

import os
import subprocess
import sys

import pytest
import torch

from _prune_helpers import blobs, digits_mlp, mlp, train
from compiler.frontend import load_module
from compiler.prune import PruneConfig, prune_model
from compiler.prune.distributed import resolve_device, torchrun_env


def _env():
    env = dict(os.environ)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    env["OMP_NUM_THREADS"] = "1"
    return env


def _prune(argv, procs: int):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={procs}"] if procs > 1 else [sys.executable]
    proc = subprocess.run([*launcher, "-m", "compiler", "prune", *map(str, argv)],
                          capture_output=True, text=True, timeout=300, env=_env())
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow
@pytest.mark.parametrize("method", ["gradual", "l0", "structured"])
def test_two_gloo_processes_give_the_one_process_result(method, tmp_path):
    model = tmp_path / "dense.pt"
    torch.save(digits_mlp(), model)
    # --force: 4 epochs at 80 % may lose more than 3 points; the point is bit-identity
    common = [model, "--method", method, "--sparsity", "0.8", "--epochs", "4", "--seed", "5",
              "--device", "cpu", "--force"]
    one = _prune([*common, "--out", tmp_path / "one.pt"], 1)
    two = _prune([*common, "--out", tmp_path / "two.pt"], 2)
    a, b = load_module(tmp_path / "one.pt").state_dict(), \
        load_module(tmp_path / "two.pt").state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k               # bit-identical, not just close
    assert "2 processes" in two.stdout and "2 processes" not in one.stdout
    assert two.stdout.count("saved ") == 1              # only rank 0 prints and writes


def test_torchrun_variables_are_read_and_checked():
    from core.errors import InputError
    assert torchrun_env({}) is None
    assert torchrun_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}) == (1, 2, 1)
    with pytest.raises(InputError, match="inconsistent"):
        torchrun_env({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    with pytest.raises(InputError, match="whole numbers"):
        torchrun_env({"RANK": "x", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    assert resolve_device("cpu").type == "cpu"
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("method", ["gradual", "l0", "structured"])
def test_pruning_runs_on_cuda(method):
    data = blobs()
    result = prune_model(train(mlp(), data), PruneConfig(method=method, sparsity=0.7, epochs=10,
                                                         device="cuda", batch_size=32),
                         data=data)
    assert result.device.startswith("cuda")
    assert result.sparsity.total.parameter == pytest.approx(0.7, abs=0.05)
    assert next(result.model.parameters()).device.type == "cpu"   # saved models live on CPU
