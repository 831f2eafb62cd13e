# amaranth: UnusedElaboratable=no
"""Weight sharing: ``prune --weight-bits`` (k-means codebooks, fine-tuned centroids), the
build's codebook entries (``--weight-bits auto/off/B``), the reference's decode, the hardware's
codebook ROM (Amaranth simulator and one cocotb run), and the storage report."""

import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from _prune_helpers import digits_mlp, run_main
from models import assert_accelerator_exact, calibration, float_model, share_weights

from compiler import reference
from compiler.build import compile_model
from compiler.frontend import load_module
from compiler.passes.codebook import apply_codebook, layer_values
from compiler.prune.sharing import kmeans_1d, snap_centroids
from compiler.serialize import load_program, save_program
from core.errors import InputError
from core.ir import IRError, PEImage
from hw.images import entry_bytes, entry_layout, geometry, weight_image
from hw.options import HardwareOptions
from hw.simulation import run_accelerator


@pytest.fixture(scope="module")
def dense_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "dense.pt"
    torch.save(digits_mlp(), path)
    return path


def _distinct_nonzero(module):
    return [int(torch.unique(m.weight[m.weight != 0]).numel())
            for m in module.modules() if isinstance(m, nn.Linear)]


@pytest.mark.parametrize("epochs", [1, 2])
def test_prune_weight_bits_leaves_few_values_and_the_exact_sparsity(dense_file, tmp_path,
                                                                     capsys, epochs):
    out = tmp_path / "shared.pt"
    code, stdout, err = run_main(capsys, "prune", dense_file, "--method", "magnitude",
                                 "--sparsity", "0.8", "--epochs", epochs, "--weight-bits", "3",
                                 "--out", out, "--force")
    assert code == 0, err
    assert "weight sharing: 3-bit codebooks" in stdout
    module = load_module(out)
    assert all(1 <= n <= 7 for n in _distinct_nonzero(module))   # 2**3 - 1 and the zero
    weights = [m.weight for m in module.modules() if isinstance(m, nn.Linear)]
    zeros = sum(int((w == 0).sum()) for w in weights)
    assert zeros == round(0.8 * sum(w.numel() for w in weights))


def test_kmeans_and_snapping():
    values = torch.tensor([-1.0, -0.9, -0.2, 0.1, 0.15, 0.8, 1.0, 1.1])
    centroids, assign = kmeans_1d(values, 4)
    assert len(centroids) <= 4 and assign.min() >= 0 and assign.max() < len(centroids)
    snapped = snap_centroids(torch.tensor([-0.5, 1e-6, 0.3, 1.27]))
    steps = snapped.double() / (1.27 / 127)
    assert torch.allclose(steps, torch.round(steps), atol=1e-4)
    assert (snapped != 0).all()                           # never a new zero


