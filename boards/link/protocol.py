"""The UART link between a host and a board: framing, CRC, message types.

Shared by the gateware (:mod:`boards.link.gateware`), the host client
(:mod:`boards.link.client`) and the tests, so they cannot disagree. Plain Python; the CRC's
parameters come from :mod:`amaranth.lib.crc`'s catalogue, whose hardware side the gateware
uses.

Every frame, in both directions::

    sync | type | seq | length (u16 LE) | payload[length] | crc (u16 BE)

``crc`` is CRC-16/IBM-3740 (poly 0x1021, init 0xFFFF, not reflected; also called
CRC-16/CCITT-FALSE) over ``type .. payload``; sent big-endian, so the CRC over
``type .. crc`` is zero (the check the receiver makes). ``seq`` is echoed in the reply, so a
host never takes a late reply to an earlier request for the current one.

Requests (host -> board, ``sync`` = :data:`SYNC_REQUEST`): :data:`INFER` with the
``in_features`` int8 inputs, :data:`INFO` with no payload, and - for a design built with
uploaded weights - :data:`LOAD`: the byte offset (u32 LE) of a chunk of the weight image
(:func:`hw.images.weight_image`), then the chunk.

Replies (board -> host, ``sync`` = :data:`SYNC_REPLY`): :data:`RESULT` (``out_features``
int8 outputs, then the compute cycles as u32 LE), :data:`INFO_REPLY` (in_features u16,
out_features u16, PEs u8, design id u32, clock Hz u32, flags u8, all LE; flags:
:data:`FLAG_UPLOADED`, :data:`FLAG_LOADED`, :data:`FLAG_BOOT_ERROR`), :data:`LOADED` (image bytes the board holds,
u32 LE, then the flags) and :data:`ERROR` (one byte, an :data:`ERRORS` code).

Uploaded weights: a LOAD at offset 0 starts a new image; every other LOAD must continue
exactly where the last one ended. The bytes are written as they arrive, so any error inside
a LOAD frame (CRC, timeout, order) spoils the image until a new one starts at offset 0 (a
chunk that would continue a spoiled image is refused as out of order; a chunk refused for
its offset or for running past the image's end writes nothing and spoils nothing); the
board sets :data:`FLAG_LOADED` only when a whole image arrived in order with every frame's
CRC good, and answers INFER with an error until then.

Weights from flash (a design built with ``--boot-from-flash``, :mod:`boards.link.flashboot`):
at power-up, before it takes the first request, the board reads the flash image
(:mod:`boards.link.flashimage`: magic, design id, length, CRC-32, the weight image) from its
SPI flash into the weight memories. A good image sets :data:`FLAG_LOADED`, so ``run`` sends no
LOAD. An erased flash or one without the magic is "no image": the board waits for an upload,
as without flash. An image with a bad CRC, another design's id or the wrong length sets
:data:`FLAG_BOOT_ERROR`, and INFER answers :data:`ERR_BOOT_IMAGE` (not the plain
:data:`ERR_NOT_LOADED`); a LOAD at offset 0 clears the flag and uploads as usual, which is
how a host recovers. Requests sent while the board boots are not seen.

The board answers every request it could frame: a bad CRC, a wrong length, an unknown type, a
UART framing error or a frame cut short (no byte for ``timeout`` while inside a frame: a dropped
byte) each produce an :data:`ERROR` frame, never a result. After a bad length or type it ignores the line until it has been quiet for the timeout,
then hunts for the next sync byte.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from amaranth.lib.crc import catalog

__all__ = [
    "SYNC_REQUEST", "SYNC_REPLY", "INFER", "INFO", "LOAD", "RESULT", "INFO_REPLY", "LOADED",
    "ERROR", "ERRORS", "FLAG_UPLOADED", "FLAG_LOADED", "FLAG_BOOT_ERROR", "HEADER_BYTES", "CRC", "crc16",
    "encode_frame", "FrameDecoder", "Frame", "info_payload", "parse_info", "result_payload", "parse_result",
    "load_payload", "loaded_payload", "parse_loaded", "design_id", "BoardInfo",
]

#: The frame check, one definition for both sides: the gateware instantiates it
#: (``CRC.create()``), the host computes it (``CRC.compute(data)``).
CRC = catalog.CRC16_IBM_3740(data_width=8)

SYNC_REQUEST = 0xA5
SYNC_REPLY = 0x5A

INFER = 0x01
INFO = 0x02
LOAD = 0x03
RESULT = 0x81
INFO_REPLY = 0x82
LOADED = 0x83
ERROR = 0xEE

#: INFO_REPLY / LOADED flags: the design takes its weights over the link; it holds them;
#: the weight image it read from its flash at power-up was corrupt (or another design's).
FLAG_UPLOADED = 0x01
FLAG_LOADED = 0x02
FLAG_BOOT_ERROR = 0x04

#: Error codes in an :data:`ERROR` frame's payload, and what each means.
ERR_CRC, ERR_TIMEOUT, ERR_LENGTH, ERR_TYPE, ERR_FRAMING = 1, 2, 3, 4, 5
ERR_NOT_LOADED, ERR_ORDER, ERR_OVERRUN, ERR_BOOT_IMAGE = 6, 7, 8, 9
ERRORS = {
    ERR_CRC: "bad CRC",
    ERR_TIMEOUT: "frame cut short (timeout: a byte was dropped)",
    ERR_LENGTH: "wrong length for this request type",
    ERR_TYPE: "unknown request type",
    ERR_FRAMING: "UART framing error (wrong baud rate or noise)",
    ERR_NOT_LOADED: "weights not loaded (upload them first: `python -m compiler run` does)",
    ERR_ORDER: "weight chunk out of order (an image starts at offset 0 and continues where it "
               "ended)",
    ERR_OVERRUN: "weight byte lost (the accelerator was not ready)",
    ERR_BOOT_IMAGE: "the weight image in flash is corrupt or another design's (bad CRC, "
                    "design id or length): `python -m compiler flash` writes it again, "
                    "`python -m compiler run` uploads the weights instead",
}

#: sync, type, seq, length (2)
HEADER_BYTES = 5
INFO_BYTES = 14
LOADED_BYTES = 5
#: a LOAD's offset field
LOAD_OFFSET_BYTES = 4


def crc16(data: bytes) -> int:
    """CRC-16/IBM-3740 (CCITT-FALSE) of ``data``: :data:`CRC`'s software side."""
    return CRC.compute(data)


