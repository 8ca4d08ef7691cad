"""The ``qc`` command line: compile, run, inspect, targets.

Every :class:`~qcompiler.errors.QcError` is printed as one message and exits with status 2; nothing is
written on failure.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from qcompiler.config import CompileConfig
from qcompiler.errors import QcError
from qcompiler.evaluate import evaluate_accuracy
from qcompiler.qmath import dequantize

app = typer.Typer(add_completion=False, no_args_is_help=True, help="qc: quantize float ONNX models into integer-only code.")
console = Console(stderr=True)
out = Console()


def _parse_shapes(specs: list[str]) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for spec in specs:
        name, _, dims = spec.partition("=")
        try:
            shapes[name] = tuple(int(d) for d in dims.split(","))
        except ValueError:
            raise QcError(f"--input-shape {spec!r}: expected name=d0,d1,... e.g. input=1,3,224,224") from None
    return shapes


def _parse_options(specs: list[str]) -> dict[str, str]:
    options = {}
    for spec in specs:
        key, sep, value = spec.partition("=")
        if not sep:
            raise QcError(f"--target-option {spec!r}: expected key=value, e.g. mcpu=znver4")
        options[key.replace("-", "_")] = value
    return options


def _parse_bits(spec: str) -> dict[str, int]:
    """``w4a8`` -> weight and activation bit widths."""
    import re

    match = re.fullmatch(r"w(\d+)a(\d+)", spec.strip().lower())
    if match is None:
        raise QcError(f"--bits {spec!r}: expected wXaY, e.g. w8a8 or w4a4")
    return {"weight_bits": int(match[1]), "activation_bits": int(match[2])}


@app.command()
def compile(
    model: Annotated[Path, typer.Argument(help="float ONNX model")],
    output: Annotated[Path, typer.Option("-o", "--output", help="artifact directory to write")] = Path("out"),
    target: Annotated[str, typer.Option(help="target name (see `qc targets`)")] = "x86",
    calib: Annotated[Path | None, typer.Option("--calib", "--calibration", help=".npz keyed by input name")] = None,
    calibration_method: Annotated[str, typer.Option("--calibration-method", "--calibration_method",
                                                    help="minmax | percentile | entropy | mse")] = "minmax",
    percentile: Annotated[float, typer.Option(help="percentile for --calibration-method percentile")] = 99.999,
    activation_type: Annotated[str, typer.Option("--activation-type", "--activation_type",
                                                 help="uint8 | int8")] = "uint8",
    input_shape: Annotated[list[str], typer.Option("--input-shape", help="name=d0,d1,... for dynamic inputs")] = [],  # noqa: B006
    target_option: Annotated[list[str], typer.Option("--target-option", help="key=value, e.g. mcpu=znver4")] = [],  # noqa: B006
    ram_limit: Annotated[str | None, typer.Option("--ram-limit", help="MCU targets: max RAM (bytes, 512K, 2M)")] = None,
    flash_limit: Annotated[str | None, typer.Option("--flash-limit", help="MCU targets: max flash (bytes, 2M)")] = None,
    eval_data: Annotated[Path | None, typer.Option("--eval", help=".npz with inputs and 'labels' for accuracy")] = None,
    bits: Annotated[str | None, typer.Option(help="weight and activation widths wXaY, e.g. w8a8, w4a4")] = None,
    attn_bits: Annotated[int | None, typer.Option("--attn-bits", help="post-Softmax width (codes for log2)")] = None,
    softmax: Annotated[str | None, typer.Option(help="integer Softmax: table | shift | poly")] = None,
    softmax_quant: Annotated[str | None, typer.Option("--softmax-quant",
                                                      help="post-Softmax codes: uniform | log2 | log-sqrt2")] = None,
    gelu: Annotated[str | None, typer.Option(help="integer GELU: table | shift | poly")] = None,
    reparam: Annotated[bool | None, typer.Option("--reparam/--no-reparam",
                                                 help="RepQ-ViT reparameterization of post-LayerNorm activations")] = None,
    config: Annotated[Path | None, typer.Option(help="JSON config (same keys as CompileConfig)")] = None,
    force: Annotated[bool, typer.Option(help="replace an existing output directory")] = False,
) -> None:
    """Quantize MODEL with calibration data and compile it into an artifact directory."""
    import qcompiler
    from qcompiler.model_io import require_model_file

    require_model_file(model)  # before anything loads TVM

    base = CompileConfig.load(config) if config else CompileConfig()
    settings = base.replace(
        target=target, calibration_method=calibration_method, percentile=percentile, activation_dtype=activation_type,
        input_shapes={**base.input_shapes, **_parse_shapes(input_shape)},
        target_options={**base.target_options, **_parse_options(target_option),
                        **{k: v for k, v in (("ram_limit", ram_limit), ("flash_limit", flash_limit)) if v is not None}},
        **(_parse_bits(bits) if bits is not None else {}),
        **{k: v for k, v in (("attention_bits", attn_bits), ("softmax", softmax), ("softmax_quant", softmax_quant),
                             ("gelu", gelu), ("reparam", reparam)) if v is not None},
    )
    if output.exists() and not force:
        raise QcError(f"output directory {output} already exists; pass --force to replace it")
    if calib is None:
        raise QcError("calibration data is required: pass --calib file.npz keyed by the model's input names "
                      "(first axis = samples); qc never invents calibration data")
    with _progress() as bar:
        tasks: dict[str, int] = {}

        def report(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=None if total < 0 else total)
            bar.update(tasks[stage], completed=done, total=None if total < 0 else total)

        artifact = qcompiler.compile(model, calibration=calib, config=settings, progress=report)
        if eval_data is not None:
            artifact.report["accuracy"] = evaluate_accuracy(artifact, eval_data, progress=report)
    artifact.save(output, force=force)
    _print_summary(artifact.report, output)


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TimeElapsedColumn(), console=console, transient=True)


def _print_summary(report: dict, output: Path) -> None:
    from qcompiler.report import op_count_rows

    table = Table(title=f"qc compile -> {output}")
    table.add_column("op type")
    table.add_column("nodes", justify="right")
    table.add_column("integer", justify="right")
    for op, total, done in op_count_rows(report):
        table.add_row(op, str(total), str(done))
    out.print(table)
    sizes = report["weight_bytes"]
    out.print(f"weights: {sizes['float']:,} bytes float -> {sizes['integer']:,} bytes integer "
              f"({sizes['float'] / max(sizes['integer'], 1):.2f}x smaller)")
    memory = report.get("memory")
    if memory:
        out.print("memory: " + ", ".join(f"{k.removesuffix('_bytes')} {v:,} B" for k, v in memory.items()))
    timings = ", ".join(f"{k} {v:.1f}s" for k, v in report["timings"].items())
    out.print(f"time: {timings}")
    accuracy = report.get("accuracy")
    if accuracy:
        out.print(f"accuracy on {accuracy['samples']} samples: float {accuracy['float']:.4f}, "
                  f"integer {accuracy['integer']:.4f} (delta {accuracy['integer'] - accuracy['float']:+.4f})")


@app.command()
def run(
    artifact: Annotated[Path, typer.Argument(help="artifact directory")],
    input: Annotated[Path, typer.Option("--input", help=".npz keyed by model input name")],
    output: Annotated[Path, typer.Option("--output", help=".npz to write (float outputs by name)")],
    integer: Annotated[bool, typer.Option(help="also write the integer outputs (key suffix ':int')")] = False,
    threads: Annotated[int | None, typer.Option(help="CPU threads (default: every core)", min=1)] = None,
) -> None:
    """Run a compiled artifact on float inputs from an .npz file."""
    import qcompiler

    module = qcompiler.load(artifact, num_threads=threads)
    try:
        with np.load(input) as data:
            feeds = {k: data[k] for k in data.files}
    except (OSError, ValueError) as error:
        raise QcError(f"cannot read {input}: {error}") from error
    ints = module.run_integer(module.quantize_inputs(feeds))
    results = {e["name"]: dequantize(ints[e["int_name"]], e["scale"], e["zero_point"]) for e in module.outputs}
    if integer:
        results.update({f"{e['name']}:int": ints[e["int_name"]] for e in module.outputs})
    np.savez(output, **results)
    out.print(f"wrote {', '.join(results)} to {output}")


@app.command()
def inspect(artifact: Annotated[Path, typer.Argument(help="artifact directory")],
            as_json: Annotated[bool, typer.Option("--json", help="print report.json")] = False) -> None:
    """Show what was quantized how, per node."""
    from qcompiler.artifact import check_hashes, read_manifest

    manifest = read_manifest(artifact)
    check_hashes(artifact, manifest)
    report = json.loads((artifact / "report.json").read_text())
    if as_json:
        out.print_json(data=report)
        return
    target = manifest["target"]
    out.print(f"target {target['name']} ({target.get('triple', '')}), library {manifest['library']['library']}")
    for side in ("inputs", "outputs"):
        for e in manifest[side]:
            params = "integer input" if e["scale"] is None else f"scale={e['scale']:.6g} zp={e['zero_point']}"
            out.print(f"{side[:-1]} {e['name']}: {e['int_dtype']}{e['shape']} {params}")
    table = Table()
    for column in ("node", "op", "integer form", "output scale", "zp", "range"):
        table.add_column(column)
    for node in report["nodes"]:
        form = " ".join(node["integer_ops"]) or (f"fused into {node['fused_into']}" if node.get("fused_into") else "-")
        q = node.get("output", {})
        rng = q.get("range")
        table.add_row(node["name"], node["op_type"], form, f"{q['scale']:.4g}" if q else "", str(q.get("zero_point", "")),
                      f"[{rng[0]:.3g}, {rng[1]:.3g}]" if rng else "")
    out.print(table)
    if report.get("blocks"):
        out.print(_blocks_table(report["blocks"]))


def _blocks_table(blocks: list[dict]) -> Table:
    """Per transformer block: the integer method of each nonlinearity and its calibrated constants."""
    table = Table(title="integer nonlinearities per block")
    for column in ("block", "op", "method", "constants", "calibration MSE", "node"):
        table.add_column(column)
    for block in blocks:
        for entry in block["nonlinear"]:
            constants = ", ".join(f"{k}={v}" for k, v in sorted(entry["constants"].items()))
            error = "" if entry["error"] is None else f"{entry['error']:.3g}"
            table.add_row(block["block"], entry["op"], entry["method"], constants or "-", error, entry["node"])
    return table


@app.command()
def targets() -> None:
    """List the compilation targets and their capability tables."""
    from qcompiler.targets import available_targets, get_target

    table = Table(title="qc targets (capability tables)")
    for column in ("target", "triple", "int widths", "dot product", "cheap int64 mul", "mantissa bits",
                   "runs here", "options (defaults)"):
        table.add_column(column)
    for name in available_targets():
        target = get_target(name)
        caps = target.describe()
        options = ", ".join(f"{k}={caps[k]}" for k in target.option_names())
        table.add_row(name, caps["triple"], ",".join(map(str, caps["native_int_widths"])), str(caps["dot_product"]),
                      str(caps["cheap_int64_multiply"]), str(caps["requant_mantissa_bits"]),
                      str(caps["runs_on_host"]), options)
    out.print(table)


def main() -> None:
    """Entry point of the ``qc`` script: user errors exit with status 2 and one message."""
    try:
        app(standalone_mode=False)
    except QcError as error:
        console.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False)
        sys.exit(error.exit_code)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        sys.exit(130)
    except typer.TyperException as error:  # usage errors: unknown option, missing argument, ...
        error.show()
        sys.exit(error.exit_code)
