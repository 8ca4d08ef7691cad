"""qc's CUDA target on a real GPU: bit-exact against onnxruntime (CPU), and timed against onnxruntime CUDA FP32.

Models: the tiny test CNN, the Fashion-MNIST CNN and EfficientNet-Lite0, compiled for ``cuda`` ``sm_90``
(H100 / H200). Two phases, so that the GPU machine needs neither the TVM compiler, torch nor qc itself:

``prepare --out DIR`` (any x86-64 machine with qc's dev environment; no GPU; nvcc for the fatbins)
    compiles each model with ``qcompiler.compile(..., target="cuda")`` and writes ``DIR/<model>/``: the
    library ``model.so`` (its kernels stored as CUDA C, JIT-compiled when loaded), ``model.fatbin`` (that
    CUDA C built here by nvcc for sm_90, handed to the loader instead of compiling on the GPU machine),
    ``region.onnx`` (the integer region: the reference's model), ``float.onnx`` (the float model, for the
    onnxruntime FP32 timing), ``feeds.npz`` (quantized samples plus one full-range integer feed),
    ``float_feeds.npz`` and ``bundle.json``. ``--runtime-kit`` also copies TVM's Python package *without*
    its 250 MB compiler library, and tvm_ffi, into ``DIR/site``: TVM then runs runtime-only (20 MiB). The
    three bundles plus the kit are about 60 MiB. ``--cpu-dry-run`` compiles for x86 instead, so that ``run``
    can be tried on a machine without a GPU.

``run --dir DIR`` (the GPU machine)
    loads each library on ``cuda:0`` through the Relax VM, checks every output of every feed against
    onnxruntime's CPU provider on ``region.onnx`` (bit for bit, dtype and shape too), then times, as
    medians: qc device-resident (inputs already on the GPU), qc end to end (float numpy in and out:
    quantize, copy in, kernels, copy out, dequantize), onnxruntime CUDA FP32 device-resident (IOBinding) and
    end to end; prints the ratios qc / onnxruntime. Exits 1 on any mismatch or failure, 2 without a GPU.

``all`` does both in one process (a GPU machine with the whole dev environment; the kernels are then
compiled by nvcc on that machine).

Requirements of ``run``: the NVIDIA driver (``libcuda.so.1``); the CUDA 13 runtime ``libcudart.so.13``, which
TVM's ``libtvm_runtime_cuda.so`` links (the script preloads both from ``/usr/local/cuda*``, the driver folder
or the ``nvidia-cuda-runtime`` pip package when the loader does not find them); numpy, ml_dtypes and
onnxruntime; TVM 0.27.0.post1 with apache-tvm-ffi 0.1.14.post1 built for the machine's Python. The
``apache-tvm`` wheel is ``py3-none`` but 95 MB; the ``apache-tvm-ffi`` wheel is per Python version, so for a
Python other than the kit's, unpack that version's wheel into ``DIR/site`` (``pip download --no-deps
--only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 apache-tvm-ffi==0.1.14.post1``).
Kernels without a matching fatbin are compiled when loaded: by nvcc when it is on PATH, else by TVM's own
callback (NVRTC through ``cuda-bindings``, or nvcc with ``TVM_CUDA_COMPILE_MODE=nvcc``; that callback needs
the full TVM, not the runtime-only kit). onnxruntime's CUDA provider needs ``onnxruntime-gpu``; without it
the FP32 baseline is onnxruntime CPU, and the report says so.

    .venv/bin/python -m benchmarks.cuda_check prepare --out /tmp/qc_cuda --runtime-kit     # here, ~4 min
    PYTHONPATH=/tmp/qc_cuda/site python3 benchmarks/cuda_check.py run --dir /tmp/qc_cuda   # on the GPU
    python -m benchmarks.cuda_check all                                                   # GPU + dev env

Not yet run on a GPU (none was available when it was written). Dry-run on CPU: ``prepare`` for cuda (all
three models, about 4 minutes on 2 cores), and ``prepare --cpu-dry-run`` + ``run`` with the runtime-only kit
(bit-exact, timings printed); the fatbin callback was exercised through TVM's FFI.
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MODELS = ("tiny_cnn", "fashion_cnn", "efficientnet_lite0")
ARCH = "sm_90"
#: inputs per model for the bit-exactness check (quantized float samples, then one full-range integer feed).
SAMPLES = 3


# ==== prepare: compile on any machine ========================================================================


def _float_samples(name: str, rng: np.random.Generator) -> tuple[Path, object, dict, list[np.ndarray]]:
    """(model path, calibration, input_shapes, float samples [1, ...]) for one model."""
    if name == "tiny_cnn":
        from tests.e2e.zoo import build_tiny_cnn

        path = build_tiny_cnn(Path(tempfile.mkdtemp(prefix="qc-tiny-")) / "tiny.onnx")
        calibration = {"input": rng.standard_normal((32, 1, 16, 16)).astype(np.float32)}
        samples = [rng.standard_normal((1, 1, 16, 16)).astype(np.float32) for _ in range(SAMPLES - 1)]
        return (
            path,
            calibration,
            {"input": (1, 1, 16, 16)},
            [*samples, np.full((1, 1, 16, 16), 1e6, np.float32)],
        )
    if name == "fashion_cnn":
        from examples.fashion_mnist import data

        path = REPO / "examples" / "fashion_mnist" / "cnn.onnx"
        if data.DATA_DIR.is_dir():
            images = data.preprocess(data.load_split("test")[0][:SAMPLES])
            calibration = data.preprocess(data.load_split("train")[0][:256])
        else:  # bit-exactness does not depend on the data; say so and go on
            print(f"  fashion_cnn: no data at {data.DATA_DIR}, using random images", flush=True)
            images = rng.uniform(-1, 1, (SAMPLES, 1, 28, 28)).astype(np.float32)
            calibration = rng.uniform(-1, 1, (256, 1, 28, 28)).astype(np.float32)
        return (
            path,
            {"input": calibration},
            {"input": (1, 1, 28, 28)},
            [images[i : i + 1] for i in range(SAMPLES)],
        )
    if name == "efficientnet_lite0":
        from examples.efficientnet_lite0.export import ensure_model

        calibration = {"input": rng.standard_normal((8, 3, 224, 224)).astype(np.float32)}
        samples = [rng.standard_normal((1, 3, 224, 224)).astype(np.float32) for _ in range(SAMPLES)]
        return ensure_model(), calibration, {}, samples
    raise SystemExit(f"unknown model {name!r}; choose from {', '.join(MODELS)}")


def _register_cuda_target() -> None:
    from qcompiler import targets

    targets._REGISTRY.setdefault("cuda", "qcompiler.targets.cuda:CudaTarget")  # until the registry has it


def _fatbin(source: str, arch: str) -> bytes:
    """``source`` built by nvcc for ``arch`` (SASS plus PTX), with the flags of TVM's nvcc JIT mode."""
    import tvm
    from tvm.support import nvcc

    number = arch.removeprefix("sm_")
    gencode = ["-gencode", f"arch=compute_{number},code=[sm_{number},compute_{number}]"]
    with tvm.target.Target({"kind": "cuda", "arch": arch}):
        return bytes(nvcc.compile_cuda(source, target_format="fatbin", arch=gencode, compiler="nvcc"))