def encode_frame(sync: int, kind: int, seq: int, payload: bytes = b"") -> bytes:
    """One frame, CRC appended."""
    if not 0 <= seq <= 255:
        raise ValueError(f"seq must be in 0..255, not {seq!r}")
    if len(payload) > 0xFFFF:
        raise ValueError(f"payload of {len(payload)} bytes does not fit a u16 length")
    body = bytes([kind, seq]) + struct.pack("<H", len(payload)) + bytes(payload)
    return bytes([sync]) + body + struct.pack(">H", crc16(body))


@dataclass(frozen=True)
class Frame:
    kind: int
    seq: int
    payload: bytes


class FrameDecoder:
    """Incremental decoder: feed bytes, collect good frames; counts what it threw away.

    Bytes before a sync byte are skipped; a frame whose CRC fails is dropped and decoding resumes
    one byte after its sync byte, so a lost byte costs only the frame it was in.
    """

    def __init__(self, sync: int, *, max_length: int = 0xFFFF):
        self.sync = sync
        self.max_length = max_length
        self._buf = bytearray()
        self.skipped = 0          # bytes thrown away outside frames
        self.bad_crc = 0          # frames dropped for their CRC

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        frames = []
        while True:
            start = self._buf.find(bytes([self.sync]))
            if start < 0:
                self.skipped += len(self._buf)
                self._buf.clear()
                return frames
            if start:
                self.skipped += start
                del self._buf[:start]
            if len(self._buf) < HEADER_BYTES:
                return frames
            length = struct.unpack_from("<H", self._buf, 3)[0]
            if length > self.max_length:
                self.skipped += 1
                del self._buf[:1]
                continue
            total = HEADER_BYTES + length + 2
            if len(self._buf) < total:
                return frames
            if crc16(self._buf[1:total]) != 0:
                self.bad_crc += 1
                del self._buf[:1]
                continue
            frames.append(Frame(self._buf[1], self._buf[2],
                                bytes(self._buf[HEADER_BYTES:total - 2])))
            del self._buf[:total]

    @property
    def pending(self) -> int:
        """Bytes held that may still become a frame."""
        return len(self._buf)


