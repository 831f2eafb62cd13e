"""FPGA families: how is a board of family X built? ``boards/families/<family>.py``.

Each family is one object (a :class:`~boards.families.base.Family`) that owns everything that
depends on the silicon and its tools; the rest of sparsemac asks it and never compares family
names. The board table (``boards.BOARDS``) names a family object in each row.

Adding a family is one new file here plus rows in ``boards.BOARDS`` and
``boards.DEVICES``. The file defines a subclass of :class:`Family` (or of
:class:`NextpnrFamily` when Amaranth's build plan with Yosys + nextpnr + a packer makes its
bitstream), one instance of it, and registers that instance in :data:`FAMILIES` below. It
must provide:

- identity: ``name`` (the key, ``synth_<name>``, what reports say), ``title`` (for
  messages), ``flow`` (``Board.flow``), ``default_clock_mhz`` (platforms outside the table);
- ``claims(platform_cls)``: whether an Amaranth platform class is of the family
  (``--platform``), and ``platform_flavour(cls)`` / ``platform_options`` if the platform needs
  a flavour (``create_platform`` builds it);
- memory mapping: ``map_memory(mem)``, reached through the platform's Amaranth
  ``get_memory()`` hook (``create_platform`` installs it): an implementation of one of the
  design's memories, or None for Amaranth's own (iCE40: uploaded weights into SPRAM);
- default gateware styles: ``default_options(program)`` -> ``hw.options.HardwareOptions``
  (the gateware defines the styles; the family picks the ones that suit its fabric);
- the fit check's resource model: ``bram_configs``, ``bram_block_bits``, ``bram_dual_port``,
  ``bram_unit``, ``small_bits``, ``lutram_depth``, ``dsp_tile``, ``logic_model`` (the
  coefficients of ``boards.fit.logic_terms``), ``fmax_model``, ``usable_luts``; override
  ``bram_units`` (how the device counts blocks), ``logic_check`` (how its logic is counted),
  ``weights_in_spram`` / ``spram_blocks`` / ``spram_blocks_available`` where they differ, and
  ``lutram_check`` where LUT RAM is a resource of its own (Gowin);
- clocking: ``pll(f_in_mhz, f_out_mhz)`` (settings, or None to run at the oscillator) and
  ``instantiate_pll(m, platform, pll, sync_clk=, link_clk=, locked=)`` (the primitive);
- the flow: ``flow_tools`` (names in ``boards.toolchain.TOOLS``; add a ``Tool`` there for a
  new executable), ``synth_options(board, options)``, ``bitstream_suffix``,
  ``products(program, board, out_dir, options=, baud=, seed=)`` (the bitstream or plans and
  the report's board section: a :class:`NextpnrFamily` gets Amaranth's plan, nextpnr's report
  and its parsing from ``boards.flow``; it sets ``nextpnr`` and ``resource_names``);
- flashing: ``flash_persist_args`` (openFPGALoader arguments for ``flash --persist``).

tests/test_families.py pins each family's numbers; a new family adds its own there.
"""

from __future__ import annotations

from core.errors import InputError

from .base import Family, NextpnrFamily
from .ecp5 import ECP5
from .gowin import GOWIN
from .ice40 import ICE40
from .xc7 import XC7

__all__ = ["Family", "NextpnrFamily", "FAMILIES", "ICE40", "ECP5", "XC7", "GOWIN", "get_family",
           "family_of_platform"]

#: Every family, by name, in the order ``--platform`` tries them.
FAMILIES: dict[str, Family] = {f.name: f for f in (ICE40, ECP5, XC7, GOWIN)}


def get_family(name: str) -> Family:
    """The family called ``name``."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise InputError(f"unknown FPGA family {name!r}; known: {', '.join(FAMILIES)}") from None


def family_of_platform(platform_cls) -> Family | None:
    """The family of an Amaranth platform class, or None."""
    return next((f for f in FAMILIES.values() if f.claims(platform_cls)), None)
