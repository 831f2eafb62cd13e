"""The sans-IO host client (boards/link/client.py) on scripted transports: what it asks the
transport to do, and what it makes of the bytes it gets. (The client against a whole emulated
board and a pty: test_runtime.py; against the gateware in cocotb: test_uart.py.)"""

import asyncio

import pytest

from boards.link import protocol as proto
from boards.link.client import LinkClient, LinkError, Pause, Receive, Send, drive, drive_async
from core.errors import InputError

INFO = proto.BoardInfo(64, 10, 4, 0x1234ABCD, 50_000_000)


class Scripted:
    """Answers each request with ``replies(frame)`` bytes, handed out ``chunk`` at a time."""

    def __init__(self, replies, chunk=3):
        self.replies, self.chunk = replies, chunk
        self.sent, self.pauses, self.inbox = [], [], bytearray()

    def send(self, data):
        self.sent.append(data)
        self.inbox = bytearray(self.replies(proto.FrameDecoder(proto.SYNC_REQUEST)
                                            .feed(data)[0]))

    def receive(self, max_bytes, timeout_s):
        assert max_bytes >= 1 and timeout_s > 0
        n = min(max_bytes, self.chunk)
        data, self.inbox[:n] = bytes(self.inbox[:n]), b""
        return data

    def pause(self, seconds):
        self.pauses.append(seconds)


def _info_reply(frame, seq=None):
    return proto.encode_frame(proto.SYNC_REPLY, proto.INFO_REPLY,
                              frame.seq if seq is None else seq, proto.info_payload(INFO))


def test_the_reply_in_pieces_after_a_stale_one():
    port = Scripted(lambda f: _info_reply(f, seq=(f.seq - 1) % 256) + b"\x00" + _info_reply(f))
    client = LinkClient(baud=1_000_000)
    assert drive(client.get_info(), port) == INFO == client.info
    assert len(port.sent) == 1 and client.retried == 0


def test_operations_are_plain_steps():
    client = LinkClient(baud=115200, board_timeout_s=0.01, reply_slack_s=0.1)
    op = client.get_info()
    step = next(op)
    assert isinstance(step, Send) and step.data[:3] == bytes([proto.SYNC_REQUEST, proto.INFO, 1])
    step = op.send(None)
    assert isinstance(step, Receive)
    # the first byte may take the request's own bytes, the board's timeout and the slack
    assert step.timeout_s == pytest.approx((len(proto.encode_frame(0xA5, 2, 1)) + 8) * 10
                                           / 115200 + 0.11)
    step = op.send(b"")                        # nothing came: a retry, after a pause
    assert isinstance(step, Pause) and step.seconds == pytest.approx(0.02)


@pytest.mark.parametrize("reply, why", [
    (lambda f: b"", "no reply"),
    (lambda f: _info_reply(f)[:-2], "reply cut short"),
    (lambda f: bytes(b ^ (i == 6) for i, b in enumerate(_info_reply(f))), "bad CRC"),
    (lambda f: b"\x5a\x00" * 4096, "reply"),      # a babbling line ends too
    (lambda f: proto.encode_frame(proto.SYNC_REPLY, proto.ERROR, f.seq, bytes([1])),
     "board error: bad CRC"),
    (lambda f: proto.encode_frame(proto.SYNC_REPLY, proto.RESULT, f.seq, b"\x00" * 14),
     "unexpected reply type 0x81"),
])
def test_every_failure_is_retried_then_named(reply, why):
    port = Scripted(reply, chunk=64)
    client = LinkClient(baud=1_000_000, retries=2, board_timeout_s=0.001, reply_slack_s=0.01)
    with pytest.raises(LinkError, match=f"no good reply after 3 tries .*{why}"):
        drive(client.get_info(), port)
    assert len(port.sent) == 3 and len(port.pauses) == 2 and client.retried == 2
    assert len({frame[2] for frame in port.sent}) == 3       # a new seq every try


def test_the_async_driver_runs_the_same_steps():
    class AsyncScripted(Scripted):
        async def send(self, data):
            return Scripted.send(self, data)

        async def receive(self, max_bytes, timeout_s):
            return Scripted.receive(self, max_bytes, timeout_s)

        async def pause(self, seconds):
            return Scripted.pause(self, seconds)

    port = AsyncScripted(lambda f: _info_reply(f))
    assert asyncio.run(drive_async(LinkClient().get_info(), port)) == INFO


def test_inputs_are_checked_before_anything_is_sent():
    client = LinkClient()
    client.info = INFO
    port = Scripted(lambda f: b"")
    with pytest.raises(InputError, match="takes 64 inputs"):
        drive(client.infer([0] * 63), port)
    with pytest.raises(InputError, match="int8"):
        drive(client.infer([300] * 64), port)
    assert port.sent == []
