"""The UART link: protocol helpers in Python, the gateware in cocotb (Icarus, and Verilator
when asked), against the reference model."""

import numpy as np
import pytest

from boards.link import protocol as proto

SIM_PERIOD_NS = 10           # the accelerator's clock
SIM_LINK_PERIOD_NS = 16      # the link's clock: another frequency, so the FIFOs really cross
SIM_BAUD = 7_812_500         # 8 link cycles a bit: fast to simulate, same logic as 115200
SIM_TIMEOUT_CYCLES = 400


def test_crc_matches_amaranth_catalog():
    from amaranth.lib.crc import catalog
    data = b"123456789"
    assert proto.crc16(data) == 0x29B1 == catalog.CRC16_IBM_3740(data_width=8).compute(data)


def test_frame_round_trip_and_residue():
    frame = proto.encode_frame(proto.SYNC_REQUEST, proto.INFER, 9, bytes(range(64)))
    assert proto.crc16(frame[1:]) == 0          # what the receiver checks
    dec = proto.FrameDecoder(proto.SYNC_REQUEST)
    assert dec.feed(b"\x00\x01" + frame[:10]) == []
    (f,) = dec.feed(frame[10:])
    assert (f.kind, f.seq, f.payload) == (proto.INFER, 9, bytes(range(64)))
    assert dec.skipped == 2 and dec.pending == 0


def test_decoder_drops_corrupt_frames_and_resyncs():
    good = proto.encode_frame(proto.SYNC_REPLY, proto.RESULT, 1, b"\x05" * 14)
    bad = bytearray(good)
    bad[7] ^= 0x01
    dec = proto.FrameDecoder(proto.SYNC_REPLY, max_length=18)
    frames = dec.feed(bytes(bad) + good)
    assert [fr.seq for fr in frames] == [1] and dec.bad_crc == 1
    # a lost length byte: that frame is gone (its length is out of range), the next decodes
    frames = dec.feed(good[:4] + good[5:] + good)
    assert len(frames) == 1


def test_result_and_info_payloads():
    payload = proto.result_payload([-128, -1, 0, 127], 123456)
    assert proto.parse_result(payload, 4) == ([-128, -1, 0, 127], 123456)
    info = proto.BoardInfo(784, 10, 8, 0xDEADBEEF, 60_000_000)
    assert proto.parse_info(proto.info_payload(info)) == info
    with pytest.raises(ValueError):
        proto.parse_result(payload, 5)


def test_uart_divisor():
    from boards.link.uart import uart_divisor
    assert uart_divisor(60e6, 115200) == 521
    assert uart_divisor(100e6, 12_500_000) == 8
    with pytest.raises(ValueError, match="too fast"):
        uart_divisor(12e6, 6_000_000)
    with pytest.raises(ValueError, match="off"):
        uart_divisor(10e6, 1_200_000)       # 8.33 cycles a bit: 4 % off


def test_uart_loopback_amaranth():
    """Transmitter into receiver, in Amaranth's simulator: every byte arrives intact."""
    from amaranth.hdl import Module
    from amaranth.sim import Simulator

    from boards.link.uart import UARTRx, UARTTx

    m = Module()
    m.submodules.tx = tx = UARTTx(6)
    m.submodules.rx = rx = UARTRx(6)
    m.d.comb += rx.rx.eq(tx.tx)
    sent = [0x00, 0xFF, 0xA5, 0x5A, 0x81]
    got = []

    async def bench(ctx):
        for byte in sent:
            ctx.set(tx.data.payload, byte)
            ctx.set(tx.data.valid, 1)
            await ctx.tick().until(tx.data.ready)
            await ctx.tick()
            ctx.set(tx.data.valid, 0)
        for _ in range(6 * 12 * 2):
            await ctx.tick()

    async def monitor(ctx):
        async for _, _, valid, data, err in ctx.tick().sample(rx.data.valid, rx.data.payload,
                                                              rx.framing_error):
            assert not err
            if valid:
                got.append(data)

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.add_process(monitor)
    sim.run()
    assert got == sent


@pytest.fixture(scope="module")
def digits_program():
    from compiler.build import compile_model
    from compiler.datasets import digits_split
    from compiler.frontend import load_model
    x = digits_split()[0]
    return compile_model(load_model("examples/digits_mlp.pt"), x, 2), x


@pytest.mark.slow
@pytest.mark.parametrize("simulator, weights", [("icarus", "bitstream"), ("icarus", "uploaded")])
def test_uart_link_cocotb(digits_program, simulator, weights, tmp_path):
    """Good frames, corrupted CRC, dropped bytes, bad length/type, framing errors, garbage;
    with uploaded weights: the upload, its faults, then results."""
    from boards.top import LINK_TOPLEVEL, link_verilog
    from compiler import reference
    from hw.images import weight_image
    from hw.options import HardwareOptions
    from sim.runner import run_cocotb

    program, x = digits_program
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
        env["COCOTB_TEST_FILTER"] = r"\.(?!uploaded_weights$)\w+$"
    results = run_cocotb(verilog=verilog, toplevel=LINK_TOPLEVEL, simulator=simulator,
                         build_dir=tmp_path / f"sim_{simulator}", test_module="sim.uart_bench",
                         extra_env=env)
    ran = results.read_text()
    assert ("uploaded_weights" in ran) == uploaded