def prepare_model(name: str, out: Path, fatbin: bool, cpu_dry_run: bool = False) -> None:
    """Compile ``name`` for cuda (for x86 with ``cpu_dry_run``) and write its bundle folder ``out / name``."""
    import onnx

    import qcompiler
    from qcompiler.model_io import boundary
    from qcompiler.qmath import quantize
    from qcompiler.reference import exact_for_onnxruntime
    from qcompiler.targets.cuda import check

    rng = np.random.default_rng(0)
    path, calibration, shapes, samples = _float_samples(name, rng)
    start = time.perf_counter()
    target = {"target": "x86"} if cpu_dry_run else {"target": "cuda", "target_options": {"arch": ARCH}}
    artifact = qcompiler.compile(path, calibration=calibration, input_shapes=shapes, **target)
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    info = artifact.library_info
    shutil.copyfile(artifact.build_dir / info["library"], folder / info["library"])  # model.cu is inside it
    # saved with the rewrite that makes onnxruntime's CPU reference exact on any host (qcompiler.reference)
    onnx.save(exact_for_onnxruntime(artifact.quantized.region()), str(folder / "region.onnx"))
    onnx.save(artifact.quantized.float_model, str(folder / "float.onnx"))
    inputs, outputs = boundary(artifact.quantized.int_model)
    feeds = [
        {e["int_name"]: quantize(s, e["scale"], e["zero_point"], e["int_dtype"]) for e in inputs}
        for s in samples
    ]
    feeds.append({s["name"]: _full_range(rng, s["dtype"], s["shape"]) for s in info["inputs"]})
    np.savez(folder / "feeds.npz", **{f"{i}/{k}": v for i, feed in enumerate(feeds) for k, v in feed.items()})
    np.savez(folder / "float_feeds.npz", **{e["name"]: samples[0] for e in inputs})
    source = "" if cpu_dry_run else check.cuda_source(artifact.build_dir)
    bundle = {
        "model": name,
        "device": "cpu" if cpu_dry_run else "cuda",
        "arch": ARCH,
        "library_info": info,
        "boundary": {"inputs": inputs, "outputs": outputs},
        "feeds": len(feeds),
        "source_sha256": hashlib.sha256(source.encode()).hexdigest(),
        "fatbin": None,
    }
    if fatbin and source and check.nvcc_available():
        (folder / "model.fatbin").write_bytes(_fatbin(source, ARCH))
        bundle["fatbin"] = "model.fatbin"
    (folder / "bundle.json").write_text(json.dumps(bundle, indent=1))
    floats = info.get("float_check", {})
    print(
        f"  {name}: {info.get('kernels', '?')} kernels, floats in CUDA C {floats.get('cuda_source')}, in PTX "
        f"{floats.get('ptx')}, PTX {info.get('ptx_instructions')}, {time.perf_counter() - start:.0f} s",
        flush=True,
    )


