"""``python -m compiler`` / ``sparsemac``: argument parsing and printing only; every command
calls a library function that the tests call too.

Any :class:`~core.errors.SparsemacError` becomes one line on stderr and exit status 2
(1 for a hardware/reference mismatch); unexpected exceptions are reported in one line too,
with ``SPARSEMAC_DEBUG=1`` for the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from hw.options import (ACCUMULATOR_STYLES, BANKS, MEMORY_STYLES, PIPELINES, POINTER_STYLES,
                        WEIGHT_STORES)

from .argtypes import whole_number
from core.errors import InputError, SparsemacError

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


_positive = whole_number(1)


def _pes(text: str):
    return "auto" if text == "auto" else _positive(text)


def _weight_bits(text: str):
    """auto, off or a codebook index width 1..7."""
    if text in ("auto", "off"):
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto, off or a number in 1..7, not "
                                         f"{text!r}") from None
    if not 1 <= value <= 7:
        raise argparse.ArgumentTypeError(f"must be auto, off or in 1..7, not {value}")
    return value


def _banks(text: str):
    """N or N,N,... (the values are checked where every gateware option is: hw.options)."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or N,N,... (one per layer), not "
                                         f"{text!r}") from None
    return values[0] if len(values) == 1 else values


def _one_of(values) -> str:
    """The metavar of a gateware style: its values, as argparse would list them (the values
    themselves are checked once, by hw.options, when the build's choices are made)."""
    return "{" + ",".join(values) + "}"


def _console():
    from rich.console import Console
    return Console(highlight=False, soft_wrap=True)


def cmd_build(args) -> int:
    from .build import BuildConfig, build

    if (args.board is None) == (args.platform is None):
        raise InputError("give either --board NAME or --platform module:Class")
    if args.platform is not None and ":" not in args.platform:
        raise InputError(f"--platform {args.platform!r} is not module:Class; name an "
                         f"amaranth-boards platform such as "
                         f"amaranth_boards.ulx3s:ULX3S_85F_Platform, or use --board NAME")
    config = BuildConfig(model=args.model, board=args.board or args.platform, pes=args.pes,
                         grid=args.grid, calibration=args.calibration, out=args.out,
                         trust_pickle=args.trust_pickle, index_bits=args.index_bits,
                         weight_bits=args.weight_bits, fifo_depth=args.fifo_depth,
                         banks=args.banks, dense=args.dense, requantize=args.requantize,
                         clock_mhz=args.clock_mhz, baud=args.baud,
                         allow_timing_failure=args.allow_timing_failure, seed=args.seed,
                         memory=args.memory, pipeline=args.pipeline, weights=args.weights,
                         accumulators=args.accumulators, pointers=args.pointers,
                         boot_from_flash=args.boot_from_flash,
                         bitstream=not args.no_bitstream,
                         synth_estimate=args.synth_estimate)
    console = _console()
    with console.status("building") as status:
        result = build(config, on_step=lambda name: status.update(f"build step: {name}"))
    r = result.report
    c = r["cycles"]
    console.print(f"[bold]{r['model']}[/] -> {result.out_dir} ({r['board']}, {r['pes']} PEs "
                  f"on a {r['grid']} grid)")
    console.print(f"  plan: {r['plan']['reason']}")
    console.print(f"  sparsity {100 * r['totals']['sparsity']:.1f} % "
                  f"({r['totals']['nnz']}/{r['totals']['weights']} weights), "
                  f"index bits {r['index_bits']}, weight bits {r['weight_bits']}"
                  f"{' (codebook)' if r['weight_bits'] < 8 else ''}")
    console.print(f"  cycles per inference: ideal {c['ideal']:.1f}, PE bound {c['pe_bound']:.1f}, "
                  f"dense {c['dense']}")
    console.print(f"  Verilog {r['verilog']}; report {result.out_dir / 'report.md'}")
    for warning in r.get("warnings", []):
        console.print(f"  [bold]warning[/]: {warning}")
    if r.get("bitstream"):
        console.print(f"  bitstream {r['bitstream']} (Fmax {r['fmax_mhz']} MHz)")
    timing = r.get("timing")
    if timing and not timing["met"]:
        console.print(f"  [bold]timing NOT met[/]: Fmax {timing['fmax_mhz']} MHz < "
                      f"{timing['target_mhz']:g} MHz target (kept: --allow-timing-failure)")
    plans = (r.get("board_flow") or {}).get("plans")
    if plans:
        console.print(f"  Vivado plan {plans['vivado']}; openXC7 plan {plans['openxc7_script']}")
    return 0


