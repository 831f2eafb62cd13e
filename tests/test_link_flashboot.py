"""FlashBoot (boards/link/flashboot.py) against a SPI flash model (sim/spi_flash.py) in
Amaranth's simulator: the image bytes out bit-exact, a corrupt image flagged, a missing one
reported as such; and the flash image format (boards/link/flashimage.py)."""

import random

import pytest
from amaranth.sim import Simulator

from boards.link import flashimage
from boards.link.flashboot import READ, RELEASE_POWER_DOWN, FlashBoot, SPIMaster
from sim.spi_flash import SPIFlashModel

OFFSET = 0x100000


def _boot(flash_bytes, *, design_id=0x12345678, length, divisor=1, stall=0.0, seed=0,
          asleep=False, max_cycles=None):
    """Run a FlashBoot over ``flash_bytes`` (the whole flash); returns (bytes streamed out,
    loaded, error, the flash model, cycles)."""
    dut = FlashBoot(design_id, length, OFFSET, divisor=divisor, wake_cycles=8)
    flash = SPIFlashModel(flash_bytes, asleep=asleep)
    rng = random.Random(seed)
    got, result = [], {}
    limit = max_cycles or (length + 40) * 8 * 2 * divisor * (2 if stall else 1) * 3 + 400

    async def bench(ctx):
        sck = cs = 0
        for cycle in range(limit):
            ready = rng.random() >= stall
            ctx.set(dut.weights.ready, ready)
            valid = ctx.get(dut.weights.valid)
            if valid and ready:
                got.append((ctx.get(dut.weights.payload.data),
                            ctx.get(dut.weights.payload.first)))
            await ctx.tick()
            new_cs, new_sck = ctx.get(dut.flash.cs), ctx.get(dut.flash.sck)
            if new_cs and not cs:
                flash.select()
            if not new_cs and cs:
                assert not new_sck, "deselected with the clock high"
                flash.deselect()
            if new_cs and new_sck and not sck:
                flash.rise(ctx.get(dut.flash.copi))
            if new_cs and sck and not new_sck:
                ctx.set(dut.flash.cipo, flash.fall())
            sck, cs = new_sck, new_cs
            if ctx.get(dut.status.done):
                result.update(loaded=ctx.get(dut.status.loaded), error=ctx.get(dut.status.error),
                              cycles=cycle)
                return
        raise AssertionError(f"no boot within {limit} cycles")

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert all(first == (i == 0) for i, (_, first) in enumerate(got)), "first flag wrong"
    return bytes(b for b, _ in got), result["loaded"], result["error"], flash, result["cycles"]


def _flash_with(image_file: bytes) -> bytes:
    return b"\xff" * OFFSET + image_file


@pytest.mark.parametrize("seed, divisor, stall", [(1, 1, 0.0), (2, 2, 0.5), (3, 1, 0.3)])
def test_boot_good_image(seed, divisor, stall):
    rng = random.Random(seed)
    image = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 90)))
    data = _flash_with(flashimage.flash_image(image, 0x12345678) + b"\x00\x11")
    out, loaded, error, flash, _ = _boot(data, length=len(image), divisor=divisor,
                                         stall=stall, seed=seed)
    assert out == image
    assert (loaded, error) == (1, 0)
    assert flash.commands[:2] == [RELEASE_POWER_DOWN, READ] and flash.reads == [OFFSET]


@pytest.mark.parametrize("spoil", ["crc", "image", "design", "length"])
def test_boot_corrupt_image(spoil):
    rng = random.Random(spoil)
    image = bytes(rng.randrange(256) for _ in range(40))
    good = bytearray(flashimage.flash_image(image, 0x12345678))
    at = {"crc": 13, "image": flashimage.HEADER_BYTES + 17, "design": 5, "length": 8}[spoil]
    good[at] ^= 0x20
    out, loaded, error, _, _ = _boot(_flash_with(bytes(good)), length=len(image))
    assert (loaded, error) == (0, 1)
    if spoil in ("design", "length"):
        assert out == b"", "a header for another design must write nothing"


def test_boot_no_image():
    """An erased flash (or anything without the magic) is no image, not an error."""
    out, loaded, error, _, cycles = _boot(b"\xff" * OFFSET, length=64)
    assert (out, loaded, error) == (b"", 0, 0)
    assert cycles < 400             # it gives up at the first byte
    # a flash left asleep answers nothing either: the wake-up command is what reads it
    image = bytes(range(20))
    data = _flash_with(flashimage.flash_image(image, 0x12345678))
    assert _boot(data, length=20, asleep=True)[0] == image


def test_flash_image_format():
    image = bytes(range(256)) * 3
    data = flashimage.flash_image(image, 0xCAFEF00D)
    assert data[:4] == flashimage.MAGIC and len(data) == flashimage.HEADER_BYTES + len(image)
    assert flashimage.parse_flash_image(data) == (0xCAFEF00D, image)
    assert data[:flashimage.PREFIX_BYTES] == flashimage.expected_prefix(0xCAFEF00D, len(image))
    with pytest.raises(ValueError, match="CRC"):
        flashimage.parse_flash_image(data[:-1] + b"\x00")
    with pytest.raises(ValueError, match="magic"):
        flashimage.parse_flash_image(b"\xff" * 64)
    with pytest.raises(ValueError, match="cut short"):
        flashimage.parse_flash_image(data[:-5])


def test_bad_arguments():
    with pytest.raises(ValueError, match="divisor"):
        SPIMaster(0)
    with pytest.raises(ValueError, match="offset"):
        FlashBoot(1, 16, 2 ** 24)
    with pytest.raises(ValueError, match="does not fit"):
        FlashBoot(1, 0, 0)