def _full_range(rng: np.random.Generator, dtype: str, shape) -> np.ndarray:
    limits = np.iinfo(dtype)
    return rng.integers(limits.min, limits.max, size=shape, endpoint=True, dtype=dtype)


def runtime_kit(out: Path) -> None:
    """Copy TVM (without libtvm_compiler.so) and tvm_ffi of this interpreter to ``out / "site"``."""
    import tvm
    import tvm_ffi

    site = out / "site"
    skip = shutil.ignore_patterns("libtvm_compiler.so", "3rdparty", "src", "include", "__pycache__", "*.a")
    for package in (tvm, tvm_ffi):
        source = Path(package.__file__).parent
        shutil.rmtree(site / source.name, ignore_errors=True)
        shutil.copytree(source, site / source.name, ignore=skip)
    size = sum(f.stat().st_size for f in site.rglob("*") if f.is_file()) / 2**20
    print(
        f"runtime kit: {site} ({size:.0f} MiB). tvm_ffi there is built for Python "
        f"{sys.version_info.major}.{sys.version_info.minor}; for another Python, replace it with that "
        "version's apache-tvm-ffi==0.1.14.post1 wheel, unpacked into the same folder.",
        flush=True,
    )


def prepare(out: Path, models: list[str], fatbin: bool, kit: bool, cpu_dry_run: bool = False) -> None:
    _register_cuda_target()
    where = "x86 (CPU dry run of the run phase)" if cpu_dry_run else f"cuda {ARCH}"
    print(f"compiling {', '.join(models)} for {where} into {out}", flush=True)
    for name in models:
        prepare_model(name, out, fatbin, cpu_dry_run)
    if kit:
        runtime_kit(out)


# ==== run: on the GPU ========================================================================================


