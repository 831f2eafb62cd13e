"""The board link over a real serial port: :class:`BoardLink` runs :class:`~.client.LinkClient`
operations on a pyserial port (or anything with its ``read``/``write``), in wall-clock time."""

from __future__ import annotations

import time

from core.errors import InputError, ToolError

from . import protocol as proto
from .client import LinkClient, drive

__all__ = ["BoardLink", "SerialTransport", "open_port"]


class SerialTransport:
    """:func:`~.client.drive`'s transport over a serial-like ``port``: ``read(n)`` (returns
    what arrived within the port's own timeout), ``write(data)``, and optionally
    ``reset_input_buffer()``."""

    def __init__(self, port):
        self.port = port

    def send(self, data: bytes) -> None:
        if hasattr(self.port, "reset_input_buffer"):
            self.port.reset_input_buffer()
        self.port.write(data)

    def receive(self, max_bytes: int, timeout_s: float) -> bytes:
        deadline = time.monotonic() + timeout_s
        while True:
            data = self.port.read(max_bytes)
            if data or time.monotonic() >= deadline:
                return bytes(data or b"")

    def pause(self, seconds: float) -> None:
        time.sleep(seconds)


class BoardLink:
    """A :class:`~.client.LinkClient` bound to one serial port: the same operations, run to
    completion. Keyword arguments are the client's (``baud``, ``retries``,
    ``board_timeout_s``, ``reply_slack_s``)."""

    def __init__(self, port, **client_options):
        self.client = LinkClient(**client_options)
        self.transport = SerialTransport(port)

    @property
    def info(self) -> proto.BoardInfo | None:
        return self.client.info

    @property
    def retried(self) -> int:
        return self.client.retried

    def get_info(self) -> proto.BoardInfo:
        return drive(self.client.get_info(), self.transport)

    def upload(self, image: bytes, *, chunk: int = 1024) -> int:
        return drive(self.client.upload(image, chunk=chunk), self.transport)

    def infer(self, x):
        return drive(self.client.infer(x), self.transport)

    def infer_many(self, xq):
        return drive(self.client.infer_many(xq), self.transport)


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
