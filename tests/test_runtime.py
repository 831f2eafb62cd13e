"""The host runtime against a simulated board: a fake serial port that answers with the
reference model, with faults injected; and the same through a real pty with pyserial."""

import dataclasses
import os
import threading

import numpy as np
import pytest

from boards.link import protocol as proto
from compiler import reference
from core.errors import InputError
from boards.link.client import LinkError
from boards.link.host import BoardLink
from compiler.runtime import run

EXAMPLE = "examples/digits_mlp.pt"


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory):
    from compiler.build import BuildConfig, build
    out = tmp_path_factory.mktemp("rt") / "b"
    build(BuildConfig(model=EXAMPLE, board="ulx3s", pes=2, pipeline="short",
                      out=str(out), bitstream=False))
    return out


@pytest.fixture(scope="module")
def program(build_dir):
    from compiler.serialize import load_program
    return load_program(build_dir / "program.npz")


class FakeBoard:
    """What the gateware does, in Python: parse requests, answer with the reference model.
    ``faults`` is a list consumed one per reply: None (good), "corrupt", "drop", "stale",
    "error", "truncate". ``uploaded``: the design takes its weights in LOAD frames, as
    boards/link/gateware.py does (an ERROR to a LOAD spoils the image); ``loaded``: it holds them."""

    def __init__(self, program, faults=(), design_id=None, uploaded=False, loaded=False):
        from hw.images import weight_image

        self.program = program
        self.uploaded, self.loaded, self.spoiled = uploaded, loaded, False
        self.expected_image = weight_image(program)
        self.image = bytearray(self.expected_image if loaded else b"")
        self.faults = list(faults)
        self.decoder = proto.FrameDecoder(proto.SYNC_REQUEST)
        self.outbox = bytearray()
        self.info = proto.BoardInfo(program.model.in_features, program.model.out_features,
                                    program.pes, design_id if design_id is not None
                                    else proto.design_id(program), 60_000_000)
        self.requests = 0

    def flags(self):
        return (proto.FLAG_UPLOADED if self.uploaded else 0) | \
            (proto.FLAG_LOADED if self.loaded else 0)

    def _error(self, seq, code):
        return proto.encode_frame(proto.SYNC_REPLY, proto.ERROR, seq, bytes([code]))

    def reply_to(self, frame):
        if frame.kind == proto.INFO:
            info = dataclasses.replace(self.info, flags=self.flags())
            return proto.encode_frame(proto.SYNC_REPLY, proto.INFO_REPLY, frame.seq,
                                      proto.info_payload(info))
        if frame.kind == proto.LOAD:
            offset = int.from_bytes(frame.payload[:4], "little")
            if offset == 0:
                self.image, self.spoiled, self.loaded = bytearray(), False, False
            elif offset != len(self.image) or self.spoiled:
                return self._error(frame.seq, proto.ERR_ORDER)
            self.image += frame.payload[4:]
            self.loaded = len(self.image) == len(self.expected_image) and not self.spoiled
            return proto.encode_frame(proto.SYNC_REPLY, proto.LOADED, frame.seq,
                                      proto.loaded_payload(len(self.image), self.flags()))
        if self.uploaded and not self.loaded:
            return self._error(frame.seq, proto.ERR_NOT_LOADED)
        x = np.array([b - 256 if b > 127 else b for b in frame.payload])[None]
        out = reference.run(self.program, x)
        if self.uploaded and bytes(self.image) != self.expected_image:
            out.outputs[:] += 1               # wrong weights compute something else
        return proto.encode_frame(proto.SYNC_REPLY, proto.RESULT, frame.seq,
                                  proto.result_payload(out.outputs[0], out.ideal_cycles[0] + 7))

    # the serial-port interface BoardLink uses
    def write(self, data):
        for frame in self.decoder.feed(bytes(data)):
            self.requests += 1
            reply = bytearray(self.reply_to(frame))
            fault = self.faults.pop(0) if self.faults else None
            if fault == "corrupt":
                reply[7] ^= 0x04
            elif fault == "drop":
                continue
            elif fault == "truncate":
                reply = reply[:-3]
            elif fault == "error":
                reply = bytearray(self._error(frame.seq, proto.ERR_CRC))
                if frame.kind == proto.LOAD:       # the chunk's bytes went in, unchecked
                    self.spoiled, self.loaded = True, False
            elif fault == "stale":     # a late reply to an earlier request comes first
                stale = proto.encode_frame(proto.SYNC_REPLY, proto.RESULT, (frame.seq - 1) % 256,
                                           b"\x7f" * (len(reply) - 7))
                reply = bytearray(stale) + reply
            self.outbox += reply

    def read(self, n):
        data, self.outbox[:n] = bytes(self.outbox[:n]), b""
        return data

    def reset_input_buffer(self):
        self.outbox.clear()


