"""The whole accelerator: the input loader, the C column buses, the R x C PEs, the R reducers,
the output unit, and the counters.

::

    input (C lanes) -> InputLoader -> bus c -> PEs (r, c) for every r
                                        ^                 |  partial sums
                 reducers r with r % C == c  <------------+  of grid row r
                                        |
                     last layer -> OutputUnit -> output (model order)

Inferences overlap: each layer has ``banks`` accumulator banks in every PE, so inference
n + 1 fills a bank while the reducers still drain inference n's. Every wait is on a registered
flag: a bank's PEs all ``done`` (AND over a grid row), a bank or output buffer free (AND over
the reducers of their drain parities), a bus stalled (OR over a grid column).

A design built with uploaded weights (``HardwareOptions.weights == "uploaded"``) starts with
empty weight memories and takes them on its ``weights`` stream (:mod:`hw.weights`).
"""

from amaranth.hdl import Cat, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from core.ir import SparseProgram

from .bus import ColumnBus
from .images import geometry
from .loader import InputLoader
from .options import HardwareOptions
from .output import OutputUnit
from .pe import SparsePE
from .reducer import Reducer
from .weights import WEIGHT_BYTE, WeightLoader

__all__ = ["SparseAccelerator", "WEIGHT_BYTE"]


def _and_tree(m, bits, name: str):
    """AND of ``bits`` through registers, eight inputs a level (at least one register)."""
    values = list(bits)
    level = 0
    while True:
        groups = [values[k:k + 8] for k in range(0, len(values), 8)]
        regs = []
        for g, group in enumerate(groups):
            reg = Signal(name=f"{name}_l{level}_{g}")
            m.d.sync += reg.eq(Cat(*group).all())
            regs.append(reg)
        values = regs
        level += 1
        if len(values) == 1:
            return values[0]


