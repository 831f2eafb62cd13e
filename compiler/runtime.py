"""``python -m compiler run DIR --port /dev/ttyUSB1 --inputs X.npy``: a build's inputs through
the board, every output checked against the reference model.

The link itself - wire format, host client, serial transport - is :mod:`boards.link`; this is
the session around it that needs the compiler's layer (the build folder, the program, the
reference model), and the command's CLI.

A bitstream built with uploaded weights (iCE40 SPRAM) starts without them (unless it read them
from its flash at power-up, ``--boot-from-flash``: INFO says loaded): :func:`run` uploads
the build's weight image (:func:`hw.images.weight_image`) in LOAD chunks when the board says it
does not hold it, starting over from the first chunk after any error.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from boards.link import protocol as proto
from boards.link.host import BoardLink, open_port
from core.buildfolder import build_folder
from core.errors import InputError
from hw.images import weight_image

from . import reference
from .argtypes import whole_number
from .arrays import load_features
from .serialize import load_program

__all__ = ["RunResult", "run", "add_command"]


@dataclass
class RunResult:
    hw: np.ndarray            # int [N, out]: what the board computed
    reference: np.ndarray     # int [N, out]
    dequantized: np.ndarray   # float [N, out]
    cycles: np.ndarray        # int [N]: compute cycles on the board
    mismatches: int           # inferences whose outputs differ from the reference
    retries: int              # requests sent again after an error or a lost reply
    seconds: float
    outputs_path: Path | None
    info: proto.BoardInfo
    uploaded_bytes: int = 0   # weight image bytes sent (0: none needed)
    upload_seconds: float = 0.0


def run(out_dir, *, port=None, inputs=None, baud: int | None = None, outputs=None,
        link: BoardLink | None = None, retries: int = 3, reload: bool = False) -> RunResult:
    """Run ``inputs`` (.npy float [N, in] or an array) on the board behind ``port`` (a device
    path, or an open serial-like object) and compare every output with the reference model.
    A design with uploaded weights gets them first when it does not hold them (or always,
    ``reload``)."""
    out_dir, report = build_folder(out_dir)
    program = load_program(out_dir / "program.npz")
    flow = report.get("board_flow") or {}
    baud = baud or flow.get("baud") or 115200
    features = program.model.in_features
    if inputs is None:
        raise InputError("--inputs X.npy is required: float32 [N, in_features]")
    x = (np.asarray(inputs, dtype=np.float32) if isinstance(inputs, np.ndarray)
         else load_features(inputs, features, "input"))
    if x.ndim != 2 or x.shape[1] != features:
        raise InputError(f"inputs must have shape [N, {features}], not {x.shape}")
    xq = reference.quantize_input(x, program.model.input_scale)
    expected = reference.run(program, xq).outputs

    if link is None:
        serial_port = open_port(port, baud) if isinstance(port, str) else port
        link = BoardLink(serial_port, baud=baud, retries=retries)
    started = time.monotonic()
    info = link.get_info()
    want = proto.design_id(program)
    if (info.in_features, info.out_features) != (features, program.model.out_features) \
            or info.design_id != want:
        raise InputError(f"the board runs another design (id {info.design_id:08x}, "
                         f"{info.in_features} -> {info.out_features}); this build is "
                         f"{want:08x}: `python -m compiler flash {out_dir}` first")
    uploaded, upload_s = 0, 0.0
    if info.uploaded and (reload or not info.loaded):
        t = time.monotonic()
        uploaded = link.upload(weight_image(program))
        upload_s = time.monotonic() - t
    hw, cycles = link.infer_many(xq)
    seconds = time.monotonic() - started
    dequantized = reference.dequantize(hw, program.model.output_scale)
    mismatches = int(np.any(hw != expected, axis=1).sum())
    outputs_path = Path(outputs) if outputs else out_dir / "board_outputs.npz"
    np.savez(outputs_path, hw=hw, reference=expected, dequantized=dequantized, cycles=cycles)
    return RunResult(hw=hw, reference=expected, dequantized=dequantized, cycles=cycles,
                     mismatches=mismatches, retries=link.retried, seconds=seconds,
                     outputs_path=outputs_path, info=info, uploaded_bytes=uploaded,
                     upload_seconds=upload_s)


def cmd_run(args) -> int:
    result = run(args.dir, port=args.port, inputs=args.inputs, baud=args.baud,
                 outputs=args.outputs, retries=args.retries, reload=args.reload_weights)
    n = len(result.hw)
    info = result.info
    if info.boot_error:
        print(f"the weight image in the board's flash is corrupt or another build's: "
              f"`python -m compiler flash {args.dir}` writes it again")
    if result.uploaded_bytes:
        print(f"weights uploaded: {result.uploaded_bytes} bytes in {result.upload_seconds:.1f} s")
    cycles = float(result.cycles.mean()) if n else 0.0
    print(f"{n} inferences on the board ({info.pes} PEs at {info.clock_hz / 1e6:g} MHz, design "
          f"{info.design_id:08x}): {n - result.mismatches} equal the reference model"
          + (f", {result.mismatches} DIFFER" if result.mismatches else " (bit-exact)"))
    if n:
        compute_s = cycles / info.clock_hz
        print(f"  compute: {cycles:.1f} cycles per inference = {1e6 * compute_s:.2f} us "
              f"({1 / compute_s:,.0f} inferences/s); over the UART: {n / result.seconds:.1f}/s"
              f"{f', {result.retries} retries' if result.retries else ''}")
    print(f"  outputs {result.outputs_path}")
    return 1 if result.mismatches else 0


def add_command(sub) -> None:
    """Register ``run`` on the CLI's subparsers."""
    p = sub.add_parser("run", help="run inputs on a board over its UART, check them against "
                                   "the reference model")
    p.add_argument("dir", help="build folder (its bitstream must be on the board)")
    p.add_argument("--port", required=True, help="serial port, e.g. /dev/ttyUSB1")
    p.add_argument("--inputs", required=True, help=".npy float32 [N, in_features]")
    p.add_argument("--baud", type=whole_number(300), help="UART rate (default: the build's)")
    p.add_argument("--outputs", help="where to write OUT.npz (hw, reference, dequantized, "
                                     "cycles)")
    p.add_argument("--retries", type=whole_number(0), default=3, help="tries after a bad reply (default 3)")
    p.add_argument("--reload-weights", action="store_true",
                   help="upload the weights even if the board holds them (designs built with "
                        "uploaded weights, e.g. iCE40 SPRAM)")
    p.set_defaults(func=cmd_run)
