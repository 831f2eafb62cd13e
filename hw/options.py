"""Implementation choices of the gateware that do not change what it computes."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["HardwareOptions", "Choices", "MEMORY_STYLES", "PIPELINES", "WEIGHT_STORES",
           "options_for"]

#: "block": synchronous-read RAMs (block RAM, iCE40 EBR), each read registered before use,
#: accumulators read-modify-written over a pipeline with forwarding - any size, two more
#: cycles from a job to its products. "distributed": asynchronous-read RAMs (LUT RAM on ECP5 and
#: 7-series), registered once - the shortest pipeline, for memories small enough for LUTs.
MEMORY_STYLES = ("block", "distributed")

#: Largest per-PE memory (words) that "distributed" puts in LUT RAM.
DISTRIBUTED_MAX_DEPTH = 1024


#: "short": the fewest register stages; "deep": extra stages where slow fabric (iCE40) needs
#: them, at a cycle or two of latency per layer.
PIPELINES = ("short", "deep")


#: "bitstream": the weight memories are initialised by the bitstream (block RAM, LUT RAM).
#: "uploaded": they start empty and the host uploads the weights over the link before the
#: first inference (boards/link.py, LOAD frames) - what iCE40 SPRAM needs, which no
#: bitstream can initialise; inferences are refused until a whole, in-order image arrived.
WEIGHT_STORES = ("bitstream", "uploaded")


@dataclass(frozen=True)
class HardwareOptions:
    queue_depth: int | None = None      # PE-to-PE job queues; None: never stalls, at most 16
    memory: str = "block"
    pipeline: str = "short"
    weights: str = "bitstream"

    def __post_init__(self):
        if self.memory not in MEMORY_STYLES:
            raise ValueError(f"memory must be one of {MEMORY_STYLES}, not {self.memory!r}")
        if self.pipeline not in PIPELINES:
            raise ValueError(f"pipeline must be one of {PIPELINES}, not {self.pipeline!r}")
        if self.weights not in WEIGHT_STORES:
            raise ValueError(f"weights must be one of {WEIGHT_STORES}, not {self.weights!r}")
        if self.queue_depth is not None and (not isinstance(self.queue_depth, int)
                                             or self.queue_depth < 2):
            raise ValueError(f"queue_depth must be an integer >= 2, not {self.queue_depth!r}")


@dataclass(frozen=True)
class Choices:
    """What the user asked for (``build --queue-depth/--memory/--pipeline/--weights``); None:
    let :func:`options_for` decide (weights: the fit check, boards/fit.py)."""
    queue_depth: int | None = None
    memory: str | None = None
    pipeline: str | None = None
    weights: str | None = None


def options_for(program, family: str | None, choices: Choices | None = None
                ) -> HardwareOptions:
    """The options a board family calls for; ``choices`` override.

    Block RAM on iCE40 (it has no LUT RAM) and on ECP5, where it closes timing far better
    than LUT RAM (digits MLP on the ULX3S, P = 2 / 4 / 8: 106 / 94 / 74 MHz with block RAM,
    79 / 67 / 50 MHz with LUT RAM; docs/benchmarks.md), for two more cycles of latency per
    layer. LUT RAM on 7-series when every per-PE memory is small (no place and route here to
    say otherwise; the shortest pipeline, the fewest cycles). The deep pipeline on iCE40, and
    on ECP5 for P = 4 to 7, where the short pipeline's arbiter (a round-robin over P queues
    into the pointer RAM's address) falls below 100 MHz and the deep one's registered grant
    does not (ULX3S, P = 4: 107.05 MHz deep, 91.46 short; docs/benchmarks.md); it costs 30
    cycles per inference. Not from P = 8: there the deep pipeline's P * P queues of head
    registers (14 000 flip-flops) congest nextpnr's router, which did not converge in 20
    minutes at two of three seeds (once: 91.61 MHz)."""
    choices = choices or Choices()
    queue_depth = choices.queue_depth
    deepest = max([len(lane.entry_value) for lane in program.lanes]
                  + [program.ptr_base[-1] + program.column_count(len(program.layers) - 1)])
    small = deepest <= DISTRIBUTED_MAX_DEPTH
    memory = choices.memory or ("distributed" if family == "xc7" and small else "block")
    deep = family == "ice40" or (family == "ecp5" and 4 <= program.pes < 8)
    pipeline = choices.pipeline or ("deep" if deep else "short")
    return HardwareOptions(queue_depth=queue_depth, memory=memory, pipeline=pipeline,
                           weights=choices.weights or "bitstream")