def _preload_cuda_libraries() -> None:
    """Load libcuda.so.1 and libcudart.so.13 globally, from where they usually live, if the loader cannot."""
    candidates = {
        "libcuda.so.1": ["/usr/local/nvidia/lib64", "/usr/lib/x86_64-linux-gnu", "/usr/local/cuda*/compat"],
        "libcudart.so.13": [
            "/usr/local/cuda*/lib64",
            "/usr/local/cuda*/lib",
            "/usr/local/cuda*/targets/x86_64-linux/lib",
            *(str(Path(p) / "nvidia" / "*" / "lib") for p in sys.path if p.endswith("-packages")),
        ],
    }
    for library, folders in candidates.items():
        try:
            ctypes.CDLL(library, mode=ctypes.RTLD_GLOBAL)
            continue
        except OSError:
            pass
        for folder in folders:
            for found in sorted(glob.glob(str(Path(folder) / f"{library}*"))):
                try:
                    ctypes.CDLL(found, mode=ctypes.RTLD_GLOBAL)
                    print(f"preloaded {found}", flush=True)
                    break
                except OSError:
                    continue
            else:
                continue
            break


class Jit:
    """``tvm_callback_cuda_compile`` for loading: the bundle's fatbin when the source matches, else nvcc,
    else TVM's own callback. Counts which path each module took."""

    def __init__(self, arch: str):
        import tvm_ffi

        self.arch = arch
        self.fatbins: dict[str, bytes] = {}
        self.used: list[str] = []
        self._tvm_default = tvm_ffi.get_global_func("tvm_callback_cuda_compile", allow_missing=True)
        tvm_ffi.register_global_func("tvm_callback_cuda_compile", self, override=True)

    def __call__(self, code: str, *_) -> bytes:
        digest = hashlib.sha256(code.encode()).hexdigest()
        if digest in self.fatbins:
            self.used.append("bundle fatbin")
            return self.fatbins[digest]
        start = time.perf_counter()
        if shutil.which("nvcc"):
            with tempfile.TemporaryDirectory() as scratch:
                cu, out = Path(scratch) / "k.cu", Path(scratch) / "k.fatbin"
                cu.write_text(code)
                number = self.arch.removeprefix("sm_")
                cmd = [
                    "nvcc",
                    "--fatbin",
                    "-O3",
                    "-gencode",
                    f"arch=compute_{number},code=[sm_{number},compute_{number}]",
                    "-diag-suppress=177",
                    "-o",
                    str(out),
                    str(cu),
                ]
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode != 0:
                    raise RuntimeError(f"nvcc failed:\n{done.stdout}\n{done.stderr}"[-4000:])
                self.used.append(f"nvcc JIT {time.perf_counter() - start:.1f} s")
                return out.read_bytes()
        if self._tvm_default is None:
            raise RuntimeError("no nvcc on PATH and no TVM compile callback: cannot JIT the CUDA kernels")
        self.used.append(f"TVM callback ({os.environ.get('TVM_CUDA_COMPILE_MODE', 'nvrtc')})")
        return self._tvm_default(code)


def _median_ms(fn: Callable[[], object], sync: Callable[[], object], runs: int, budget_s: float) -> float:
    for _ in range(3):
        fn()
    sync()
    times, deadline = [], time.perf_counter() + budget_s
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
        if time.perf_counter() > deadline and len(times) >= 5:
            break
    return statistics.median(times)


def _outputs(result) -> list:
    import tvm

    return [result] if isinstance(result, tvm.runtime.Tensor) else list(result)


def _bit_exact(name: str, main, dev, folder: Path, bundle: dict) -> int:
    """Compare every feed against onnxruntime CPU on region.onnx; return the number of differing outputs."""
    import onnxruntime as ort
    import tvm

    info = bundle["library_info"]
    reference = ort.InferenceSession(str(folder / "region.onnx"), providers=["CPUExecutionProvider"])
    stored = np.load(folder / "feeds.npz")
    bad = 0
    for i in range(bundle["feeds"]):
        feed = {s["name"]: stored[f"{i}/{s['name']}"] for s in info["inputs"]}
        got = [
            t.numpy()
            for t in _outputs(main(*[tvm.runtime.tensor(feed[s["name"]], dev) for s in info["inputs"]]))
        ]
        want = reference.run(None, feed)
        for spec, g, w in zip(info["outputs"], got, want, strict=True):
            differing = int(np.count_nonzero(g != w)) if g.shape == w.shape else g.size
            if g.dtype != w.dtype or g.shape != w.shape or differing:
                bad += 1
                print(
                    f"  MISMATCH {name} feed {i} output {spec['name']}: {g.dtype}{list(g.shape)} vs "
                    f"{w.dtype}{list(w.shape)}, {differing} of {w.size} elements differ",
                    flush=True,
                )
    print(
        f"  {name}: {bundle['feeds']} feeds x {len(info['outputs'])} outputs, "
        f"{'bit-exact' if not bad else f'{bad} output(s) DIFFER'}",
        flush=True,
    )
    return bad


