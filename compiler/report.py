"""Build reports: ``report.json`` for machines, ``report.md`` for people.

``simulate`` adds the measured cycles to the same files (see :func:`record_simulation`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from hw.images import geometry, memory_bits

from .reference import dense_cycles

__all__ = ["storage", "build_report", "write_report", "record_simulation", "accuracy_line"]


def storage(program, geo) -> dict:
    """Weight-side memory of ``program``, by part, in bits, against the float32 dense model:
    entry weight fields (int8 values or codebook indices, padding entries included), their
    relative row indices, the pointer tables, the codebooks (a ROM in every PE), the
    reducers' row parameters (bias and multiplier). ``float32_dense``: 32 bits per weight and
    per bias of the float model, every weight stored."""
    bits = memory_bits(geo)
    entries = sum(geo.entry_depth)
    parts = {"values": entries * geo.field_bits, "indices": entries * geo.index_bits,
             "pointers": bits.get("pointers", 0), "codebooks": bits.get("codebooks", 0),
             "row_parameters": bits.get("row_parameters", 0)}
    total = sum(parts.values())
    nnz = sum(layer.nnz for layer in program.layers)
    dense = 32 * sum(layer.weight.size + layer.bias.size for layer in program.layers)
    return {"parts": parts, "total": total, "nonzero": nnz,
            "weight_bits": geo.field_bits, "index_bits": geo.index_bits,
            "bits_per_nonzero": round(total / max(1, nnz), 3),
            "float32_dense": dense, "compression": round(dense / max(1, total), 2)}


def build_report(state) -> dict:
    program, config, run = state.program, state.config, state.reference_run
    geo = geometry(program, state.options)
    layers = []
    for m, layer in enumerate(program.layers):
        ptr = slice(program.ptr_base[m], program.ptr_base[m] + program.col_slots[m] + 1)
        pe_entries = [int(np.diff(pe.ptr[ptr]).sum()) for pe in program.pe_images]
        layers.append({
            "name": layer.name,
            "in_features": layer.in_features,
            "out_features": layer.out_features,
            "nnz": layer.nnz,
            "sparsity": round(layer.sparsity, 6),
            "relu": layer.relu,
            "in_scale": layer.quant.in_scale,
            "out_scale": layer.quant.out_scale,
            "row_group_rows": [red.row_count(m) for red in program.reducers],
            "pe_entries": pe_entries,
            "padding_entries": int(sum(pe_entries) - layer.nnz) if not config.dense else 0,
            "nnz_active_mean": round(float(run.nnz_active[:, m].mean()), 3),
            "pe_active_entries_mean": [round(float(v), 3)
                                       for v in run.pe_entries[:, m, :].mean(axis=0)],
        })
    weights = sum(layer.weight.size for layer in program.layers)
    nnz = sum(layer.nnz for layer in program.layers)
    ideal = run.ideal_cycles
    bits = memory_bits(geo)
    store = storage(program, geo)
    return {
        "model": program.model.name,
        "model_path": str(config.model),
        "board": state.board.name,
        "board_description": state.board.description,
        "pes": program.pes,
        "grid": str(program.grid),
        "plan": state.board_results.get("plan"),
        "index_bits": program.index_bits,
        "weight_bits": geo.weight_bits,
        "codebooks": ([[int(v) for v in t] for t in program.codebooks]
                      if program.codebooks is not None else None),
        "memory_style": geo.memory,
        "accumulators": geo.accumulators,
        "pointers": geo.pointers,
        "pipeline": geo.pipeline,
        "banks": list(geo.banks),
        "fifo_depth": geo.fifo_depth,
        "dense_mode": config.dense,
        "in_features": program.model.in_features,
        "out_features": program.model.out_features,
        "input_lanes": geo.cols,
        "input_scale": program.model.input_scale,
        "output_scale": program.model.output_scale,
        "layers": layers,
        "totals": {"weights": weights, "nnz": nnz, "sparsity": round(1 - nnz / weights, 6)},
        "cycles": {
            "basis": f"calibration data, {len(ideal)} inputs",
            "ideal": round(float(ideal.mean()), 3),
            "ideal_min": int(ideal.min()),
            "ideal_max": int(ideal.max()),
            "pe_bound": round(float(run.pe_bound.mean()), 3),
            "layer_bound": round(float(run.layer_bound.mean()), 3),
            "dense": dense_cycles(program.model, program.pes),
            "measured": None,
        },
        "widths": {"partial": program.widths.partial,
                   "accumulator": program.widths.accumulator, "biased": program.widths.biased,
                   "product": program.widths.product},
        "memory_bits": bits,
        "bits_per_nonzero": store["bits_per_nonzero"],
        "storage": store,
        "verilog": str(state.verilog),
        "resources": state.board_results.get("resources") or {
            "source": "estimate from the memory images (no synthesis run)",
            "memory_bits": sum(bits.values()),
        },
        "fmax_mhz": state.board_results.get("fmax_mhz"),
        "bitstream": state.board_results.get("bitstream"),
        "weights_flash": state.board_results.get("weights_flash"),
        "timing": state.board_results.get("timing"),
        "fit": state.board_results.get("fit"),
        "board_flow": {k: v for k, v in state.board_results.items()
                       if k not in ("resources", "fmax_mhz", "bitstream", "weights_flash",
                                    "timing", "fit",
                                    "plan")},
        "steps": dict(state.timings),
        "warnings": list(getattr(state, "warnings", [])),
        "quantization": getattr(state, "quantization", None),
    }


def write_report(out_dir, report: dict) -> None:
    out_dir = Path(out_dir)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "report.md").write_text(_markdown(report))


def record_simulation(out_dir, report: dict, *, simulator: str, cycles: np.ndarray,
                      intervals: np.ndarray, ideal: np.ndarray, outputs: str,
                      accuracy: dict | None = None) -> dict:
    """Add measured cycles (from the RTL, inputs streamed back to back) to the report, against
    the ideal for the same inputs: cycles per inference is the whole run over its
    inferences (the array's throughput); latency is each inference's first beat to done."""
    per_inference = float(intervals.sum()) / len(intervals)
    report["cycles"]["measured"] = round(per_inference, 3)
    report["cycles"]["simulation"] = {
        "simulator": simulator,
        "inputs": int(len(cycles)),
        "measured_mean": round(per_inference, 3),
        "interval_min": int(intervals.min()),
        "interval_max": int(intervals.max()),
        "latency_mean": round(float(cycles.mean()), 3),
        "latency_max": int(cycles.max()),
        "ideal_mean": round(float(ideal.mean()), 3),
        "ratio_to_ideal": round(per_inference / max(1.0, float(ideal.mean())), 4),
        "dense_to_measured": round(report["cycles"]["dense"] / per_inference, 3),
        "outputs": outputs,
    }
    if accuracy is not None:
        report["accuracy"] = accuracy
    write_report(out_dir, report)
    return report


def accuracy_line(acc: dict) -> str:
    """The RTL's accuracy beside float PyTorch's (a report's ``accuracy``), in words."""
    return (f"accuracy on {acc['inputs']} labelled inputs: RTL {100 * acc['rtl']:.2f} %, "
            f"float PyTorch {100 * acc['float']:.2f} %")


def _markdown(r: dict) -> str:
    c = r["cycles"]
    lines = [
        f"# sparsemac build: {r['model']} on {r['board']}",
        "",
        f"- board: {r['board_description']}",
        f"- processing elements: {r['pes']} on a {r['grid']} grid, relative index bits: "
        f"{r['index_bits']}, weight bits: {r.get('weight_bits', 8)}"
        f"{' (codebook indices)' if r.get('weight_bits', 8) < 8 else ''}, "
        f"FIFO depth: {r['fifo_depth']}, banks per layer: {r['banks']}, "
        f"memories: {r['memory_style']}, accumulators: {r['accumulators']}, pointers: "
        f"{r['pointers']}, pipeline: {r['pipeline']}",
        *([f"- plan: {r['plan']['reason']}"] if r.get("plan") else []),
        f"- weights: {r['totals']['weights']}, nonzero: {r['totals']['nnz']} "
        f"(sparsity {100 * r['totals']['sparsity']:.1f} %)",
        f"- input scale {r['input_scale']:.6g}, output scale {r['output_scale']:.6g}",
        f"- Verilog: `{r['verilog']}`",
        f"- Fmax: {r['fmax_mhz'] if r['fmax_mhz'] is not None else 'not built'} MHz, "
        f"bitstream: {r['bitstream'] or 'none'}",
        f"- weight, pointer, codebook and row-parameter memory: {r['bits_per_nonzero']} bits "
        f"per nonzero weight",
        "",
        *_storage_markdown(r),
        *_warnings_markdown(r),
        "## Layers",
        "",
        "| layer | in | out | nnz | sparsity | ReLU | nonzero in active columns (mean) "
        "| PE entries min/max |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for layer in r["layers"]:
        lines.append(
            f"| {layer['name']} | {layer['in_features']} | {layer['out_features']} "
            f"| {layer['nnz']} | {100 * layer['sparsity']:.1f} % | {'yes' if layer['relu'] else 'no'} "
            f"| {layer['nnz_active_mean']:.1f} "
            f"| {min(layer['pe_entries'])}/{max(layer['pe_entries'])} |")
    lines += [
        "",
        "## Cycles per inference",
        "",
        f"- ideal, sum over layers of ceil(nonzero weights in active columns / P): "
        f"{c['ideal']:.1f} (mean over {c['basis']}, range {c['ideal_min']}..{c['ideal_max']})",
        f"- bound of this PE assignment (busiest PE, all layers; inferences overlap): "
        f"{c['pe_bound']:.1f}",
        f"- dense array of the same size: {c['dense']}",
    ]
    sim = c.get("simulation")
    if sim:
        lines += [
            f"- measured in RTL ({sim['simulator']}, {sim['inputs']} inputs streamed): "
            f"{sim['measured_mean']:.1f} per inference, {sim['ratio_to_ideal']:.3f} x ideal; "
            f"dense / measured = {sim['dense_to_measured']:.2f}; latency "
            f"{sim['latency_mean']:.1f} on average",
        ]
        if r.get("accuracy"):
            lines.append(f"- {accuracy_line(r['accuracy'])}")
    else:
        lines.append("- measured: not simulated yet (`python -m compiler simulate`)")
    lines += _board_markdown(r)
    lines += ["", "## Memory (bits)", "", "| kind | bits |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in r["memory_bits"].items()]
    lines += ["", "## Build steps (seconds)", "", "| step | s |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in r.get("steps", {}).items()]
    return "\n".join(lines) + "\n"


def _storage_markdown(r: dict) -> list:
    """The weight-side memory, part by part, against float32 dense (:func:`storage`)."""
    st = r.get("storage")
    if not st:
        return []
    kind = (f"{st['weight_bits']}-bit codebook indices" if st["weight_bits"] < 8
            else "int8 values")
    lines = ["## Storage", "", f"Weights as {kind}, {st['index_bits']}-bit relative row "
             f"indices.", "", "| part | bits | bits per nonzero weight |", "|---|---|---|"]
    nnz = max(1, st["nonzero"])
    for part, value in st["parts"].items():
        lines.append(f"| {part.replace('_', ' ')} | {value} | {value / nnz:.2f} |")
    lines += [f"| total | {st['total']} | {st['bits_per_nonzero']:.2f} |",
              f"| float32 dense (weights and biases) | {st['float32_dense']} | |", "",
              f"{st['compression']:g} x smaller than the float32 dense model.", ""]
    return lines


def _warnings_markdown(r: dict) -> list:
    """The build's warnings (quantization that loses the model, compiler/passes/quantize.py)."""
    if not r.get("warnings"):
        return []
    return ["## Warnings", "", *[f"- {w}" for w in r["warnings"]], ""]


def _board_markdown(r: dict) -> list:
    """Resources and Fmax (boards/): nextpnr's numbers, or the estimates."""
    lines = ["", "## Board", ""]
    timing, fit, flow = r.get("timing"), r.get("fit"), r.get("board_flow") or {}
    if timing:
        verdict = "met" if timing["met"] else (
            "NOT met (kept with --allow-timing-failure)" if timing["allowed_failure"]
            else "NOT met")
        lines.append(f"- Fmax {timing['fmax_mhz']} MHz against a {timing['target_mhz']:g} MHz "
                     f"target: {verdict}")
    if flow.get("flow"):
        lines.append(f"- flow: {flow['flow']}" + (f", {flow['seconds']} s" if flow.get("seconds")
                                                   else ""))
    if flow.get("clock_mhz"):
        lines.append(f"- clock {flow['clock_mhz']} MHz"
                     + (f" from a PLL {flow['pll']}" if flow.get("pll") else "")
                     + f", UART {flow.get('baud')} baud, design id {flow.get('design_id')}")
    if flow.get("note"):
        lines.append(f"- note: {flow['note']}")
    if fit and fit.get("weights") == "uploaded":
        size = flow.get("weight_image_bytes")
        lines.append(f"- weights: uploaded at run time ({f'{size} bytes, ' if size else ''}"
                     f"SPRAM on iCE40); `python -m compiler run` sends them when the board "
                     f"does not hold them")
    path = flow.get("critical_path")
    if path:
        lines.append(f"- critical path: {path['from']} -> {path['to']}, {path['delay_ns']} ns "
                     f"({path['logic_ns']} ns logic in {path['levels']} levels, "
                     f"{path['routing_ns']} ns routing)")
    for key, label in (("vivado", "Vivado plan"), ("openxc7_script", "openXC7 plan")):
        if flow.get("plans", {}).get(key):
            lines.append(f"- {label}: `{flow['plans'][key]}`")
    res = r.get("resources") or {}
    if res and all(isinstance(v, dict) and "used" in v for v in res.values()):
        source = flow.get("resources_source", "nextpnr report")
        lines += ["", f"Utilisation ({source}):", "", "| resource | used | available | % |",
                  "|---|---|---|---|"]
        for kind, v in res.items():
            pct = "" if v.get("percent") is None else v["percent"]
            lines.append(f"| {v.get('what', kind)} | {v['used']} | {v['available']} | {pct} |")
    if fit:
        lines += ["", "Estimate before synthesis (fit check):", "",
                  "| resource | estimated | available |", "|---|---|---|"]
        for kind in ("bram_blocks", "spram_blocks", "dsps", "luts", "ffs"):
            if kind in fit and (kind != "spram_blocks" or fit[kind]["available"]):
                lines.append(f"| {kind} | {fit[kind]['used']} | {fit[kind]['available']} |")
    if len(lines) == 3:
        lines.append("- no board flow run")
    return lines