class SparseAccelerator(wiring.Component):
    """Sparse MAC array for one compiled model.

    Parameters
    ----------
    program : SparseProgram
        Memory images and shapes from :func:`compiler.passes.encode.encode`.
    options : HardwareOptions or None
        Memory style, pipeline, banks (see :mod:`hw.options`); None: the defaults.

    Members
    -------
    input : In(stream.Signature(ArrayLayout(signed(8), C)))
        ``ceil(in_features / C)`` beats per inference: beat ``t`` lane ``i`` is input
        ``t * C + i`` (model order; lanes past the last input are ignored).
    output : Out(stream.Signature(signed(8)))
        ``out_features`` values per inference, in model order.
    cycles : Out(32)
        Latency of the inference being streamed out: cycles from its first input beat to its
        completion.
    interval : Out(32)
        Cycles between the completion of the inference before and this one's (in a stream of
        inputs: the array's initiation interval).
    busy : Out(1)
        Inferences in flight.
    weights : In(stream.Signature(StructLayout({"data": 8, "first": 1})))
        Uploaded weights only: the weight image (:func:`hw.images.weight_image`). Only between
        inferences.
    """

    def __init__(self, program: SparseProgram, options: HardwareOptions | None = None):
        if not isinstance(program, SparseProgram):
            raise TypeError(f"program must be a SparseProgram, not {program!r}")
        if options is not None and not isinstance(options, HardwareOptions):
            raise TypeError(f"options must be HardwareOptions, not {options!r}")
        self.program = program
        self.options = options or HardwareOptions()
        self.geo = geometry(program, self.options)
        geo, prog = self.geo, program
        # the parts, built here so that benches can watch them (``pes[r][c]``, ...)
        self.loader = InputLoader(geo)
        self.pes = [[SparsePE(prog, geo, r, c) for c in range(geo.cols)]
                    for r in range(geo.rows)]
        self.reducers = [Reducer(prog, geo, r) for r in range(geo.rows)]
        self.buses = [ColumnBus(geo, len(prog.grid.reducers_on(c)) + 1)
                      for c in range(geo.cols)]
        self.output_unit = OutputUnit(prog, geo)
        upload = {}
        if self.geo.weights == "uploaded":
            upload = {"weights": In(stream.Signature(WEIGHT_BYTE))}
        super().__init__({
            "input": In(stream.Signature(data.ArrayLayout(signed(8), self.geo.cols))),
            "output": Out(stream.Signature(signed(8))),
            "cycles": Out(32),
            "interval": Out(32),
            "busy": Out(1),
            **upload,
        })

    def elaborate(self, platform):
        m = Module()
        geo, prog = self.geo, self.program
        R, C, S = geo.rows, geo.cols, geo.slots
        m.submodules.loader = loader = self.loader
        wiring.connect(m, wiring.flipped(self.input), loader.input)
        pes, reducers = self.pes, self.reducers
        for r in range(R):
            for c in range(C):
                m.submodules[f"pe{r}_{c}"] = pes[r][c]
        for r, red in enumerate(reducers):
            m.submodules[f"reducer{r}"] = red
        m.submodules.output_unit = out = self.output_unit
        wiring.connect(m, out.output, wiring.flipped(self.output))

        # buses: the reducers on each, then the input loader
        for c in range(C):
            on = prog.grid.reducers_on(c)
            bus = self.buses[c]
            m.submodules[f"bus{c}"] = bus
            for i, r in enumerate(on):
                wiring.connect(m, reducers[r].out, getattr(bus, f"src{i}"))
            wiring.connect(m, getattr(loader, f"bus{c}"), getattr(bus, f"src{len(on)}"))
            for r in range(R):
                wiring.connect(m, getattr(bus, f"pe{r}"), pes[r][c].bus)
                m.d.comb += bus.almost_full[r].eq(pes[r][c].almost_full)

        # reducers and their PEs: drain requests (through fan-out levels), partial sums, done
        for r, red in enumerate(reducers):
            drain_valid, drain = red.drain.valid, red.drain.payload
            for level in range(geo.drain_stages):
                v, p = Signal(name=f"drain{r}_l{level}_valid"), Signal.like(drain)
                m.d.sync += [v.eq(drain_valid), p.eq(drain)]
                drain_valid, drain = v, p
            for c in range(C):
                pe = pes[r][c]
                m.d.comb += [
                    pe.drain.valid.eq(drain_valid), pe.drain.payload.eq(drain),
                    pe.release.valid.eq(red.release.valid),
                    pe.release.payload.eq(red.release.payload),
                    red.partials[c].eq(pe.partial), red.pe_done[c].eq(pe.done),
                ]
            wiring.connect(m, red.result, getattr(out, f"result{r}"))

        # free banks and complete output buffers: the AND over the reducers of their parities
        for s in range(S):
            even = _and_tree(m, [~red.drain_parity[s] for red in reducers], f"even{s}")
            odd = _and_tree(m, [red.drain_parity[s] for red in reducers], f"odd{s}")
            m.d.comb += [loader.drained_even[s].eq(even), loader.drained_odd[s].eq(odd)]
            for red in reducers:
                m.d.comb += [red.drained_even[s].eq(even), red.drained_odd[s].eq(odd)]
        for b in range(2):
            m.d.comb += [
                out.filled_even[b].eq(_and_tree(m, [~red.fill_parity[b] for red in reducers],
                                                f"filled_even{b}")),
                out.filled_odd[b].eq(_and_tree(m, [red.fill_parity[b] for red in reducers],
                                               f"filled_odd{b}")),
            ]
        for red in reducers:
            m.d.comb += red.out_parity.eq(out.parity)

        self._counters(m, loader, out)
        if geo.weights == "uploaded":
            m.submodules.weight_loader = wl = WeightLoader(geo)
            wiring.connect(m, wiring.flipped(self.weights), wl.weights)
            for r in range(R):
                for c in range(C):
                    pe = pes[r][c]
                    m.d.comb += [pe.load_addr.eq(wl.addr), pe.load_data.eq(wl.data),
                                 pe.load_en.eq(wl.en[r * C + c])]
        return m

    def _counters(self, m, loader, out):
        """Latency and interval of each inference, from a free-running cycle count: a
        timestamp per inference in flight, taken at its first beat, read at its completion.
        The high half of the count takes the low half's carry a cycle late, from a register
        (no 32-bit carry chain in one cycle)."""
        low, high, carry = Signal(16), Signal(16), Signal()
        m.d.sync += [low.eq(low + 1), carry.eq(low == 0xFFFE)]
        with m.If(carry):
            m.d.sync += high.eq(high + 1)
        now = Cat(low, high)
        # buffered: a registered read, so the timestamps can live in block RAM (no LUT RAM on
        # iCE40)
        m.submodules.starts = starts = SyncFIFOBuffered(width=32, depth=self.geo.in_flight)
        m.d.comb += [starts.w_data.eq(now), starts.w_en.eq(loader.started),
                     starts.r_en.eq(out.completed)]
        last = Signal(32)
        first = Signal(init=1)                   # no inference completed yet
        # the times into registers at the completion, the differences a cycle later (the
        # first output leaves the output unit cycles after that)
        done, at, began, before = Signal(), Signal(32), Signal(32), Signal(32)
        m.d.sync += done.eq(out.completed)
        with m.If(out.completed):
            m.d.sync += [at.eq(now), began.eq(starts.r_data),
                         before.eq(Mux(first, starts.r_data, last)),
                         last.eq(now), first.eq(0)]
        with m.If(done):
            m.d.sync += [self.cycles.eq(at - began), self.interval.eq(at - before)]
        m.d.comb += self.busy.eq(starts.r_rdy | ~out.idle)