def _ort_fp32(folder: Path, feeds: dict, runs: int, budget_s: float) -> dict:
    """Median ms of onnxruntime FP32: CUDA provider (IOBinding and end to end) if available, else CPU."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        session = ort.InferenceSession(
            str(folder / "float.onnx"), options, providers=["CPUExecutionProvider"]
        )
        return {
            "provider": "CPU (no CUDAExecutionProvider: install onnxruntime-gpu)",
            "e2e": _median_ms(lambda: session.run(None, feeds), lambda: None, runs, budget_s),
        }
    session = ort.InferenceSession(
        str(folder / "float.onnx"),
        options,
        providers=[("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"],
    )
    if session.get_providers()[0] != "CUDAExecutionProvider":
        raise RuntimeError(f"onnxruntime did not take the CUDA provider: {session.get_providers()}")
    binding = session.io_binding()
    for name, value in feeds.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value, "cuda", 0))
    for output in session.get_outputs():
        binding.bind_output(output.name, "cuda", 0)
    return {
        "provider": "CUDA",
        "device": _median_ms(lambda: session.run_with_iobinding(binding), lambda: None, runs, budget_s),
        "e2e": _median_ms(lambda: session.run(None, feeds), lambda: None, runs, budget_s),
    }


def _quantize(x: np.ndarray, entry: dict) -> np.ndarray:
    limits = np.iinfo(entry["int_dtype"])
    q = np.rint(x.astype(np.float32) / np.float32(entry["scale"])).astype(np.int64) + entry["zero_point"]
    return np.clip(q, limits.min, limits.max).astype(entry["int_dtype"])


def run_model(folder: Path, jit: Jit, runs: int, budget_s: float) -> tuple[int, dict]:
    """Bit-exactness then timings for one bundle folder; (differing outputs, timings)."""
    import tvm
    from tvm.runtime.vm import VirtualMachine

    bundle = json.loads((folder / "bundle.json").read_text())
    name, info = bundle["model"], bundle["library_info"]
    if bundle["fatbin"]:
        jit.fatbins[bundle["source_sha256"]] = (folder / bundle["fatbin"]).read_bytes()
    dev = tvm.cuda(0) if bundle.get("device", "cuda") == "cuda" else tvm.cpu()
    start, jitted = time.perf_counter(), len(jit.used)
    vm = VirtualMachine(tvm.runtime.load_module(str(folder / info["library"])), dev)
    main = vm["main"]
    how = ", ".join(jit.used[jitted:]) or "no JIT"
    print(f"  {name}: loaded on {dev} in {time.perf_counter() - start:.1f} s ({how})", flush=True)
    bad = _bit_exact(name, main, dev, folder, bundle)

    float_feeds = dict(np.load(folder / "float_feeds.npz"))
    inputs, outputs = bundle["boundary"]["inputs"], bundle["boundary"]["outputs"]
    on_device = [tvm.runtime.tensor(_quantize(float_feeds[e["name"]], e), dev) for e in inputs]

    def end_to_end():
        ints = [tvm.runtime.tensor(_quantize(float_feeds[e["name"]], e), dev) for e in inputs]
        results = _outputs(main(*ints))
        return [
            (r.numpy().astype(np.float32) - e["zero_point"]) * np.float32(e["scale"])
            for r, e in zip(results, outputs, strict=True)
        ]

    timings = {
        "qc_device": _median_ms(lambda: main(*on_device), dev.sync, runs, budget_s),
        "qc_e2e": _median_ms(end_to_end, dev.sync, runs, budget_s),
    }
    ort = _ort_fp32(folder, float_feeds, runs, budget_s)
    timings |= {"ort_provider": ort["provider"], "ort_device": ort.get("device"), "ort_e2e": ort["e2e"]}
    return bad, timings


def _report(rows: dict[str, dict]) -> None:
    print(
        "\nmedian ms (batch 1)      qc dev   qc e2e | ORT FP32 dev  ORT FP32 e2e | qc/ORT dev  qc/ORT e2e  ORT provider"
    )
    for name, t in rows.items():
        dev = f"{t['ort_device']:12.3f}" if t["ort_device"] is not None else f"{'-':>12}"
        ratio_dev = f"{t['qc_device'] / t['ort_device']:10.2f}x" if t["ort_device"] else f"{'-':>11}"
        print(
            f"{name:22} {t['qc_device']:8.3f} {t['qc_e2e']:8.3f} | {dev} {t['ort_e2e']:13.3f} | "
            f"{ratio_dev} {t['qc_e2e'] / t['ort_e2e']:10.2f}x  {t['ort_provider']}"
        )


def run(bundle_dir: Path, runs: int, budget_s: float) -> int:
    _preload_cuda_libraries()
    import tvm

    folders = sorted(p.parent for p in bundle_dir.glob("*/bundle.json"))
    if not folders:
        print(f"no bundles under {bundle_dir}; run `prepare --out {bundle_dir}` first", file=sys.stderr)
        return 1
    runtime = f"tvm {tvm.__version__}{' (runtime only)' if getattr(tvm.base, '_RUNTIME_ONLY', False) else ''}"
    dev = tvm.cuda(0)
    if dev.exist:
        print(f"GPU: {dev.device_name}, compute {dev.compute_version}; {runtime}", flush=True)
        jit = Jit("sm_" + dev.compute_version.replace(".", ""))
    elif all(json.loads((f / "bundle.json").read_text()).get("device") == "cpu" for f in folders):
        print(f"CPU dry run (x86 bundles); {runtime}", flush=True)
        jit = Jit(ARCH)
    else:
        print(
            "no CUDA device visible to TVM (driver, libcudart.so.13 and TVM's libtvm_runtime_cuda.so are "
            "needed)",
            file=sys.stderr,
        )
        return 2
    failures, rows = 0, {}
    for folder in folders:
        try:
            bad, rows[folder.name] = run_model(folder, jit, runs, budget_s)
            failures += bad
        except Exception as err:  # report every model, then fail
            failures += 1
            print(f"  FAILED {folder.name}: {type(err).__name__}: {str(err)[:2000]}", flush=True)
    _report(rows)
    print(f"\n{'OK: every output bit-exact' if not failures else f'FAIL: {failures} problem(s)'}")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for command in ("prepare", "all"):
        sub = commands.add_parser(command)
        sub.add_argument("--out", type=Path, default=None, help="bundle folder (default: a temporary one)")
        sub.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
        sub.add_argument("--no-fatbin", action="store_true", help="leave the kernels to the JIT on the GPU")
        sub.add_argument("--runtime-kit", action="store_true", help="copy TVM's runtime into OUT/site")
        sub.add_argument(
            "--cpu-dry-run", action="store_true", help="compile for x86 instead, to try `run` without a GPU"
        )
    for command in ("run", "all"):
        sub = commands.choices.get(command) or commands.add_parser(command)
        if command == "run":
            sub.add_argument("--dir", type=Path, required=True, help="folder written by prepare")
        sub.add_argument("--runs", type=int, default=100, help="timed runs per measurement (at most)")
        sub.add_argument("--budget", type=float, default=10.0, help="seconds per measurement (at most)")
    args = parser.parse_args(argv)
    if args.command in ("prepare", "all"):
        sys.path.insert(0, str(REPO))
        out = args.out or Path(tempfile.mkdtemp(prefix="qc-cuda-check-"))
        if args.command == "all":  # with a GPU visible, TVM compiles the kernels at build time already
            _preload_cuda_libraries()
            Jit(ARCH)
        prepare(
            out,
            args.models,
            fatbin=not args.no_fatbin and args.command == "prepare",
            kit=args.runtime_kit,
            cpu_dry_run=args.cpu_dry_run,
        )
        if args.command == "prepare":
            return 0
        args.dir = out
    return run(args.dir, args.runs, args.budget)


if __name__ == "__main__":
    sys.exit(main())