def _shared_file(path, values, seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for layer in (net[0], net[2]):
            levels = torch.tensor(np.linspace(-1, 1, values) * 0.3, dtype=torch.float32)
            pick = torch.from_numpy(rng.integers(0, values, layer.weight.shape))
            keep = torch.from_numpy(rng.random(layer.weight.shape) < 0.3)
            layer.weight.copy_(torch.where(keep, levels[pick], torch.zeros(())))
    torch.save(net, path)
    return path


def test_build_detects_the_codebook_and_the_entry_shrinks(tmp_path, capsys):
    model = _shared_file(tmp_path / "m.pt", 15)
    runs = {}
    for bits in ("auto", "off"):
        out = tmp_path / bits
        code, stdout, err = run_main(capsys, "build", model, "--board", "arty_a7", "--pes", "2",
                                     "--no-bitstream", "--weight-bits", bits, "--out", out)
        assert code == 0, err
        runs[bits] = json.loads((out / "report.json").read_text()), load_program(
            out / "program.npz")
    (auto, shared), (off, plain) = runs["auto"], runs["off"]
    assert auto["weight_bits"] == 4 and shared.weight_bits == 4
    assert off["weight_bits"] == 8 and plain.codebooks is None
    assert all(len(t) == 16 for t in shared.codebooks)
    assert entry_layout(geometry(shared)).size == entry_layout(geometry(plain)).size - 4
    for report in (auto, off):
        parts = report["storage"]["parts"]
        assert set(parts) == {"values", "indices", "pointers", "codebooks", "row_parameters"}
        assert report["storage"]["total"] == sum(parts.values())
        assert report["bits_per_nonzero"] == report["storage"]["bits_per_nonzero"]
    assert off["storage"]["parts"]["codebooks"] == 0 < auto["storage"]["parts"]["codebooks"]
    assert auto["storage"]["total"] < off["storage"]["total"]
    assert "## Storage" in (tmp_path / "auto" / "report.md").read_text()


def test_forced_bits_name_the_layer_with_too_many_values(tmp_path, capsys):
    model = _shared_file(tmp_path / "m.pt", 12)
    code, _, err = run_main(capsys, "build", model, "--board", "arty_a7", "--pes", "2",
                            "--no-bitstream", "--weight-bits", "3", "--out", tmp_path / "b")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --weight-bits 3: layer '0' has 12 ")
    code, _, err = run_main(capsys, "build", model, "--board", "arty_a7", "--weight-bits", "9",
                            "--out", tmp_path / "c")
    assert code == 2 and "--weight-bits" in err and "Traceback" not in err


def _program(shapes, values, pes, bits="auto", seed=0, **kwargs):
    model = share_weights(float_model(shapes, sparsity=0.6, seed=seed), values, seed=seed)
    return compile_model(model, calibration(shapes[0]), pes, weight_bits=bits, **kwargs)


def test_the_reference_decodes_codes_and_the_program_round_trips(tmp_path):
    program = _program([20, 16, 6], 5, 3, bits=3, index_bits=1)     # padding: 0 in the table
    assert program.weight_bits == 3
    assert any(0 in v for v in layer_values(program))
    x = reference.quantize_input(calibration(20, n=8, seed=2), program.model.input_scale)
    assert np.array_equal(reference.run(program, x).outputs,
                          reference.run_dense(program.model, x))
    save_program(program, tmp_path / "p.npz")
    again = load_program(tmp_path / "p.npz")
    assert np.array_equal(reference.run(again, x).outputs, reference.run(program, x).outputs)
    # a code that decodes to another weight breaks the contract
    pe = program.pe_images[0]
    bad = PEImage(entry_value=pe.entry_value, entry_index=pe.entry_index, ptr=pe.ptr,
                  entry_code=(pe.entry_code + 1) % 8)
    with pytest.raises(IRError, match="decode"):
        type(program)(**{**program.__dict__, "pe_images": (bad, *program.pe_images[1:])}).verify()
    assert apply_codebook(program, "off") is program
    with pytest.raises(InputError, match="layer 'fc0'"):
        apply_codebook(_program([20, 16, 6], 5, 3, bits="off"), 2)


@pytest.mark.parametrize("pes, memory, pipeline, accumulators, pointers", [
    (1, "block", "deep", "block", "counted"),
    (3, "distributed", "short", "distributed", "csc"),
    (3, "block", "short", "block", "csc"),
    (5, "distributed", "deep", "distributed", "counted"),
])
def test_codebook_weights_are_bit_exact_in_the_amaranth_simulator(pes, memory, pipeline,
                                                                  accumulators, pointers):
    shapes = [12, 9, 8, 5]
    program = _program(shapes, 6, pes, bits=3, seed=pes)
    assert program.codebooks is not None
    x = reference.quantize_input(calibration(shapes[0], n=4, seed=8), program.model.input_scale)
    x = np.vstack([x, np.full(shapes[0], 127), np.full(shapes[0], -128)])
    options = HardwareOptions(memory=memory, pipeline=pipeline, banks=2,
                              accumulators=accumulators, pointers=pointers)
    assert_accelerator_exact(program, x, options, ready_probability=0.5, valid_probability=0.7)


def test_uploaded_codebook_entries_follow_the_entry_width():
    shapes = [12, 9, 5]
    program = _program(shapes, 3, 2, bits=2, index_bits=6)
    options = HardwareOptions(pipeline="deep", weights="uploaded")
    geo = geometry(program, options)
    assert entry_layout(geo).size == 8 and entry_bytes(geo) == 1      # 2 + 6 bits: one byte
    assert len(weight_image(program, geo)) == sum(geo.entry_depth)
    x = reference.quantize_input(calibration(shapes[0], n=3, seed=4), program.model.input_scale)
    hw, _, _ = run_accelerator(program, x, options, valid_probability=0.6)
    assert np.array_equal(hw, reference.run(program, x).outputs)


@pytest.mark.slow
def test_codebook_rtl_is_bit_exact_in_cocotb(tmp_path):
    from compiler.simulate import run_rtl
    from hw.verilog import generate_verilog
    from test_cocotb import adversarial_inputs

    shapes = [21, 16, 9]
    program = _program(shapes, 7, 3, bits=3, seed=7)
    verilog = generate_verilog(program, tmp_path / "top.v",
                               HardwareOptions(pipeline="deep", accumulators="block",
                                               pointers="counted"))
    x = adversarial_inputs(shapes[0], 6, seed=7)
    expected = reference.run(program, x)
    hw, cycles, _ = run_rtl(verilog, x, expected.outputs, lanes=program.grid.cols,
                            simulator="icarus", work_dir=tmp_path / "icarus")
    assert np.array_equal(hw, expected.outputs)
    assert (cycles >= expected.ideal_cycles).all()
