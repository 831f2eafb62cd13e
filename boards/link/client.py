"""The host's side of the board link, once, whatever carries the bytes.

:class:`LinkClient` holds the protocol logic a host needs - sequence numbers, reply checks,
retries, the weight upload - and does no I/O itself (a "sans-IO" client). Each operation is a
generator that yields what it needs done - :class:`Send` bytes, :class:`Receive` the bytes that
arrive within a timeout, :class:`Pause` - and returns its result. A transport runs it:

- :class:`boards.link.host.BoardLink` over a serial port (blocking, wall-clock seconds), used by
  ``python -m compiler run``;
- :class:`sim.uart_bench.CocotbTransport` on the simulated UART (awaited, simulated seconds),
  used by the cocotb bench of the gateware.

So the board and its simulation are driven by the same code. A reply counts only if its CRC
checks, its type is right and its sequence number is the request's; anything else is thrown
away and the request retried, so a corrupted or lost byte costs time, never a wrong answer.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from core.errors import InputError, SparsemacError

from . import protocol as proto

__all__ = ["LinkClient", "LinkError", "Send", "Receive", "Pause", "Reply", "drive",
           "drive_async"]


class LinkError(SparsemacError):
    """The board did not answer correctly after every retry."""


@dataclass(frozen=True)
class Send:
    """Write ``data``; first throw away whatever arrived unread (stale replies)."""
    data: bytes


@dataclass(frozen=True)
class Receive:
    """Wait up to ``timeout_s`` for at least one byte; answer with at most ``max_bytes`` of
    what arrived (``b""``: nothing came)."""
    max_bytes: int
    timeout_s: float


@dataclass(frozen=True)
class Pause:
    """Let ``seconds`` pass (the board drains its receiver after an error)."""
    seconds: float


@dataclass(frozen=True)
class Reply:
    """The outcome of one :meth:`LinkClient.exchange`: the reply frame with the request's
    sequence number, or why there is none (``frame`` None, ``failure`` the reason)."""
    frame: proto.Frame | None
    failure: str = ""


def drive(operation, transport):
    """Run a :class:`LinkClient` operation on a blocking ``transport`` (an object with
    ``send(data)``, ``receive(max_bytes, timeout_s)`` and ``pause(seconds)``); its result."""
    try:
        step = next(operation)
        while True:
            if isinstance(step, Send):
                answer = transport.send(step.data)
            elif isinstance(step, Receive):
                answer = transport.receive(step.max_bytes, step.timeout_s)
            else:
                answer = transport.pause(step.seconds)
            step = operation.send(answer)
    except StopIteration as done:
        return done.value


async def drive_async(operation, transport):
    """:func:`drive` for a transport whose ``send``, ``receive`` and ``pause`` are coroutines
    (a simulation's, which lets simulated time pass)."""
    try:
        step = next(operation)
        while True:
            if isinstance(step, Send):
                answer = await transport.send(step.data)
            elif isinstance(step, Receive):
                answer = await transport.receive(step.max_bytes, step.timeout_s)
            else:
                answer = await transport.pause(step.seconds)
            step = operation.send(answer)
    except StopIteration as done:
        return done.value


class LinkClient:
    """Requests and replies of :mod:`boards.link.protocol`, as generators (see the module).

    Parameters
    ----------
    baud : int
        The line rate, to size the reply timeouts.
    retries : int
        Extra tries per request after an error, a bad or a missing reply.
    board_timeout_s : float
        The board's inter-byte timeout (its quiet period after an error is the same).
    reply_slack_s : float
        Time allowed on top of the bytes' own for the board (and the transport) to answer.

    Attributes
    ----------
    info : protocol.BoardInfo or None
        What the board last said about itself.
    retried : int
        Requests sent again so far.
    """

    def __init__(self, *, baud: int = 115200, retries: int = 3, board_timeout_s: float = 0.02,
                 reply_slack_s: float = 0.25):
        if not isinstance(retries, int) or retries < 0:
            raise InputError(f"retries must be a whole number >= 0, not {retries!r}")
        self.baud, self.retries = baud, retries
        self.board_timeout_s, self.reply_slack_s = board_timeout_s, reply_slack_s
        self._seq = 0
        self.retried = 0
        self.info: proto.BoardInfo | None = None

    def next_seq(self) -> int:
        self._seq = (self._seq + 1) % 256
        return self._seq

    def byte_s(self) -> float:
        return 10.0 / self.baud

    def exchange(self, frame: bytes, seq: int | None, reply_bytes: int):
        """Send one frame (any bytes, good or not) and :meth:`collect` its reply; a generator
        that returns a :class:`Reply`. The wait for the first byte covers the request's own
        bytes."""
        yield Send(bytes(frame))
        return (yield from self.collect(seq, reply_bytes,
                                        timeout_s=(len(frame) + 8) * self.byte_s()))

    def collect(self, seq: int | None, reply_bytes: int, *, timeout_s: float = 0.0):
        """The next good reply frame whose sequence number is ``seq`` (None: any), for a reply
        of up to ``reply_bytes`` of payload; a generator that returns a :class:`Reply`. The
        line may be quiet for ``timeout_s`` plus the board's timeout and the slack before the
        first byte, for the board's timeout and the slack after it."""
        decoder = proto.FrameDecoder(proto.SYNC_REPLY,
                                     max_length=max(reply_bytes, proto.INFO_BYTES))
        frame_max = decoder.max_length + proto.HEADER_BYTES + 2
        slack = self.board_timeout_s + self.reply_slack_s
        timeout = timeout_s + slack
        received = 0
        while received <= 4 * frame_max:          # a babbling line is no reply either
            data = yield Receive(max(1, min(frame_max, reply_bytes + 7 - decoder.pending)),
                                 timeout)
            if not data:
                break
            received += len(data)
            timeout = 8 * self.byte_s() + slack
            for reply in decoder.feed(data):
                if seq is None or reply.seq == seq:
                    return Reply(reply)        # (other seqs: late replies to earlier requests)
        if decoder.bad_crc:
            return Reply(None, "reply with a bad CRC")
        return Reply(None, "no reply" if not received else "reply cut short")

    def request(self, kind: int, payload: bytes, expect: int, reply_bytes: int, *,
                retry: bool = True):
        """Send one request until a good ``expect`` reply with its seq arrives; returns its
        payload. ``reply_bytes``: the reply's payload length. ``retry=False``: one try only."""
        failures = []
        for attempt in range(self.retries + 1 if retry else 1):
            if attempt:
                self.retried += 1
                yield Pause(2 * self.board_timeout_s)
            seq = self.next_seq()
            reply = yield from self.exchange(
                proto.encode_frame(proto.SYNC_REQUEST, kind, seq, payload), seq, reply_bytes)
            if reply.frame is None:
                failures.append(reply.failure)
            elif reply.frame.kind == proto.ERROR:
                code = reply.frame.payload[0] if reply.frame.payload else 0
                failures.append(f"board error: {proto.ERRORS.get(code, f'code {code}')}")
            elif reply.frame.kind != expect:
                failures.append(f"unexpected reply type 0x{reply.frame.kind:02x}")
            else:
                return reply.frame.payload
        raise LinkError(f"no good reply after {len(failures)} tries ({'; '.join(failures)}); "
                        f"check the port, the baud rate and that the board runs this build "
                        f"(`python -m compiler flash DIR`)")

    def get_info(self):
        """INFO: the board's shapes, PE count, design id, clock and flags."""
        self.info = proto.parse_info((yield from self.request(
            proto.INFO, b"", proto.INFO_REPLY, proto.INFO_BYTES)))
        return self.info

    def upload(self, image: bytes, *, chunk: int = 1024):
        """Upload a weight image in LOAD chunks; after any error (a chunk is written as it
        arrives, so the board cannot take it again) start over from offset 0, up to
        ``retries`` more times. Returns the bytes sent."""
        if not image:
            raise InputError("an empty weight image")
        sent, failures = 0, []
        for attempt in range(self.retries + 1):
            if attempt:
                self.retried += 1
                yield Pause(2 * self.board_timeout_s)
            try:
                for offset in range(0, len(image), chunk):
                    part = image[offset:offset + chunk]
                    held, flags = proto.parse_loaded((yield from self.request(
                        proto.LOAD, proto.load_payload(offset, part), proto.LOADED,
                        proto.LOADED_BYTES, retry=False)))
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

    def infer(self, x):
        """One inference: int8 inputs -> (int8 outputs, compute cycles)."""
        info = self.info or (yield from self.get_info())
        x = np.asarray(x)
        if x.shape != (info.in_features,):
            raise InputError(f"the board takes {info.in_features} inputs, not {x.shape}")
        if x.min(initial=0) < -128 or x.max(initial=0) > 127:
            raise InputError("inputs must be int8 (quantize them first)")
        payload = yield from self.request(proto.INFER, bytes(int(v) & 0xFF for v in x),
                                          proto.RESULT, info.out_features + 4)
        try:
            return proto.parse_result(payload, info.out_features)
        except ValueError as e:
            raise LinkError(f"malformed result: {e}") from None

    def infer_many(self, xq):
        """Inferences for every row of ``xq``: (int outputs [N, out], cycles [N])."""
        xq = np.asarray(xq)
        info = self.info or (yield from self.get_info())
        outputs = np.zeros((len(xq), info.out_features), dtype=np.int64)
        cycles = np.zeros(len(xq), dtype=np.int64)
        for n, x in enumerate(xq):
            outputs[n], cycles[n] = yield from self.infer(x)
        return outputs, cycles