@dataclass(frozen=True)
class BoardInfo:
    in_features: int
    out_features: int
    pes: int
    design_id: int
    clock_hz: int
    flags: int = 0

    @property
    def uploaded(self) -> bool:
        return bool(self.flags & FLAG_UPLOADED)

    @property
    def loaded(self) -> bool:
        return bool(self.flags & FLAG_LOADED)

    @property
    def boot_error(self) -> bool:
        return bool(self.flags & FLAG_BOOT_ERROR)


def info_payload(info: BoardInfo) -> bytes:
    return struct.pack("<HHBIIB", info.in_features, info.out_features, info.pes,
                       info.design_id, info.clock_hz, info.flags)


def parse_info(payload: bytes) -> BoardInfo:
    if len(payload) != INFO_BYTES:
        raise ValueError(f"an INFO reply has {INFO_BYTES} bytes, not {len(payload)}")
    return BoardInfo(*struct.unpack("<HHBIIB", payload))


def load_payload(offset: int, chunk: bytes) -> bytes:
    if not chunk:
        raise ValueError("a LOAD carries at least one byte")
    return struct.pack("<I", offset) + bytes(chunk)


def loaded_payload(count: int, flags: int) -> bytes:
    return struct.pack("<IB", count, flags)


def parse_loaded(payload: bytes) -> tuple[int, int]:
    """(image bytes the board holds, flags)."""
    if len(payload) != LOADED_BYTES:
        raise ValueError(f"a LOADED reply has {LOADED_BYTES} bytes, not {len(payload)}")
    return struct.unpack("<IB", payload)


def result_payload(outputs, cycles: int) -> bytes:
    return bytes(int(v) & 0xFF for v in outputs) + struct.pack("<I", int(cycles))


def parse_result(payload: bytes, out_features: int) -> tuple[list[int], int]:
    if len(payload) != out_features + 4:
        raise ValueError(f"a RESULT reply has {out_features + 4} bytes, not {len(payload)}")
    outputs = [b - 256 if b >= 128 else b for b in payload[:out_features]]
    return outputs, struct.unpack_from("<I", payload, out_features)[0]


def design_id(program) -> int:
    """32 bits that identify a compiled program (its memory images and scales): the board
    reports it so that the host refuses to run inputs for one model on another's bitstream."""
    h = hashlib.sha256()
    h.update(struct.pack("<IIII", program.grid.rows, program.grid.cols,
                         program.model.in_features, program.model.out_features))
    h.update(struct.pack("<dd", float(program.model.input_scale),
                         float(program.model.output_scale)))
    for pe in program.pe_images:
        for name in ("entry_value", "entry_index", "ptr"):
            h.update(bytes(getattr(pe, name).astype("<i8").tobytes()))
        if pe.entry_code is not None:          # weight sharing: the codes the bitstream holds
            h.update(bytes(pe.entry_code.astype("<i8").tobytes()))
    for table in program.codebooks or ():
        h.update(b"".join(int(v).to_bytes(8, "little", signed=True) for v in table))
    for red in program.reducers:
        for array in (*red.rows, red.bias, red.multiplier):
            h.update(bytes(array.astype("<i8").tobytes()))
    for layer in program.layers:
        h.update(bytes(layer.quant.shift[:1].astype("<i8").tobytes()))
    return int.from_bytes(h.digest()[:4], "little")