def cmd_simulate(args) -> int:
    from .simulate import simulate

    console = _console()
    with console.status(f"simulating on {args.simulator}"):
        result = simulate(args.dir, simulator=args.simulator, inputs=args.inputs,
                          outputs=args.outputs, waves=args.waves, limit=args.limit,
                          labels=args.labels)
    sim = result.report["cycles"]["simulation"]
    console.print(f"{len(result.hw)} inferences on {args.simulator}: RTL == reference "
                  f"(bit-exact)")
    console.print(f"  cycles per inference {sim['measured_mean']:.1f}, inputs streamed "
                  f"(ideal {sim['ideal_mean']:.1f}, {sim['ratio_to_ideal']:.3f} x; dense "
                  f"{result.report['cycles']['dense']}, {sim['dense_to_measured']:.2f} x slower); "
                  f"latency {sim['latency_mean']:.1f}")
    if result.accuracy:
        from .report import accuracy_line
        console.print(f"  {accuracy_line(result.accuracy)}")
    console.print(f"  outputs {result.outputs_path}")
    if args.waves:
        console.print(f"  waveform in {os.path.join(args.dir, 'sim_' + args.simulator)}")
    return 0


def cmd_fuzz(args) -> int:
    from .fuzz import run_campaign

    console = _console()
    done = []

    def progress(record):
        done.append(record)
        if record["status"] in ("ok", "refused"):
            console.print(f"  model {record['model']}: {record['status']} (P "
                          f"{record.get('pes', record['options']['pes'])}, {record['cases']} "
                          f"cases, {record['seconds']:.0f} s)")
        else:
            console.print(f"  model {record['model']}: [bold]{record['status']}[/]: "
                          f"{record.get('error', '')}")

    with console.status("fuzzing") as status:
        def on_model(record):
            progress(record)
            status.update(f"fuzzing: {len(done)} models done")
        result = run_campaign(cases=args.cases, seed=args.seed, out_dir=args.out,
                              jobs=args.jobs, simulator=args.simulator,
                              cases_per_model=args.cases_per_model, keep=args.keep,
                              max_size=args.max_size, on_model=on_model)
    console.print(summary_table(result.summary))
    console.print(f"summary {result.out_dir / 'summary.json'}")
    for failure in result.summary["failures"]:
        console.print(f"  reproducer: {failure['reproducer']}/command.sh")
    return 1 if result.failed else 0


