"""The Python API: ``compile`` a float ONNX model into an artifact, ``load`` an artifact and run it."""

from __future__ import annotations

import json
import platform
import shutil
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime

from qcompiler.artifact import FORMAT, MANIFEST, atomic_directory, check_hashes, file_hashes, read_manifest
from qcompiler.config import CompileConfig
from qcompiler.driver import Progress, QuantizedModel, packed_weight_bytes, quantize_model, weight_bytes
from qcompiler.errors import QcError
from qcompiler.model_io import boundary, integer_region, is_integer_entry, require_model_file
from qcompiler.qmath import dequantize, quantize
from qcompiler.reference import integer_session
from qcompiler.report import build_report
from qcompiler.report_html import write_report_html
from qcompiler.targets import CompiledModule, get_target, set_num_threads
from qcompiler.targets.rpc import remote_loader

__all__ = ["Artifact", "Module", "compile", "load"]

INT_MODEL = "model.int.onnx"
QDQ_MODEL = "model.qdq.onnx"
REPORT = "report.json"
REPORT_HTML = "report.html"


@dataclass
class Artifact:
    """A compiled model in memory: the integer model, the library files and the report."""

    config: CompileConfig
    quantized: QuantizedModel
    target_info: dict
    library_info: dict
    build_dir: Path
    report: dict = field(default_factory=dict)

    def save(self, directory: str | Path, force: bool = False) -> Path:
        """Write the artifact directory atomically (see :mod:`qcompiler.artifact`)."""
        directory = Path(directory)
        with atomic_directory(directory, force=force) as staging:
            onnx.save(self.quantized.int_model, str(staging / INT_MODEL))
            onnx.save(self.quantized.qdq_model, str(staging / QDQ_MODEL))
            library_files = self._copy_library(staging)
            (staging / REPORT).write_text(json.dumps(self.report, indent=1))
            pages = []
            if "layer_errors" in self.report:  # computed by qc compile --eval (qcompiler.layer_errors)
                write_report_html(self.report, staging / REPORT_HTML)
                pages.append(REPORT_HTML)
            inputs, outputs = boundary(self.quantized.int_model)
            manifest = {
                "format": FORMAT,
                "inputs": inputs,
                "outputs": outputs,
                "target": self.target_info,
                "library": self.library_info,
                "config": self.config.to_json(),
                "versions": _versions(),
                "files": file_hashes(staging, [INT_MODEL, QDQ_MODEL, *library_files, REPORT, *pages]),
            }
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=1))
        return directory

    def _copy_library(self, staging: Path) -> list[str]:
        """Copy the built library (a file, or an MCU source tree without build outputs); return its files."""
        library = self.library_info["library"]
        source = self.build_dir / library
        if not source.is_dir():
            names = [library, *self.library_info.get("extra_files", [])]  # e.g. CUDA source and PTX
            for name in names:
                shutil.copyfile(self.build_dir / name, staging / name)
            return names
        shutil.copytree(source, staging / library, ignore=shutil.ignore_patterns("build"))
        return sorted(str(p.relative_to(staging)) for p in (staging / library).rglob("*") if p.is_file())

    def module(self, emulate: bool = False, rpc_tracker: str | None = None, rpc_key: str | None = None) -> Module:
        """The compiled module, loaded from the build directory (before or without saving); see :func:`load`."""
        target = get_target(self.config.target, **self.config.target_options)
        inputs, outputs = boundary(self.quantized.int_model)
        loader = target_loader(target, emulate, rpc_tracker, rpc_key)
        return Module(self.build_dir, {"inputs": inputs, "outputs": outputs}, loader(self.build_dir, self.library_info))


def compile(model, target: str | None = None, calibration=None, config: CompileConfig | None = None,
            progress: Progress | None = None, **options) -> Artifact:
    """Quantize ``model`` (path or ModelProto) with ``calibration`` data and build it for ``target``.

    ``calibration``: an ``.npz`` path keyed by input name (first axis = samples), a dict of such arrays, or
    an onnxruntime ``CalibrationDataReader``. ``options`` are :class:`CompileConfig` fields
    (``calibration_method="percentile"``, ``input_shapes={...}``, ...).
    """
    config = config or CompileConfig()
    if target is not None:
        options["target"] = target
    config = config.replace(**options) if options else config
    require_model_file(model)  # before get_target, which loads TVM (seconds)
    chosen = get_target(config.target, **config.target_options)
    quantized = quantize_model(model, calibration, config, chosen.requant_mantissa_bits, progress)
    build_dir = Path(_scratch_dir())
    start = time.perf_counter()
    step = (lambda name: progress("compile", 0, -1)) if progress else None
    library_info = chosen.compile(quantized.region(), build_dir, step)
    quantized.timings["compile"] = time.perf_counter() - start
    report = build_report(quantized.float_model, quantized.qdq_model, quantized.int_model, quantized.ranges,
                          quantized.layer_bits)
    report.update({
        "weight_bytes": {"float": weight_bytes(quantized.float_model), "integer": weight_bytes(quantized.int_model),
                         "packed": packed_weight_bytes(quantized)},
        "timings": quantized.timings,
        "calibration": {"method": config.calibration_method},
    })
    memory = {k: library_info[k] for k in ("flash_bytes", "ram_bytes", "arena_bytes", "stack_bytes", "weights_bytes")
              if k in library_info}
    if memory:
        report["memory"] = memory
    artifact = Artifact(config, quantized, chosen.describe(), library_info, build_dir, report)
    weakref.finalize(artifact, shutil.rmtree, build_dir, True)  # the build directory lives as long as the artifact
    return artifact