def _inputs(n=5):
    return np.load("examples/digits_test_x.npy")[:n]


def _link(board, **kw):
    return BoardLink(board, baud=1_000_000, board_timeout_s=0.001, reply_slack_s=0.02, **kw)


def test_run_bit_exact(build_dir, program):
    board = FakeBoard(program)
    result = run(build_dir, inputs=_inputs(), link=_link(board))
    assert result.mismatches == 0 and result.retries == 0
    assert np.array_equal(result.hw, result.reference)
    assert (result.cycles > 0).all() and result.outputs_path.is_file()


@pytest.mark.parametrize("fault", ["corrupt", "drop", "truncate", "error", "stale"])
def test_faults_are_retried_never_believed(build_dir, program, fault):
    board = FakeBoard(program, faults=[None, fault, None, fault])
    result = run(build_dir, inputs=_inputs(3), link=_link(board))
    assert result.mismatches == 0
    assert result.retries == (0 if fault == "stale" else 2)


def test_gives_up_with_a_clear_error(program):
    board = FakeBoard(program, faults=["drop"] * 10)
    link = _link(board, retries=2)
    with pytest.raises(LinkError, match="no good reply after 3 tries .*no reply"):
        link.get_info()


def test_refuses_another_design(build_dir, program):
    board = FakeBoard(program, design_id=0x12345678)
    with pytest.raises(InputError, match="runs another design"):
        run(build_dir, inputs=_inputs(1), link=_link(board))


def test_through_a_pty_with_pyserial(build_dir, program, tmp_path):
    """The same over a real serial device: the board emulated behind a pseudo-terminal."""
    import tty

    serial = pytest.importorskip("serial")
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    board = FakeBoard(program, faults=[None, "corrupt"])
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            import select
            ready, _, _ = select.select([master], [], [], 0.05)
            if ready:
                board.write(os.read(master, 4096))
                if board.outbox:
                    os.write(master, bytes(board.outbox))
                    board.outbox.clear()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        port = serial.Serial(os.ttyname(slave), baudrate=115200, timeout=0.02)
        link = BoardLink(port, baud=115200, board_timeout_s=0.005)
        result = run(build_dir, inputs=_inputs(3), link=link,
                     outputs=tmp_path / "out.npz")
        assert result.mismatches == 0 and result.retries == 1
        with np.load(tmp_path / "out.npz") as f:
            assert np.array_equal(f["hw"], f["reference"])
    finally:
        stop.set()
        thread.join()
        os.close(master)
        os.close(slave)


def test_cli_run_needs_a_port(build_dir, capsys):
    from compiler.cli import main
    assert main(["run", str(build_dir), "--port", "/dev/nonexistent-tty",
                 "--inputs", "examples/digits_test_x.npy"]) == 2
    assert "cannot open serial port /dev/nonexistent-tty" in capsys.readouterr().err


def test_uploads_the_weights_when_the_board_lacks_them(build_dir, program):
    from hw.images import weight_image

    board = FakeBoard(program, uploaded=True)
    result = run(build_dir, inputs=_inputs(3), link=_link(board))
    assert result.uploaded_bytes == len(weight_image(program)) == len(board.image)
    assert bytes(board.image) == weight_image(program)
    assert result.mismatches == 0 and np.array_equal(result.hw, result.reference)
    # a board that holds them gets none, unless asked
    board = FakeBoard(program, uploaded=True, loaded=True)
    assert run(build_dir, inputs=_inputs(1), link=_link(board)).uploaded_bytes == 0
    result = run(build_dir, inputs=_inputs(1), link=_link(board), reload=True)
    assert result.uploaded_bytes == len(board.image)


@pytest.mark.parametrize("fault", ["error", "corrupt", "drop"])
def test_a_failed_chunk_restarts_the_upload(build_dir, program, fault):
    from hw.images import weight_image

    board = FakeBoard(program, uploaded=True, faults=[None, None, fault])
    link = _link(board)
    result = run(build_dir, inputs=_inputs(2), link=link)
    chunks = -(-len(weight_image(program)) // 1024)
    assert chunks >= 2
    assert result.retries == 1 and result.mismatches == 0
    assert result.uploaded_bytes > len(board.image)      # the first chunks went twice
    assert bytes(board.image) == weight_image(program)


def test_upload_gives_up_with_a_clear_error(build_dir, program):
    board = FakeBoard(program, uploaded=True, faults=[None] + ["error"] * 10)
    with pytest.raises(LinkError, match="weight upload failed 3 times"):
        run(build_dir, inputs=_inputs(1), link=_link(board, retries=2))
