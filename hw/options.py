"""Implementation choices of the gateware that do not change what it computes.

What the styles are and which values are valid lives here (checked once, by
:class:`HardwareOptions` and :class:`Choices`); which style a board gets by default is its FPGA
family's decision (``boards.families``): the gateware knows no family.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from core.errors import InputError

__all__ = ["HardwareOptions", "Choices", "OptionError", "MEMORY_STYLES", "ACCUMULATOR_STYLES",
           "POINTER_STYLES", "PIPELINES", "WEIGHT_STORES", "BANKS", "DEFAULT_FIFO_DEPTH",
           "DISTRIBUTED_MAX_DEPTH", "needed_banks"]

#: Weight and pointer memories. "block": block RAM, whose slow clock-to-out (ECP5: 5.6 ns)
#: gets a register of its own behind every read. "distributed": LUT RAM, read into a register
#: at once (one cycle less from a column to its products).
MEMORY_STYLES = ("block", "distributed")

#: Accumulator banks (hw/accumulator.py). "distributed": LUT RAM, one memory per bank,
#: drained through a port of their own (no MAC cycle lost). "block": one block RAM per PE
#: (iCE40 has no LUT RAM), each drained row taking its PE a cycle.
ACCUMULATOR_STYLES = ("distributed", "block")

#: Column pointer tables (hw/walker.py). "csc": each column's start, read twice a column (its
#: start and the next one's: a two-port block RAM); "counted": start and entry count in one
#: word, read once (a block RAM with one read port, iCE40 EBR, holds it in one copy).
POINTER_STYLES = ("csc", "counted")

#: "short": the fewest register stages; "deep": extra stages where slow fabric (iCE40) needs
#: them (the requantizer's product in two registered halves, its saturation flags registered).
PIPELINES = ("short", "deep")

#: "bitstream": the weight memories are initialised by the bitstream (block RAM, LUT RAM).
#: "uploaded": they start empty and the host uploads the weights over the link before the
#: first inference (boards/link/gateware.py, LOAD frames) - what iCE40 SPRAM needs, which no
#: bitstream can initialise; inferences are refused until a whole, in-order image arrived.
WEIGHT_STORES = ("bitstream", "uploaded")

# ``flash_boot`` (build ``--boot-from-flash``): uploaded weights that the board also reads from
# its SPI flash at power-up (boards/link/flashboot.py), so that it runs without a host upload;
# the weight memories are the uploaded design's, only the board top differs.

#: Accumulator banks per layer: 2 lets inference n + 1 fill a layer's bank while the reducers
#: still drain inference n's; 1 halves the accumulator memory.
BANKS = (1, 2, 3, 4)

#: Entries of each PE's activation FIFO.
DEFAULT_FIFO_DEPTH = 16


class OptionError(InputError, ValueError):
    """A gateware option outside its range: one line for the CLI (an :class:`InputError`), a
    ``ValueError`` for library callers."""


#: The options, their allowed values and the build flag that sets each.
_ALLOWED = {"memory": MEMORY_STYLES, "pipeline": PIPELINES, "pointers": POINTER_STYLES,
            "accumulators": ACCUMULATOR_STYLES, "weights": WEIGHT_STORES}


def _check(options, *, flags: bool) -> None:
    """The one validation of gateware options, for :class:`HardwareOptions` (every option has
    a value) and :class:`Choices` (``flags``: None is "not chosen", and the messages name the
    build flag the user typed, ``--fifo-depth``, rather than the field)."""
    def name(field: str) -> str:
        return "--" + field.replace("_", "-") if flags else field

    def given(field: str) -> bool:
        value = getattr(options, field)
        if value is None and not flags:
            raise OptionError(f"{name(field)} needs a value")
        return value is not None

    for field, allowed in _ALLOWED.items():
        value = getattr(options, field)
        if given(field) and value not in allowed:
            raise OptionError(f"{name(field)} must be one of {', '.join(allowed)}, not "
                              f"{value!r}")
    banks = options.banks
    if given("banks") and any(b not in BANKS for b in
                              (banks if isinstance(banks, tuple) else (banks,))):
        raise OptionError(f"{name('banks')} must be one of {', '.join(map(str, BANKS))} (or a "
                          f"tuple of them, one per layer), not {banks!r}")
    depth = options.fifo_depth
    if given("fifo_depth") and (not isinstance(depth, int) or not 4 <= depth <= 1024):
        raise OptionError(f"{name('fifo_depth')} must be a whole number in 4..1024, not "
                          f"{depth!r}")
    flag = "--boot-from-flash" if flags else "flash_boot"
    if options.flash_boot not in (None, False, True):
        raise OptionError(f"{flag} must be True or False, not {options.flash_boot!r}")
    if options.flash_boot and options.weights not in (None, "uploaded"):
        raise OptionError(f"{flag} needs {name('weights')} uploaded (the flash image fills the "
                          f"weight memories at power-up), not {options.weights!r}")


@dataclass(frozen=True)
class HardwareOptions:
    memory: str = "block"
    pipeline: str = "short"
    weights: str = "bitstream"
    banks: int | tuple = 2            # for every layer, or one count per layer
    fifo_depth: int = DEFAULT_FIFO_DEPTH
    accumulators: str = "distributed"
    pointers: str = "csc"
    flash_boot: bool = False          # weights also read from the board's flash at power-up

    def banks_for(self, layers: int) -> tuple:
        """Accumulator banks of each of ``layers`` layers."""
        if isinstance(self.banks, tuple):
            if len(self.banks) != layers:
                raise ValueError(f"banks gives {len(self.banks)} layers' banks, the model has "
                                 f"{layers} layers")
            return self.banks
        return (self.banks,) * layers

    def __post_init__(self):
        _check(self, flags=False)


@dataclass(frozen=True)
class Choices:
    """What the user asked for (``build --memory/--pipeline/--weights/--banks/--fifo-depth/
    --boot-from-flash``);
    None: left to the board's family (``boards.families``; weights: the fit check,
    boards/fit.py). Checked when made, naming the build flags."""
    memory: str | None = None
    pipeline: str | None = None
    weights: str | None = None
    banks: int | tuple | None = None
    fifo_depth: int | None = None
    accumulators: str | None = None
    pointers: str | None = None
    flash_boot: bool | None = None

    def __post_init__(self):
        if isinstance(self.banks, list):
            object.__setattr__(self, "banks", tuple(self.banks))
        _check(self, flags=True)
        if self.flash_boot and self.weights is None:     # what booting from flash fills
            object.__setattr__(self, "weights", "uploaded")

    def over(self, defaults: HardwareOptions) -> HardwareOptions:
        """``defaults`` (a family's, boards.families) with what was chosen in their place."""
        return replace(defaults, **{f.name: getattr(self, f.name) for f in fields(self)
                                    if getattr(self, f.name) is not None})


def needed_banks(program, run) -> tuple:
    """Per layer: two accumulator banks where one would hold the next inference back, one
    elsewhere (a bank is LUT RAM in every PE). A layer's bank is busy from its first
    activation to the end of its drain: the activations of the layer before (or the input
    beats) arrive while the reducers drain that layer, its own work follows, then its own
    drain, each row a cycle, and some pipeline latency. Next inference's activations for the
    layer come an inference later; one bank suffices when it is busy for less than half of
    one. ``run``: a reference run on calibration inputs (:func:`compiler.reference.run`)."""
    work = run.pe_entries.mean(axis=0).max(axis=1)             # busiest PE, per layer
    interval = max(float(run.pe_bound.mean()), program.col_slots[0])
    banks = []
    for m in range(len(program.layers)):
        arrive = program.col_slots[0] if m == 0 else program.row_slots[m - 1]
        busy = arrive + float(work[m]) + program.row_slots[m] + _LATENCY
        banks.append(2 if busy > interval / 2 else 1)
    return tuple(banks)


#: Cycles a bank waits on pipelines (bus, walker, MAC, reducer), roughly.
_LATENCY = 24


#: Largest per-PE memory (words) that "distributed" puts in LUT RAM.
DISTRIBUTED_MAX_DEPTH = 1024
