"""Host side of a board running a sparsemac bitstream: send inputs over the UART, get outputs and
cycle counts back (``python -m compiler run DIR --port /dev/ttyUSB1 --inputs X.npy``).

:class:`BoardLink` speaks :mod:`boards.link.protocol` over any object with pyserial's ``read``,
``write`` and ``reset_input_buffer`` (a :class:`serial.Serial`, or a fake in the tests). A reply
counts only if its CRC checks, its type is right and its sequence number is the request's;
anything else is thrown away and the request retried, so a corrupted or lost byte costs time,
never a wrong answer.

A bitstream built with uploaded weights (iCE40 SPRAM) starts without them: :func:`run` uploads
the build's weight image (:func:`hw.images.weight_image`) in LOAD chunks when the board says it
does not hold it, starting over from the first chunk after any error.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from boards.link import protocol as proto

from core.errors import InputError, SparsemacError, ToolError

__all__ = ["BoardLink", "LinkError", "RunResult", "open_port", "run"]


class LinkError(SparsemacError):
    """The board did not answer correctly after every retry."""


@dataclass
class RunResult:
    hw: np.ndarray            # int [N, out]: what the board computed
    reference: np.ndarray     # int [N, out]
    dequantized: np.ndarray   # float [N, out]
    cycles: np.ndarray        # int [N]: compute cycles on the board
    mismatches: int           # inferences whose outputs differ from the reference
    retries: int              # requests sent again after an error or a lost reply
    seconds: float
    outputs_path: Path | None
    info: proto.BoardInfo
    uploaded_bytes: int = 0   # weight image bytes sent (0: none needed)
    upload_seconds: float = 0.0


class BoardLink:
    """Requests and replies over one serial port.

    Parameters
    ----------
    port : serial-like
        ``read(n)`` (returns what arrived within its timeout), ``write(data)``, and
        optionally ``reset_input_buffer()``.
    baud : int
        The line rate, to size the reply deadlines.
    retries : int
        Extra tries per request after an error, a bad or a missing reply.
    board_timeout_s : float
        The board's inter-byte timeout (its quiet period after an error is the same).
    """

    def __init__(self, port, *, baud: int = 115200, retries: int = 3,
                 board_timeout_s: float = 0.02, reply_slack_s: float = 0.25):
        self.port, self.baud, self.retries = port, baud, retries
        self.board_timeout_s, self.reply_slack_s = board_timeout_s, reply_slack_s
        self._seq = 0
        self.retried = 0
        self.info: proto.BoardInfo | None = None

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) % 256
        return self._seq

    def _byte_s(self) -> float:
        return 10.0 / self.baud

    def request(self, kind: int, payload: bytes, expect: int, reply_bytes: int, *,
                retry: bool = True) -> bytes:
        """Send one request until a good ``expect`` reply with its seq arrives; its payload.
        ``retry=False``: one try only."""
        failures = []
        for attempt in range(self.retries + 1 if retry else 1):
            if attempt:
                self.retried += 1
                time.sleep(2 * self.board_timeout_s)      # the board drains after an error
            if hasattr(self.port, "reset_input_buffer"):
                self.port.reset_input_buffer()
            seq = self._next_seq()
            frame = proto.encode_frame(proto.SYNC_REQUEST, kind, seq, payload)
            self.port.write(frame)
            deadline = (time.monotonic() + (len(frame) + reply_bytes + 8) * self._byte_s()
                        + self.board_timeout_s + self.reply_slack_s)
            decoder = proto.FrameDecoder(proto.SYNC_REPLY,
                                         max_length=max(reply_bytes, proto.INFO_BYTES))
            outcome = self._await_reply(decoder, seq, expect, deadline)
            if isinstance(outcome, bytes):
                return outcome
            failures.append(outcome)
        raise LinkError(f"no good reply after {len(failures)} tries ({'; '.join(failures)}); "
                        f"check the port, the baud rate and that the board runs this build "
                        f"(`python -m compiler flash DIR`)")

    def _await_reply(self, decoder, seq, expect, deadline):
        while time.monotonic() < deadline:
            data = self.port.read(max(1, decoder.max_length + proto.HEADER_BYTES + 2))
            for frame in decoder.feed(data or b""):
                if frame.seq != seq:
                    continue                      # a late reply to an earlier request
                if frame.kind == proto.ERROR:
                    code = frame.payload[0] if frame.payload else 0
                    return f"board error: {proto.ERRORS.get(code, f'code {code}')}"
                if frame.kind != expect:
                    return f"unexpected reply type 0x{frame.kind:02x}"
                return frame.payload
        if decoder.bad_crc:
            return "reply with a bad CRC"
        return "no reply" if not decoder.pending else "reply cut short"

    def get_info(self) -> proto.BoardInfo:
        self.info = proto.parse_info(self.request(proto.INFO, b"", proto.INFO_REPLY,
                                                  proto.INFO_BYTES + 7))
        return self.info

    def upload(self, image: bytes, *, chunk: int = 1024) -> int:
        """Upload a weight image in LOAD chunks; after any error (a chunk is written as it
        arrives, so the board cannot take it again) start over from offset 0, up to
        ``retries`` more times. Returns the bytes sent."""
        if not image:
            raise ValueError("an empty weight image")
        sent, failures = 0, []
        for attempt in range(self.retries + 1):
            if attempt:
                self.retried += 1
                time.sleep(2 * self.board_timeout_s)
            try:
                for offset in range(0, len(image), chunk):
                    part = image[offset:offset + chunk]
                    held, flags = proto.parse_loaded(self.request(
                        proto.LOAD, proto.load_payload(offset, part), proto.LOADED,
                        proto.LOADED_BYTES + 7, retry=False))
                    sent += len(part)
                    if held != offset + len(part):
                        raise LinkError(f"the board holds {held} image bytes, not "
                                        f"{offset + len(part)}")
            except (LinkError, ValueError) as e:
                failures.append(str(e))
                continue
            if not flags & proto.FLAG_LOADED:
                raise LinkError(f"the board took all {len(image)} bytes of the weight image "
                                f"but does not hold it (flags {flags:#04x}): the bitstream on "
                                f"it was built from another program; flash this build")
            if self.info is not None:
                self.info = dataclasses.replace(self.info, flags=flags)
            return sent
        raise LinkError(f"weight upload failed {len(failures)} times (last: {failures[-1]})")

    def infer(self, x) -> tuple[list[int], int]:
        """One inference: int8 inputs -> (int8 outputs, compute cycles)."""
        info = self.info or self.get_info()
        x = np.asarray(x)
        if x.shape != (info.in_features,):
            raise InputError(f"the board takes {info.in_features} inputs, not {x.shape}")
        if x.min(initial=0) < -128 or x.max(initial=0) > 127:
            raise InputError("inputs must be int8 (quantize them first)")
        payload = self.request(proto.INFER, bytes(int(v) & 0xFF for v in x), proto.RESULT,
                               info.out_features + 4 + 7)
        try:
            return proto.parse_result(payload, info.out_features)
        except ValueError as e:
            raise LinkError(f"malformed result: {e}") from None

    def infer_many(self, xq) -> tuple[np.ndarray, np.ndarray]:
        xq = np.asarray(xq)
        info = self.info or self.get_info()
        outputs = np.zeros((len(xq), info.out_features), dtype=np.int64)
        cycles = np.zeros(len(xq), dtype=np.int64)
        for n, x in enumerate(xq):
            outputs[n], cycles[n] = self.infer(x)
        return outputs, cycles


def open_port(port: str, baud: int, *, timeout_s: float = 0.02):
    """A pyserial port (8N1, no flow control)."""
    try:
        import serial
    except ImportError:
        raise ToolError("pyserial is missing: pip install pyserial") from None
    try:
        return serial.Serial(port, baudrate=baud, timeout=timeout_s, write_timeout=2.0)
    except (serial.SerialException, OSError) as e:
        raise InputError(f"cannot open serial port {port}: {e}; check the cable and that you "
                         f"may use the port (e.g. the dialout group)") from None


def _build_folder(out_dir) -> tuple[Path, dict]:
    out_dir = Path(out_dir)
    if not (out_dir / "program.npz").is_file() or not (out_dir / "report.json").is_file():
        raise InputError(f"{out_dir} is not a build folder (no program.npz / report.json); run "
                         f"`python -m compiler build MODEL --board BOARD --out {out_dir}` first")
    return out_dir, json.loads((out_dir / "report.json").read_text())


def run(out_dir, *, port=None, inputs=None, baud: int | None = None, outputs=None,
        link: BoardLink | None = None, retries: int = 3, reload: bool = False) -> RunResult:
    """Run ``inputs`` (.npy float [N, in] or an array) on the board behind ``port`` (a device
    path, or an open serial-like object) and compare every output with the reference model.
    A design with uploaded weights gets them first when it does not hold them (or always,
    ``reload``)."""
    from . import reference
    from .arrays import load_features
    from .serialize import load_program

    out_dir, report = _build_folder(out_dir)
    program = load_program(out_dir / "program.npz")
    flow = report.get("board_flow") or {}
    baud = baud or flow.get("baud") or 115200
    features = program.model.in_features
    if inputs is None:
        raise InputError("--inputs X.npy is required: float32 [N, in_features]")
    x = (np.asarray(inputs, dtype=np.float32) if isinstance(inputs, np.ndarray)
         else load_features(inputs, features, "input"))
    if x.ndim != 2 or x.shape[1] != features:
        raise InputError(f"inputs must have shape [N, {features}], not {x.shape}")
    xq = reference.quantize_input(x, program.model.input_scale)
    expected = reference.run(program, xq).outputs

    if link is None:
        serial_port = open_port(port, baud) if isinstance(port, str) else port
        link = BoardLink(serial_port, baud=baud, retries=retries)
    started = time.monotonic()
    info = link.get_info()
    want = proto.design_id(program)
    if (info.in_features, info.out_features) != (features, program.model.out_features) \
            or info.design_id != want:
        raise InputError(f"the board runs another design (id {info.design_id:08x}, "
                         f"{info.in_features} -> {info.out_features}); this build is "
                         f"{want:08x}: `python -m compiler flash {out_dir}` first")
    uploaded, upload_s = 0, 0.0
    if info.uploaded and (reload or not info.loaded):
        from hw.images import weight_image
        t = time.monotonic()
        uploaded = link.upload(weight_image(program))
        upload_s = time.monotonic() - t
    hw, cycles = link.infer_many(xq)
    seconds = time.monotonic() - started
    dequantized = reference.dequantize(hw, program.model.output_scale)
    mismatches = int(np.any(hw != expected, axis=1).sum())
    outputs_path = Path(outputs) if outputs else out_dir / "board_outputs.npz"
    np.savez(outputs_path, hw=hw, reference=expected, dequantized=dequantized, cycles=cycles)
    return RunResult(hw=hw, reference=expected, dequantized=dequantized, cycles=cycles,
                     mismatches=mismatches, retries=link.retried, seconds=seconds,
                     outputs_path=outputs_path, info=info, uploaded_bytes=uploaded,
                     upload_seconds=upload_s)
