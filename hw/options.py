"""Implementation choices of the gateware that do not change what it computes."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["HardwareOptions", "Choices", "MEMORY_STYLES", "ACCUMULATOR_STYLES",
           "POINTER_STYLES", "PIPELINES",
           "WEIGHT_STORES", "BANKS", "DEFAULT_FIFO_DEPTH", "options_for", "needed_banks"]

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
#: first inference (boards/link.py, LOAD frames) - what iCE40 SPRAM needs, which no
#: bitstream can initialise; inferences are refused until a whole, in-order image arrived.
WEIGHT_STORES = ("bitstream", "uploaded")

#: Accumulator banks per layer: 2 lets inference n + 1 fill a layer's bank while the reducers
#: still drain inference n's; 1 halves the accumulator memory.
BANKS = (1, 2, 3, 4)

#: Entries of each PE's activation FIFO.
DEFAULT_FIFO_DEPTH = 16


@dataclass(frozen=True)
class HardwareOptions:
    memory: str = "block"
    pipeline: str = "short"
    weights: str = "bitstream"
    banks: int | tuple = 2            # for every layer, or one count per layer
    fifo_depth: int = DEFAULT_FIFO_DEPTH
    accumulators: str = "distributed"
    pointers: str = "csc"

    def banks_for(self, layers: int) -> tuple:
        """Accumulator banks of each of ``layers`` layers."""
        if isinstance(self.banks, tuple):
            if len(self.banks) != layers:
                raise ValueError(f"banks gives {len(self.banks)} layers' banks, the model has "
                                 f"{layers} layers")
            return self.banks
        return (self.banks,) * layers

    def __post_init__(self):
        if self.memory not in MEMORY_STYLES:
            raise ValueError(f"memory must be one of {MEMORY_STYLES}, not {self.memory!r}")
        if self.pipeline not in PIPELINES:
            raise ValueError(f"pipeline must be one of {PIPELINES}, not {self.pipeline!r}")
        if self.pointers not in POINTER_STYLES:
            raise ValueError(f"pointers must be one of {POINTER_STYLES}, not {self.pointers!r}")
        if self.accumulators not in ACCUMULATOR_STYLES:
            raise ValueError(f"accumulators must be one of {ACCUMULATOR_STYLES}, not "
                             f"{self.accumulators!r}")
        if self.weights not in WEIGHT_STORES:
            raise ValueError(f"weights must be one of {WEIGHT_STORES}, not {self.weights!r}")
        for banks in (self.banks if isinstance(self.banks, tuple) else (self.banks,)):
            if banks not in BANKS:
                raise ValueError(f"banks must be one of {BANKS} (or a tuple of them, one per "
                                 f"layer), not {self.banks!r}")
        if not isinstance(self.fifo_depth, int) or not 4 <= self.fifo_depth <= 1024:
            raise ValueError(f"fifo_depth must be an integer in 4..1024, not "
                             f"{self.fifo_depth!r}")


@dataclass(frozen=True)
class Choices:
    """What the user asked for (``build --memory/--pipeline/--weights/--banks/--fifo-depth``);
    None: let :func:`options_for` decide (weights: the fit check, boards/fit.py)."""
    memory: str | None = None
    pipeline: str | None = None
    weights: str | None = None
    banks: int | tuple | None = None
    fifo_depth: int | None = None
    accumulators: str | None = None
    pointers: str | None = None


def options_for(program, family: str | None, choices: Choices | None = None
                ) -> HardwareOptions:
    """The options a board family calls for; ``choices`` override.

    Block RAM for weights and pointers everywhere but on 7-series, where LUT RAM holds small
    per-PE memories well; on iCE40 (no LUT RAM, one read port an EBR) block-RAM accumulators,
    counted pointers and the deep pipeline."""
    choices = choices or Choices()
    deepest = max([len(pe.entry_value) for pe in program.pe_images]
                  + [sum(program.col_slots) + 1])
    small = deepest <= DISTRIBUTED_MAX_DEPTH
    memory = choices.memory or ("distributed" if family == "xc7" and small else "block")
    pipeline = choices.pipeline or ("deep" if family == "ice40" else "short")
    ice40 = family == "ice40"
    return HardwareOptions(memory=memory, pipeline=pipeline,
                           weights=choices.weights or "bitstream",
                           banks=choices.banks or 2,
                           fifo_depth=choices.fifo_depth or DEFAULT_FIFO_DEPTH,
                           accumulators=choices.accumulators or ("block" if ice40
                                                                 else "distributed"),
                           pointers=choices.pointers or ("counted" if ice40 else "csc"))


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
