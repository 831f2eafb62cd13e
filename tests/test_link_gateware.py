"""The accelerator behind its UART link (boards/link/gateware.py) in cocotb on Icarus, driven
by the host's own client (sim/uart_bench.py), bit-exact against the reference model."""

import numpy as np
import pytest

from boards.link import protocol as proto

SIM_PERIOD_NS = 10           # the accelerator's clock
SIM_LINK_PERIOD_NS = 16      # the link's clock: another frequency, so the FIFOs really cross
SIM_BAUD = 7_812_500         # 8 link cycles a bit: fast to simulate, same logic as 115200
SIM_TIMEOUT_CYCLES = 400


@pytest.fixture(scope="module")
def small_program():
    """A small sparse MLP on 2 PEs with inputs of both signs (a negative input once
    sign-extended into the link's weight flags and hung the board): uploaded weights and the
    flash boot move its whole image through the simulated UART or SPI flash, which for the
    digits example took minutes."""
    from compiler.build import compile_model
    from models import calibration, float_model
    x = calibration(24, seed=4)
    return compile_model(float_model((24, 16, 6), sparsity=0.7, seed=5), x, 2), x


@pytest.mark.slow
@pytest.mark.parametrize("simulator, weights", [("icarus", "bitstream"), ("icarus", "uploaded")])
def test_uart_link_cocotb(small_program, simulator, weights, tmp_path):
    """Good frames, corrupted CRC, dropped bytes, bad length/type, framing errors, garbage;
    with uploaded weights: the upload, its faults, then results."""
    from boards.top import LINK_TOPLEVEL, link_verilog
    from compiler import reference
    from hw.images import weight_image
    from hw.options import HardwareOptions
    from sim.runner import run_cocotb

    program, x = small_program
    xq = reference.quantize_input(x[:3], program.model.input_scale)
    expected = reference.run(program, xq).outputs
    clock_hz = int(1e9 / SIM_PERIOD_NS)
    options = HardwareOptions(weights=weights, pipeline="deep")
    verilog = link_verilog(program, tmp_path / "link.v", clock_hz=clock_hz, baud=SIM_BAUD,
                           link_hz=int(1e9 / SIM_LINK_PERIOD_NS),
                           timeout_cycles=SIM_TIMEOUT_CYCLES, options=options)
    uploaded = weights == "uploaded"
    info = proto.BoardInfo(program.model.in_features, program.model.out_features, program.pes,
                           proto.design_id(program), clock_hz,
                           proto.FLAG_UPLOADED if uploaded else 0)
    params = tmp_path / "uart_bench.npz"
    image = {"image": np.frombuffer(weight_image(program), np.uint8)} if uploaded else {}
    np.savez(params, inputs=np.asarray(xq, np.int64), expected=np.asarray(expected, np.int64),
             info=np.array(list(info.__dict__.values()), np.int64), baud=SIM_BAUD,
             period_ns=SIM_PERIOD_NS, link_period_ns=SIM_LINK_PERIOD_NS,
             timeout_cycles=SIM_TIMEOUT_CYCLES, **image)
    # uploaded: the upload's own case, and one good-frames case after an upload (the other
    # fault cases exercise the same frame logic as the bitstream design's)
    env = {"SPARSEMAC_UART_BENCH": str(params)}
    if uploaded:
        env["COCOTB_TEST_FILTER"] = r"\.(uploaded_weights|good_frames)$"
    else:
        env["COCOTB_TEST_FILTER"] = r"\.(?!uploaded_weights$|flash_boot)\w+$"
    results = run_cocotb(verilog=verilog, toplevel=LINK_TOPLEVEL, simulator=simulator,
                         build_dir=tmp_path / f"sim_{simulator}", test_module="sim.uart_bench",
                         extra_env=env)
    ran = results.read_text()
    assert ("uploaded_weights" in ran) == uploaded


@pytest.mark.slow
def test_uart_link_flash_boot_cocotb(small_program, tmp_path):
    """Weights from a SPI flash model at reset (--boot-from-flash): results bit-exact with no
    LOAD sent; a corrupt image flagged and refused, its flag cleared by a LOAD at offset 0; an
    erased flash reported as no image."""
    from boards.link.flashimage import flash_image
    from boards.top import LINK_TOPLEVEL, link_verilog
    from compiler import reference
    from hw.images import geometry, weight_image
    from hw.options import HardwareOptions
    from sim.runner import run_cocotb

    program, x = small_program
    xq = reference.quantize_input(x[:3], program.model.input_scale)
    expected = reference.run(program, xq).outputs
    clock_hz = int(1e9 / SIM_PERIOD_NS)
    options = HardwareOptions(weights="uploaded", pipeline="deep", flash_boot=True)
    offset = 0x1000                 # small: the model's flash is a bytearray this long
    verilog = link_verilog(program, tmp_path / "link.v", clock_hz=clock_hz, baud=SIM_BAUD,
                           link_hz=int(1e9 / SIM_LINK_PERIOD_NS),
                           timeout_cycles=SIM_TIMEOUT_CYCLES, options=options,
                           flash_offset=offset)
    image = weight_image(program, geometry(program, options))
    info = proto.BoardInfo(program.model.in_features, program.model.out_features, program.pes,
                           proto.design_id(program), clock_hz, proto.FLAG_UPLOADED)
    params = tmp_path / "uart_bench.npz"
    np.savez(params, inputs=np.asarray(xq, np.int64), expected=np.asarray(expected, np.int64),
             info=np.array(list(info.__dict__.values()), np.int64), baud=SIM_BAUD,
             period_ns=SIM_PERIOD_NS, link_period_ns=SIM_LINK_PERIOD_NS,
             timeout_cycles=SIM_TIMEOUT_CYCLES, image=np.frombuffer(image, np.uint8),
             flash=np.frombuffer(flash_image(image, proto.design_id(program)), np.uint8),
             flash_offset=offset)
    env = {"SPARSEMAC_UART_BENCH": str(params),
           "COCOTB_TEST_FILTER": r"\.(flash_boot|flash_boot_corrupt|flash_boot_erased)$"}
    results = run_cocotb(verilog=verilog, toplevel=LINK_TOPLEVEL, simulator="icarus",
                         build_dir=tmp_path / "sim_icarus", test_module="sim.uart_bench",
                         extra_env=env)
    ran = results.read_text()
    for name in ("flash_boot", "flash_boot_corrupt", "flash_boot_erased"):
        assert name in ran