def _scratch_dir() -> str:
    return tempfile.mkdtemp(prefix="qc-build-")


def _versions() -> dict:
    import importlib.metadata as md

    names = ["qcompiler", "onnx", "onnxruntime", "onnx-ir", "apache-tvm", "apache-tvm-ffi", "numpy"]
    versions = {}
    for name in names:
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    versions["python"] = platform.python_version()
    return versions


class Module:
    """A loaded artifact: float in, float out, with the integer tensors available too."""

    def __init__(self, directory: Path, manifest: dict, compiled: CompiledModule):
        self.directory = directory
        self.manifest = manifest
        self.compiled = compiled
        self.inputs = manifest["inputs"]
        self.outputs = manifest["outputs"]

    def quantize_inputs(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Float feeds (by model input name) -> integer feeds of the compiled region (ONNX QuantizeLinear).

        Integer model inputs (token ids, attention masks) pass through unchanged; they must already have the
        input's dtype (a float or differently typed array is refused, never silently converted).
        """
        names = {e["name"] for e in self.inputs}
        problems = [f"unexpected input '{k}'" for k in feeds if k not in names]
        problems += [f"missing input '{e['name']}'" for e in self.inputs if e["name"] not in feeds]
        for e in self.inputs:
            shape = np.shape(feeds[e["name"]]) if e["name"] in feeds else None
            if shape is not None and list(shape) != list(e["shape"]):
                problems.append(f"input '{e['name']}' has shape {list(shape)}; the artifact was compiled for "
                                f"{e['shape']} (recompile with --input-shape {e['name']}="
                                f"{','.join(map(str, shape))} for another shape)")
            if is_integer_entry(e) and e["name"] in feeds and np.asarray(feeds[e["name"]]).dtype.name != e["int_dtype"]:
                problems.append(f"input '{e['name']}' is {np.asarray(feeds[e['name']]).dtype.name}, "
                                f"expected {e['int_dtype']} (integer inputs are passed through, not quantized)")
        if problems:
            raise QcError("; ".join(problems) + f"; the model's inputs are {sorted(names)}")
        return {e["int_name"]: np.asarray(feeds[e["name"]]) if is_integer_entry(e)
                else quantize(feeds[e["name"]], e["scale"], e["zero_point"], e["int_dtype"]) for e in self.inputs}

    def run_integer(self, int_feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the compiled integer region on integer feeds; integer outputs keyed by their tensor names."""
        results = self.compiled.run(int_feeds)
        return dict(zip(self.compiled.output_names, results, strict=True))

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Float feeds -> float outputs (quantize, run the integer code, dequantize), keyed by output name."""
        integers = self.run_integer(self.quantize_inputs(feeds))
        return {e["name"]: dequantize(integers[e["int_name"]], e["scale"], e["zero_point"]) for e in self.outputs}

    def profile(self, feeds: dict[str, np.ndarray], rounds: int = 10) -> list[tuple[str, int, float]]:
        """Per-kernel time of the compiled code on float ``feeds``: ``(kernel, calls per run, seconds per run)``,
        slowest first (see :meth:`CompiledModule.profile`)."""
        return self.compiled.profile(self.quantize_inputs(feeds), rounds)

    def reference_session(self) -> onnxruntime.InferenceSession:
        """onnxruntime running the integer region of ``model.int.onnx`` (the semantics the library must match)."""
        region = integer_region(onnx.load(str(self.directory / INT_MODEL)))
        return integer_session(region)


def target_loader(target, emulate: bool, rpc_tracker: str | None, rpc_key: str | None):
    """``target``'s loader: on this host, under its emulator, or on a device behind an RPC tracker."""
    if rpc_tracker is None and rpc_key is None:
        return target.load_emulated if emulate else target.load
    if emulate or rpc_tracker is None or rpc_key is None:
        raise QcError("running on an RPC device takes both rpc_tracker (host:port) and rpc_key, without emulate")
    return remote_loader(target, rpc_tracker, rpc_key)


def load(directory: str | Path, emulate: bool = False, num_threads: int | None = None, rpc_tracker: str | None = None,
         rpc_key: str | None = None) -> Module:  # fmt: skip
    """Load an artifact directory written by :func:`compile` / ``qc compile``.

    By default the library runs on this machine (the target says clearly why it cannot, e.g. a Cortex-M
    firmware image on x86). ``emulate=True`` runs an artifact for another machine under its emulator
    (qemu-aarch64, qemu-system-arm), one emulated process per :meth:`Module.run`. ``rpc_tracker`` (host:port)
    and ``rpc_key`` run an x86 or aarch64 library on a device registered with that TVM RPC tracker under that
    key (one session, held by the module; inputs and outputs cross the connection).
    ``num_threads`` sizes the CPU thread pool the compiled code runs on (default: ``TVM_NUM_THREADS``, else
    every core); the pool belongs to the process, so the last ``load`` that passes it wins.
    """
    if num_threads is not None:
        if emulate or rpc_tracker is not None:
            raise QcError("num_threads applies to code run on this host, not under an emulator or over RPC")
        set_num_threads(num_threads)
    directory = Path(directory)
    manifest = read_manifest(directory)
    check_hashes(directory, manifest)
    target_info = manifest["target"]
    options = {k: target_info[k] for k in get_target(target_info["name"]).option_names() if k in target_info}
    target = get_target(target_info["name"], **options)
    return Module(directory, manifest, target_loader(target, emulate, rpc_tracker, rpc_key)(directory, manifest["library"]))