def summary_table(s: dict) -> str:
    """The campaign's summary as a Markdown table (what docs/verification.md shows)."""
    def stats(v, digits=4):
        return "n/a" if v is None else f"{v['median']:.{digits}f} / {v['worst']:.{digits}f}"
    rows = [
        ("cases (checked)", f"{s['cases']} ({s['cases_checked']})"),
        ("models (checked, refused)", f"{s['models']} ({s['models_checked']}, "
                                      f"{s['refused']})"),
        ("mismatches", s["mismatches"]),
        ("crashes, tool errors", f"{s['crashes']}, {s['tool_errors']}"),
        ("P covered", ", ".join(map(str, s["pes_covered"]))),
        ("MLPs, CNNs", f"{s['kinds']['mlp']}, {s['kinds']['cnn']}"),
        ("layer sizes min/median/max", f"{s['layer_sizes']['min']} / "
                                       f"{s['layer_sizes']['median']} / "
                                       f"{s['layer_sizes']['max']}"),
        ("layer sparsity min/max, layers >= 99 %",
         f"{s['sparsity']['min']} / {s['sparsity']['max']}, "
         f"{s['sparsity']['layers_at_least_99pct']}"),
        ("float correlation median / worst", stats(s["correlation"])),
        ("argmax agreement median / worst", stats(s["argmax_agreement"], 3)),
        ("builds warning of quantization loss", s["warned_builds"]),
        ("builds with codebook weights", s["codebook_builds"]),
        ("simulator, seed", f"{s['simulator']}, {s['seed']}"),
        ("wall time", f"{s['wall_s']:.0f} s"),
    ]
    return "\n".join(["| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows]])


def _parser() -> argparse.ArgumentParser:
    from boards import board_names

    parser = _Parser(prog="python -m compiler",
                     description="sparsemac: pruned PyTorch model -> sparse FPGA accelerator")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("build", help="compile a model to Verilog (and a bitstream)")
    p.add_argument("model", help="torch.export .pt2 (recommended), .onnx, torch.save(model) "
                                 "or TorchScript file")
    p.add_argument("--board", help=f"one of: {', '.join(board_names())}")
    p.add_argument("--platform", help="any amaranth-boards platform, module:Class (instead of "
                                      "--board)")
    p.add_argument("--pes", type=_pes,
                   help="processing elements, or auto (the default): the most inferences per "
                        "second that fit the board and are predicted to meet its clock")
    p.add_argument("--grid", help="the PEs' R x C shape, e.g. 8x8 (R >= C; default: the "
                                  "squarest for --pes)")
    p.add_argument("--calibration", help=".npy float32 [N, in_features] (default: digits)")
    p.add_argument("--out", help="build folder (default build/<model>-<board>)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow a pickle that needs arbitrary classes (runs its code!)")
    p.add_argument("--index-bits", type=_positive, help="relative row index width")
    p.add_argument("--weight-bits", type=_weight_bits, default="auto",
                   help="weight sharing: auto (the default: a B-bit codebook index per entry "
                        "where every layer's int8 weights take at most 2**B values, B <= 7, "
                        "and that saves memory), off (int8 weights), or B in 1..7 (forced)")
    p.add_argument("--fifo-depth", type=_positive,
                   help="each PE's activation FIFO, 4..1024 (default 16)")
    p.add_argument("--banks", type=_banks,
                   help=f"accumulator banks per layer ({', '.join(map(str, BANKS))}), N for "
                        "all or N,N,... one per layer: "
                        "inferences that overlap in a layer (default: two where one would "
                        "hold the next inference back)")
    p.add_argument("--dense", action="store_true",
                   help="store and process every weight and input (baseline for benchmarks)")
    p.add_argument("--requantize", action="store_true",
                   help="a QONNX / ONNX QDQ model: ignore its own scales, keep its weights "
                        "(dequantized) and calibrate as for a float model")
    p.add_argument("--clock-mhz", type=float, help="clock target (default: the board's)")
    p.add_argument("--baud", type=_positive, default=115200, help="UART rate (default 115200)")
    p.add_argument("--allow-timing-failure", action="store_true",
                   help="keep a bitstream whose Fmax is below the clock target")
    p.add_argument("--seed", type=_positive, default=1,
                   help="nextpnr placement seed (default 1); Fmax varies a few MHz with it")
    p.add_argument("--memory", metavar=_one_of(MEMORY_STYLES),
                   help="memory style (default: by the board's family, boards/families/; see "
                        "hw/options.py)")
    p.add_argument("--accumulators", metavar=_one_of(ACCUMULATOR_STYLES),
                   help="accumulator banks in LUT RAM (distributed: drained for free) or one "
                        "block RAM per PE (block: each drained row costs a cycle; the iCE40 "
                        "default, which has no LUT RAM)")
    p.add_argument("--pointers", metavar=_one_of(POINTER_STYLES),
                   help="column pointers: csc (start and end of every column, two reads) or "
                        "counted (start and count in one word, one read: the iCE40 default, "
                        "whose block RAM has one read port)")
    p.add_argument("--pipeline", metavar=_one_of(PIPELINES),
                   help="pipeline depth (default: deep on iCE40, short elsewhere)")
    p.add_argument("--weights", metavar=_one_of(WEIGHT_STORES),
                   help="bitstream: weights in the bitstream's memories; uploaded: empty "
                        "memories (iCE40: SPRAM) that `run` fills over the UART (default: "
                        "bitstream, uploaded when only that fits)")
    p.add_argument("--boot-from-flash", action="store_true",
                   help="stand-alone board: uploaded weights that the board also reads from "
                        "its SPI flash at power-up (`flash` writes them there beside the "
                        "bitstream), so `run` needs no upload; iCEBreaker and ULX3S")
    p.add_argument("--no-bitstream", action="store_true",
                   help="fit check and Verilog only; skip synthesis and place and route")
    p.add_argument("--synth-estimate", action="store_true",
                   help="boards with no place-and-route tool here (Arty A7 without Vivado or "
                        "nextpnr-xilinx): Yosys's synth_xilinx utilisation, beside the fit "
                        "check's estimate (minutes)")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("simulate", help="run the Verilog in cocotb against the reference model")
    p.add_argument("dir", help="build folder")
    p.add_argument("--simulator", choices=["icarus", "verilator"], default="icarus")
    p.add_argument("--inputs", help=".npy float32 [N, in_features] (default: first 100 of the "
                                    "calibration set)")
    p.add_argument("--outputs", help="where to write OUT.npz (hw, reference, dequantized, "
                                     "cycles)")
    p.add_argument("--limit", type=_positive, help="simulate only the first N inputs")
    p.add_argument("--labels", help=".npy integer classes of --inputs (after --limit: the "
                                    "first N): the RTL's accuracy beside float PyTorch's")
    p.add_argument("--waves", action="store_true", help="write an FST waveform")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("fuzz", help="seeded random models and inputs: RTL against the "
                                    "reference, bit for bit (docs/verification.md)")
    p.add_argument("--cases", type=_positive, default=200, help="input vectors in all "
                                                                "(default 200)")
    p.add_argument("--cases-per-model", type=_positive, default=50,
                   help="input vectors per generated model (default 50): one build each")
    p.add_argument("--seed", type=_positive, default=1, help="campaign seed (default 1)")
    p.add_argument("--jobs", type=_positive, default=1, help="models in parallel (default 1)")
    p.add_argument("--out", default="build/fuzz", help="folder for summary.json and "
                                                       "failures/ (default build/fuzz)")
    p.add_argument("--simulator", choices=["verilator", "icarus"], default="verilator")
    p.add_argument("--max-size", type=_positive,
                   help="cap on every layer's width (default: up to a few hundred)")
    p.add_argument("--keep", action="store_true", help="keep every model's build folder")
    p.set_defaults(func=cmd_fuzz)

    # Commands of other features register themselves here (one line each).
    from .prune.cli import add_commands as _prune_commands; _prune_commands(sub)  # noqa: E702
    from boards.cli import add_commands as _board_commands; _board_commands(sub)  # noqa: E702
    from .runtime import add_command as _run_command; _run_command(sub)  # noqa: E702
    return parser


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except SparsemacError as e:
        from .simulate import RTLMismatch
        print(f"error: {e}", file=sys.stderr)
        return 1 if isinstance(e, RTLMismatch) else 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug: still one line, the traceback on request
        if os.environ.get("SPARSEMAC_DEBUG"):
            raise
        print(f"internal error: {type(e).__name__}: {e} (please report it; set "
              f"SPARSEMAC_DEBUG=1 for the traceback)", file=sys.stderr)
        return 3
