"""The ``qc`` command line: compile, search, run, inspect, targets.

Every :class:`~qcompiler.errors.QcError` is printed as one message and exits with status 2; nothing is
written on failure.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
import typer.rich_utils
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from qcompiler.config import CompileConfig
from qcompiler.errors import QcError, QcWarning

#: columns of help and tables when the output is not a terminal (rich would cut them at 80).
_PIPE_WIDTH = 160
_width = None if sys.stdout.isatty() or "COLUMNS" in os.environ else _PIPE_WIDTH
if _width is not None:
    typer.rich_utils.MAX_WIDTH = _width

app = typer.Typer(add_completion=False, no_args_is_help=True, help="qc: quantize float ONNX models into integer-only code.")
console = Console(stderr=True, width=_width)
out = Console(width=_width)


def _show_version(value: bool) -> None:
    if value:
        from qcompiler import __version__

        out.print(f"qc {__version__}")
        raise typer.Exit()


@app.callback()
def options(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="show the log of the libraries qc uses "
                                          "(onnxscript, onnx-ir, TVM's Python side) and Python warnings")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_show_version, is_eager=True,
                                          help="print qc's version and exit")] = False,
) -> None:
    """qc: quantize float ONNX models into integer-only code."""
    if verbose:
        logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")


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


_DEFAULTS = CompileConfig()


def _with_default(text: str, field: str) -> str:
    """Help text showing the :class:`CompileConfig` default of ``field`` (the flag's own default is None, so
    that a value from ``--config`` is kept unless the flag is given)."""
    value = getattr(_DEFAULTS, field)
    shown = {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value
    return f"{text} \\[default: {shown}]"  # escaped: help text is rich markup


@app.command()
def compile(
    model: Annotated[Path, typer.Argument(help="float ONNX model")],
    output: Annotated[Path, typer.Option("-o", "--output", help="artifact directory to write")] = Path("out"),
    target: Annotated[str | None, typer.Option(help=_with_default("target name (see `qc targets`)", "target"))] = None,
    calib: Annotated[Path | None, typer.Option("--calib", "--calibration", help=".npz keyed by input name")] = None,
    calibration_method: Annotated[str | None, typer.Option(
        "--calibration-method", help=_with_default("minmax | percentile | entropy | mse", "calibration_method"))] = None,
    percentile: Annotated[float | None, typer.Option(
        help=_with_default("percentile for --calibration-method percentile", "percentile"))] = None,
    activation_type: Annotated[str | None, typer.Option(
        "--activation-type", help=_with_default("uint8 | int8", "activation_dtype"))] = None,
    input_shape: Annotated[list[str], typer.Option("--input-shape", help="name=d0,d1,... for dynamic inputs "
                                                   "(a dynamic batch alone defaults to 1)")] = [],  # noqa: B006
    target_option: Annotated[list[str], typer.Option("--target-option", help="key=value, e.g. mcpu=znver4")] = [],  # noqa: B006
    ram_limit: Annotated[str | None, typer.Option("--ram-limit", help="MCU targets: max RAM (bytes, 512K, 2M)")] = None,
    flash_limit: Annotated[str | None, typer.Option("--flash-limit", help="MCU targets: max flash (bytes, 2M)")] = None,
    eval_data: Annotated[Path | None, typer.Option("--eval", help=".npz with inputs and 'labels' for accuracy")] = None,
    bits: Annotated[str | None, typer.Option(
        help=f"weight and activation widths wXaY, e.g. w8a8, w4a4 \\[default: w{_DEFAULTS.weight_bits}"
             f"a{_DEFAULTS.activation_bits}]")] = None,
    attn_bits: Annotated[int | None, typer.Option(
        "--attn-bits", help=_with_default("post-Softmax width (codes for log2)", "attention_bits"))] = None,
    softmax: Annotated[str | None, typer.Option(
        help=_with_default("integer Softmax: table | shift | poly", "softmax"))] = None,
    softmax_quant: Annotated[str | None, typer.Option(
        "--softmax-quant", help=_with_default("post-Softmax codes: uniform | log2 | log-sqrt2", "softmax_quant"))] = None,
    gelu: Annotated[str | None, typer.Option(help=_with_default("integer GELU: table | shift | poly", "gelu"))] = None,
    reparam: Annotated[bool | None, typer.Option(
        "--reparam/--no-reparam", help=_with_default("RepQ-ViT reparameterization of post-LayerNorm activations",
                                                     "reparam"))] = None,
    config: Annotated[Path | None, typer.Option(help="JSON config (same keys as CompileConfig); flags given "
                                                "on the command line override it")] = None,
    tuning_db: Annotated[Path | None, typer.Option("--tuning-db", help="x86, aarch64: tuned schedules from a `qc tune` "
                                                   "database directory")] = None,
    force: Annotated[bool, typer.Option(help="replace an existing output directory")] = False,
) -> None:
    """Quantize MODEL with calibration data and compile it into an artifact directory."""
    from qcompiler.model_io import require_model_file
    from qcompiler.targets import check_target_name

    require_model_file(model)  # the cheap checks first: nothing heavy (TVM, onnxruntime) is loaded yet
    if output.exists() and not force:
        raise QcError(f"output directory {output} already exists; pass --force to replace it")
    if calib is None:
        raise QcError("calibration data is required: pass --calib file.npz keyed by the model's input names "
                      "(first axis = samples); qc never invents calibration data")
    if not calib.is_file():
        raise QcError(f"calibration file '{calib}' does not exist or is not a file")
    base = CompileConfig.load(config) if config else CompileConfig()
    given = {"target": target, "calibration_method": calibration_method, "percentile": percentile,
             "activation_dtype": activation_type, "attention_bits": attn_bits, "softmax": softmax,
             "softmax_quant": softmax_quant, "gelu": gelu, "reparam": reparam}
    settings = base.replace(
        input_shapes={**base.input_shapes, **_parse_shapes(input_shape)},
        target_options={**base.target_options, **_parse_options(target_option),
                        **{k: v for k, v in (("ram_limit", ram_limit), ("flash_limit", flash_limit),
                                             ("tuning_db", tuning_db and str(tuning_db))) if v is not None}},
        **(_parse_bits(bits) if bits is not None else {}),
        **{k: v for k, v in given.items() if v is not None},
    )
    check_target_name(settings.target)
    import qcompiler

    with _progress() as bar:
        report = _bar_reporter(bar)
        artifact = qcompiler.compile(model, calibration=calib, config=settings, progress=report)
        if eval_data is not None:
            from qcompiler.evaluate import evaluate_accuracy
            from qcompiler.layer_errors import layer_errors

            artifact.report["accuracy"] = evaluate_accuracy(artifact, eval_data, progress=report)
            q = artifact.quantized
            artifact.report["layer_errors"] = layer_errors(q.float_model, q.qdq_model, q.int_model, eval_data)
    artifact.save(output, force=force)
    _print_summary(artifact.report, output)
    if eval_data is not None:
        out.print(_errors_table(artifact.report["layer_errors"], title="worst layers", limit=5))
        out.print(f"per-layer report: {output / 'report.html'} (every layer: qc inspect {output} --errors)")


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
    for e in report["inputs"]:
        out.print(f"input {e['name']}: {e['int_dtype']}{e['shape']}")
    sizes = report["weight_bytes"]
    out.print(f"weights: {sizes['float']:,} bytes float -> {sizes['integer']:,} bytes integer "
              f"({sizes['float'] / max(sizes['integer'], 1):.2f}x smaller)")
    if sizes.get("packed", sizes["integer"]) < sizes["integer"]:
        out.print(f"         {sizes['packed']:,} bytes with sub-8-bit weights packed "
                  f"({sizes['float'] / max(sizes['packed'], 1):.2f}x smaller)")
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
def search(
    model: Annotated[Path, typer.Argument(help="float ONNX model")],
    calib: Annotated[Path, typer.Option("--calib", "--calibration", help=".npz keyed by input name")],
    eval_data: Annotated[Path, typer.Option("--eval", help=".npz with inputs (and optional 'labels') that score "
                                            "candidates")],
    output: Annotated[Path, typer.Option("-o", "--output", help="search directory (resumed if it holds the "
                                         "same search)")] = Path("search"),
    target: Annotated[str, typer.Option(help="target the chosen config is for")] = "x86",
    objective: Annotated[str, typer.Option(help="size (weight bytes) | bops | latency (measured per layer on "
                                           "the target)")] = "size",
    budget: Annotated[float, typer.Option(help="cost limit as a fraction of the base config's")] = 0.6,
    method: Annotated[str, typer.Option(help="ilp | random (per-layer widths) | xgboost | grid | genetic "
                                        "(recipe search)")] = "ilp",
    trials: Annotated[int, typer.Option(help="random and recipe searches: configs to measure")] = 20,
    widths: Annotated[str, typer.Option(help="weight widths to choose from, e.g. 4,8 or 2,4,6,8")] = "4,8",
    sensitivity: Annotated[str, typer.Option(help="ilp (and the recipes' ILP point): measured (one "
                                             "candidate per layer and width) | proxy (no candidate)")] = "measured",
    samples: Annotated[int, typer.Option(help="evaluation samples that score a candidate")] = 256,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    config: Annotated[Path | None, typer.Option(help="base JSON config (recipe and default widths)")] = None,
    prior: Annotated[list[Path] | None, typer.Option(metavar="<dir>", help="recipe searches: -o directory of an "
                                                     "earlier recipe search (another model) to learn from; "
                                                     "repeatable")] = None,
    rpc_tracker: Annotated[str | None, typer.Option(help="--objective latency: time the layers on a device of "
                                                    "this TVM RPC tracker, HOST:PORT")] = None,
    rpc_key: Annotated[str | None, typer.Option(help="the device's key at the tracker")] = None,
) -> None:
    """Choose per-layer weight widths or a quantization recipe of MODEL under a budget; writes the trials,
    the Pareto front and chosen.json for `qc compile --config`."""
    from qcompiler.model_io import require_model_file
    from qcompiler.targets import check_target_name

    require_model_file(model)
    check_target_name(target)
    _require_files(("--calib", calib), ("--eval", eval_data))
    try:
        chosen_widths = tuple(int(w) for w in widths.split(","))
    except ValueError:
        raise QcError(f"--widths {widths!r}: expected comma-separated integers, e.g. 4,8") from None
    import qcompiler

    with _progress() as bar:
        result = qcompiler.search(model, calib, eval_data, target=target, objective=objective, budget=budget,
                                  method=method, trials=trials, widths=chosen_widths, sensitivity=sensitivity,
                                  samples=samples, output=output, seed=seed,
                                  base=CompileConfig.load(config) if config else None, prior=tuple(prior or ()),
                                  progress=_bar_reporter(bar), rpc_tracker=rpc_tracker, rpc_key=rpc_key)
    table = Table(title=f"qc search -> {output}: Pareto front of {len(result.trials)} trials "
                        f"({result.metric_kind}; float model {result.float_metric:.4f})")
    for column in ("trial", "cost", result.metric_kind, "rel. L2", "bytes (packed)", "widths"):
        table.add_column(column, justify="left" if column in ("trial", "widths") else "right")
    shown = {t["key"]: t for t in [*result.pareto, result.chosen]}.values()  # the front and the chosen point
    for trial in sorted(shown, key=lambda t: t["cost"]):
        mark = " (chosen)" if trial["key"] == result.chosen["key"] else ""
        table.add_row(trial["kind"] + mark, f"{trial['cost']:.3f}", f"{trial['score']['metric']:.4f}",
                      f"{trial['score']['rel_l2']:.3g}", f"{trial['score']['weight_bytes']:,}", _width_counts(trial))
    out.print(table)
    if "recipe" in result.chosen:
        out.print("chosen recipe: " + ", ".join(f"{k}={v}" for k, v in result.chosen["recipe"].items()))
    for failure in result.failed:
        out.print(f"refused recipe {failure['recipe']}: {failure['error']}")
    out.print(f"chosen: {output / 'chosen.json'} -> qc compile {model} --calib {calib} --config "
              f"{output / 'chosen.json'} -o out/")


@app.command()
def tune(
    model: Annotated[Path, typer.Argument(help="float ONNX model")],
    calib: Annotated[Path, typer.Option("--calib", "--calibration", help=".npz keyed by input name (also the "
                                        "samples every tuned kernel is checked bit-exact on)")],
    db: Annotated[Path, typer.Option("--db", help="tuning database directory (resumed; written as TVM's JSON "
                                     "database, plus tune.json)")] = Path("tuning"),
    target: Annotated[str, typer.Option(help="target (x86, aarch64)")] = "x86",
    trials: Annotated[int, typer.Option(help="MetaSchedule trials per kernel")] = 32,
    kernels: Annotated[int, typer.Option(help="how many of the slowest generic kernels to tune")] = 4,
    samples: Annotated[int, typer.Option(help="calibration samples each tuned build is checked on")] = 4,
    input_shape: Annotated[list[str], typer.Option("--input-shape", help="name=d0,d1,... for dynamic inputs")] = [],  # noqa: B006
    target_option: Annotated[list[str], typer.Option("--target-option", help="key=value, e.g. mcpu=znver4")] = [],  # noqa: B006
    config: Annotated[Path | None, typer.Option(help="JSON config the model is quantized with (as for compile)")] = None,
    rpc_tracker: Annotated[str | None, typer.Option("--rpc-tracker", help="HOST:PORT of a TVM RPC tracker: time "
                                                    "and check on a device registered there")] = None,
    rpc_key: Annotated[str | None, typer.Option("--rpc-key", help="the device's key at the tracker")] = None,
) -> None:
    """Tune the slowest generic kernels of MODEL's build with MetaSchedule into a database that
    `qc compile --tuning-db` applies; each kept schedule is checked bit-exact first (on the device, with
    --rpc-tracker)."""
    from qcompiler.model_io import require_model_file
    from qcompiler.targets import check_target_name

    require_model_file(model)
    check_target_name(target)
    _require_files(("--calib", calib))
    base = CompileConfig.load(config) if config else CompileConfig()
    settings = base.replace(target=target, input_shapes={**base.input_shapes, **_parse_shapes(input_shape)},
                            target_options={**base.target_options, **_parse_options(target_option)})
    from qcompiler.autotune.tune import tune as run_tune

    with _progress() as bar:
        report = run_tune(model, calib, db, settings, trials=trials, kernels=kernels, samples=samples,
                          progress=_bar_reporter(bar), rpc_tracker=rpc_tracker, rpc_key=rpc_key)
    table = Table(title=f"qc tune -> {db}: {report['records']} schedule(s) in the database "
                        f"(timed on {report['measured_on']}, checked on {report['samples']} samples)")
    for column in ("kernel", "calls", "default us", "tuned us", "speed-up", "status"):
        table.add_column(column, justify="left" if column in ("kernel", "status") else "right")
    for row in (r for r in report["kernels"] if r["model"] == report["model"]):  # this model's kernels
        table.add_row(row["kernel"][:60], str(row["calls"]), _microseconds(row["default_seconds"]),
                      _microseconds(row["tuned_seconds"]), f"{row['speedup']:.2f}x" if "speedup" in row else "-",
                      row["status"])
    out.print(table)
    target_flag = "" if target == "x86" else f" --target {target}"
    out.print(f"apply: qc compile {model}{target_flag} --calib {calib} --tuning-db {db} -o out_tuned/")


def _microseconds(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e6:.2f}"


def _require_files(*options: tuple[str, Path]) -> None:
    """Refuse the first ``(option, path)`` whose path is not a file."""
    for name, path in options:
        if not path.is_file():
            raise QcError(f"{name} file '{path}' does not exist or is not a file")


def _width_counts(trial: dict) -> str:
    """``4b x12, 8b x3``: how many layers got each weight width."""
    import collections

    layers = trial["config"]["layers"]
    if not layers:
        return f"all {trial['config']['weight_bits']}b"
    counts = collections.Counter(entry["weight_bits"] for entry in layers.values())
    return ", ".join(f"{w}b x{n}" for w, n in sorted(counts.items()))


def _bar_reporter(bar: Progress):
    """A ``progress(stage, done, total)`` callback drawing one bar per stage (``total < 0``: unknown)."""
    tasks: dict[str, int] = {}

    def report(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = bar.add_task(stage, total=None if total < 0 else total)
        bar.update(tasks[stage], completed=done, total=None if total < 0 else total)

    return report


@app.command()
def run(
    artifact: Annotated[Path, typer.Argument(help="artifact directory")],
    input: Annotated[Path, typer.Option("--input", help=".npz keyed by model input name")],
    output: Annotated[Path, typer.Option("--output", help=".npz to write (float outputs by name)")],
    integer: Annotated[bool, typer.Option(help="also write the integer outputs (keyed by their tensor names, "
                                          "as Module.run_integer returns them)")] = False,
    threads: Annotated[int | None, typer.Option(help="CPU threads (default: every core)", min=1)] = None,
    emulate: Annotated[bool, typer.Option(help="run an artifact for another machine (aarch64, Cortex-M) "
                                          "under qemu")] = False,
    rpc_tracker: Annotated[str | None, typer.Option("--rpc-tracker", help="HOST:PORT of a TVM RPC tracker: run on "
                                                    "a device registered there (x86, aarch64 artifacts)")] = None,
    rpc_key: Annotated[str | None, typer.Option("--rpc-key", help="the device's key at the tracker")] = None,
) -> None:
    """Run a compiled artifact on float inputs from an .npz file."""
    import qcompiler
    from qcompiler.qmath import dequantize

    module = qcompiler.load(artifact, emulate=emulate, num_threads=threads, rpc_tracker=rpc_tracker, rpc_key=rpc_key)
    try:
        with np.load(input) as data:
            feeds = {k: data[k] for k in data.files}
    except (OSError, ValueError) as error:
        raise QcError(f"cannot read {input}: {error}") from error
    ints = module.run_integer(module.quantize_inputs(feeds))
    results = {e["name"]: dequantize(ints[e["int_name"]], e["scale"], e["zero_point"]) for e in module.outputs}
    if integer:
        results.update({e["int_name"]: ints[e["int_name"]] for e in module.outputs})
    np.savez(output, **results)
    out.print(f"wrote {', '.join(results)} to {output}")


@app.command("rpc-server")
def rpc_server(
    tracker: Annotated[str, typer.Option(help="HOST:PORT of the TVM RPC tracker to register with")],
    key: Annotated[str, typer.Option(help="the key clients ask the tracker for (--rpc-key)")],
    emulate: Annotated[str, typer.Option(help="architecture whose code the sessions run: aarch64 (under "
                                         "qemu-aarch64) or host")] = "aarch64",
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="first port to try (up to +100)")] = 9090,
) -> None:
    """Stand in for a device: serve TVM RPC sessions registered with a tracker until interrupted, each one
    running the client's code under qemu-aarch64 (or on this host). Real devices run TVM's own server."""
    import threading

    from qcompiler.targets import _cross, aarch64, rpc

    toolchains = {"aarch64": aarch64.AARCH64_TOOLCHAIN, "host": _cross.HOST_TOOLCHAIN}
    if emulate not in toolchains:
        raise QcError(f"--emulate must be one of {', '.join(toolchains)}, got {emulate!r}")
    if emulate == "aarch64" and aarch64.emulation_problems():
        raise QcError("cannot emulate aarch64 here:\n  " + "\n  ".join(aarch64.emulation_problems()))
    address = rpc.parse_tracker(tracker)
    rpc.tracker_keys(address, wait_seconds=30)  # a tracker still starting gets 30 s; a wrong address fails
    with rpc.RpcServer(toolchains[emulate], address, key, host=host, port=port, port_end=port + 100) as server:
        out.print(f"serving key {key!r} on {host}:{server.port} for the tracker {tracker} "
                  f"({'qemu-aarch64' if emulate == 'aarch64' else 'this host'}); Ctrl-C stops")
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            out.print(f"stopped after {server.sessions} session(s)")


@app.command()
def inspect(artifact: Annotated[Path, typer.Argument(help="artifact directory")],
            as_json: Annotated[bool, typer.Option("--json", help="print report.json")] = False,
            errors: Annotated[bool, typer.Option("--errors", help="print the per-layer error table, worst first "
                                                 "(stored by qc compile --eval, or recomputed with --eval, "
                                                 "--model and --calib)")] = False,
            eval_data: Annotated[Path | None, typer.Option("--eval", help="--errors: .npz to recompute the "
                                                           "errors on")] = None,
            model: Annotated[Path | None, typer.Option(help="--errors --eval: the float ONNX model the artifact "
                                                       "was compiled from")] = None,
            calib: Annotated[Path | None, typer.Option("--calib", "--calibration", help="--errors --eval: the "
                                                       "calibration .npz it was compiled with")] = None) -> None:
    """Show what was quantized how, per node."""
    from qcompiler.artifact import check_hashes, read_manifest
    from qcompiler.errors import ArtifactError

    manifest = read_manifest(artifact)
    check_hashes(artifact, manifest)
    report = json.loads((artifact / "report.json").read_text())
    if as_json:
        out.print_json(data=report)
        return
    if eval_data is not None or model is not None or calib is not None:
        if not errors or None in (eval_data, model, calib):
            raise QcError("recomputing per-layer errors takes --errors with all of --eval, --model and --calib")
        _require_files(("--eval", eval_data), ("--model", model), ("--calib", calib))
        from qcompiler.layer_errors import artifact_layer_errors

        report["layer_errors"] = artifact_layer_errors(artifact, manifest, model, calib, eval_data)
    if errors:
        if "layer_errors" not in report:
            raise ArtifactError(f"{artifact} has no per-layer errors: it was compiled without evaluation data; "
                                "recompute them with `qc inspect ARTIFACT --errors --eval eval.npz --model "
                                "model.onnx --calib calib.npz`, or recompile with `qc compile ... --eval eval.npz`")
        out.print(_errors_table(report["layer_errors"], title=f"per-layer error on "
                                f"{report['layer_errors']['samples']} samples, worst first"))
        return
    target = manifest["target"]
    out.print(f"target {target['name']} ({target.get('triple', '')}), library {manifest['library']['library']}")
    for side in ("inputs", "outputs"):
        for e in manifest[side]:
            params = "integer input" if e["scale"] is None else f"scale={e['scale']:.6g} zp={e['zero_point']}"
            out.print(f"{side[:-1]} {e['name']}: {e['int_dtype']}{e['shape']} {params}")
    table = Table()
    for column in ("node", "op", "bits", "integer form", "output scale", "zp", "range"):
        table.add_column(column)
    for node in report["nodes"]:
        form = " ".join(node["integer_ops"]) or (f"fused into {node['fused_into']}" if node.get("fused_into") else "-")
        q = node.get("output", {})
        rng = q.get("range")
        bits = f"w{node['bits']['weight']}a{node['bits']['activation']}" if "bits" in node else ""
        table.add_row(node["name"], node["op_type"], bits, form, f"{q['scale']:.4g}" if q else "",
                      str(q.get("zero_point", "")), f"[{rng[0]:.3g}, {rng[1]:.3g}]" if rng else "")
    out.print(table)
    if report.get("blocks"):
        out.print(_blocks_table(report["blocks"]))


def _errors_table(errors: dict, title: str, limit: int | None = None) -> Table:
    """The rows of a report's ``layer_errors`` (worst first, at most ``limit``) as a table."""
    from qcompiler.layer_errors import COLUMNS, table_rows

    table = Table(title=title)
    for column in COLUMNS:
        table.add_column(column, justify="left" if column in ("layer", "ops") else "right")
    for row in table_rows(errors["layers"][:limit]):
        table.add_row(*row)
    return table


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


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """qc's own warnings as one ``warning:`` line; other libraries' go to the log (shown by ``--verbose``)."""
    if issubclass(category, QcWarning):
        console.print(f"[bold yellow]warning:[/] {escape(str(message))}", highlight=False)
    else:
        logging.getLogger("py.warnings").info("%s: %s", category.__name__, message)


def main() -> None:
    """Entry point of the ``qc`` script: user errors exit with status 2 and one message."""
    warnings.showwarning = _show_warning
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
