"""The weight image as it lies in a board's SPI flash, beside the bitstream: one definition
for the host, which writes it (``weights_flash.bin`` in the build folder, ``flash`` puts it at
the board's :attr:`~boards.Board.flash_offset`), and the gateware, which reads it at power-up
(:class:`boards.link.flashboot.FlashBoot`). Plain Python; the CRC's parameters come from
:mod:`amaranth.lib.crc`'s catalogue, whose hardware side the gateware uses.

Layout, all integers little-endian::

    magic (4) | design id (u32) | length (u32) | crc (u32) | image[length]

``magic`` is :data:`MAGIC`; ``design id`` is :func:`boards.link.protocol.design_id` of the
program; ``length`` is the weight image's (:func:`hw.images.weight_image`); ``crc`` is
CRC-32/ISO-HDLC (the zlib / Ethernet CRC) over the image bytes. The first twelve bytes are
constants of a given design (:func:`expected_prefix`): the gateware compares them byte by
byte. Without the magic (an erased flash reads 0xFF) there is no image; with it, any other
difference (design id, length) or a bad CRC is a corrupt image.
"""

from __future__ import annotations

import struct
from pathlib import Path

from amaranth.lib.crc import catalog

from hw.images import geometry, weight_image

from .protocol import design_id

__all__ = ["MAGIC", "HEADER_BYTES", "PREFIX_BYTES", "CRC", "FLASH_FILE", "expected_prefix",
           "flash_image", "parse_flash_image", "write_flash_image"]

MAGIC = b"SMWF"
#: magic, design id, length: what the gateware knows in advance
PREFIX_BYTES = 12
#: ... and the CRC
HEADER_BYTES = 16
#: The image's CRC, one definition for both sides (``CRC.create()`` in the gateware).
CRC = catalog.CRC32_ISO_HDLC(data_width=8)
#: Its name in the build folder.
FLASH_FILE = "weights_flash.bin"


def expected_prefix(design_id: int, length: int) -> bytes:
    """The first :data:`PREFIX_BYTES` bytes of a design's flash image."""
    if not 0 <= design_id < 2 ** 32:
        raise ValueError(f"design_id must be a u32, not {design_id!r}")
    if not 0 < length < 2 ** 32:
        raise ValueError(f"a weight image of {length!r} bytes does not fit the header")
    return MAGIC + struct.pack("<II", design_id, length)


def flash_image(image: bytes, design_id: int) -> bytes:
    """Header and ``image``: the bytes to write at the board's flash offset."""
    image = bytes(image)
    return expected_prefix(design_id, len(image)) + struct.pack("<I", CRC.compute(image)) + image


def parse_flash_image(data: bytes) -> tuple[int, bytes]:
    """(design id, weight image) of a flash image; ``ValueError`` naming what is wrong."""
    data = bytes(data)
    if len(data) < HEADER_BYTES or data[:4] != MAGIC:
        raise ValueError(f"not a sparsemac flash image (no {MAGIC!r} magic)")
    design, length, crc = struct.unpack_from("<III", data, 4)
    image = data[HEADER_BYTES:HEADER_BYTES + length]
    if len(image) != length:
        raise ValueError(f"flash image cut short: {len(image)} of {length} image bytes")
    if CRC.compute(image) != crc:
        raise ValueError(f"flash image CRC {CRC.compute(image):08x} does not match its "
                         f"header's {crc:08x}")
    return design, image


def write_flash_image(program, options, out_dir) -> Path:
    """``out_dir``/:data:`FLASH_FILE` for ``program`` built with ``options`` (uploaded
    weights)."""
    geo = geometry(program, options)
    if geo.weights != "uploaded":
        raise ValueError(f"a flash image is for uploaded weights, not {geo.weights!r}")
    path = Path(out_dir) / FLASH_FILE
    path.write_bytes(flash_image(weight_image(program, geo), design_id(program)))
    return path
