"""Cortex-M sweep: flash, RAM and instruction counts of the Fashion-MNIST CNN and ViT per build configuration.

Per model and board (cortex-m4, cortex-m55), every combination of weight width (8, 4), ``pack_weights``
(on, off), ``arg_checks`` (on, off) and ``simd`` (qc's SMLAD dot-product kernels, or TVM's scalar C loops
for the convolutions and matrix products): 16 configurations. Each is quantized for batch 1 (128 training
images to calibrate), compiled to the C tree and image, measured with arm-none-eabi-size (flash = .text +
.rodata + .data image; RAM = .data + .bss + stack), and run in qemu-system-arm on one test image, checked
bit-exact against onnxruntime on the integer model. **Instructions** are counted under ``qemu -icount``
(see ``qcompiler.targets.cortex_m._harness``): guest instructions executed by ``qc_run_buffers``, not
cycles (qemu has no timing model; a Cortex-M4 spends more than one cycle on loads, multiplies and taken
branches). Pack has no effect on 8-bit weights (no constant fits 4 bits), which the table shows rather
than hides.

A second table splits the instructions of the 8-bit-weight build (pack on, checks off) per kernel call, from
the profiling image: the **dot-product layers** (every kernel call that computes a convolution or matrix
product, plus, with SIMD, the requantization kernel that reads its int32 result; TVM fuses that epilogue
into its scalar kernel) against the rest, scalar C vs SIMD. The attention products of two activations stay
TVM's scalar loops in both builds and are counted as dot-product layers in both (so the ratio is
conservative).

    .venv/bin/python -m benchmarks.mcu_sweep [--models cnn vit] [--boards cortex-m4 cortex-m55] [--plot sweep.png]
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime

from examples.fashion_mnist import data
from qcompiler.config import CompileConfig
from qcompiler.driver import quantize_model
from qcompiler.model_io import boundary
from qcompiler.qmath import quantize
from qcompiler.reference import integer_session
from qcompiler.targets import get_target
from qcompiler.targets.cortex_m._simd import KERNEL_PREFIX

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "fashion_mnist"
CONFIGS = [{"weight_bits": w, "pack_weights": p, "arg_checks": a, "simd": v}
           for w, p, a, v in itertools.product((8, 4), (True, False), (True, False), (True, False))]
#: kernel names of TVM's convolution and matrix-product kernels (fused with their epilogue).
DOT_KERNELS = ("conv2d", "matmul")


@functools.cache
def quantized(model: str, weight_bits: int):
    """The model quantized for batch 1 and one test image as its integer feed."""
    train, _ = data.load_split("train")
    test, _ = data.load_split("test")
    config = CompileConfig(input_shapes={"input": (1, 1, 28, 28)}, weight_bits=weight_bits)
    result = quantize_model(EXAMPLES / f"{model}.onnx", {"input": data.preprocess(train[:128])}, config)
    (entry,) = boundary(result.int_model)[0]
    feed = {entry["int_name"]: quantize(data.preprocess(test[:1]), entry["scale"], entry["zero_point"],
                                        entry["int_dtype"])}
    return result, feed


def _exact(region, feed: dict, got: list[np.ndarray]) -> bool:
    session = integer_session(region)
    return all(np.array_equal(g, w) for g, w in zip(got, session.run(None, feed), strict=True))


def measure(model: str, board: str, config: dict, work: Path) -> dict:
    """Build one configuration, run it once in qemu, check it against onnxruntime; one result row."""
    result, feed = quantized(model, config["weight_bits"])
    region = result.region()
    target = get_target(board, pack_weights=config["pack_weights"], arg_checks=config["arg_checks"],
                        simd=config["simd"])  # fmt: skip
    start = time.perf_counter()
    info = json.loads(json.dumps(target.compile(region, work)))
    got, run = target.emulate(work, info, feed)
    exact = _exact(region, feed, got)
    return {"model": model, "board": board, **config, "flash_bytes": info["flash_bytes"],
            "ram_bytes": info["ram_bytes"], "weights_bytes": info["weights_bytes"],
            "packed_weights": info["packed_weights"], "instructions": run.instructions, "bit_exact": exact,
            "seconds": round(time.perf_counter() - start, 1)}


def dot_steps(steps: list[dict]) -> set[int]:
    """The kernel calls of the dot-product layers (see the module docstring)."""
    simd = {i for i, step in enumerate(steps) if step["kernel"].startswith(KERNEL_PREFIX)}
    return {i for i, step in enumerate(steps)
            if i in simd or any(k in step["kernel"] for k in DOT_KERNELS) or simd & set(step["reads_from"])}


def layer_profile(model: str, board: str, simd: bool, work: Path) -> dict:
    """The 8-bit build's instructions split into dot-product layers and the rest (profiling image)."""
    result, feed = quantized(model, 8)
    region = result.region()
    target = get_target(board, arg_checks=False, simd=simd)
    info = json.loads(json.dumps(target.compile(region, work)))
    got, run = target.emulate(work, info, feed, profile=True)
    dots = dot_steps(info["steps"])
    dot = sum(n for i, n in enumerate(run.step_instructions) if i in dots)
    return {"model": model, "board": board, "simd": simd, "dot_instructions": dot,
            "rest_instructions": sum(run.step_instructions) - dot, "dot_kernel_calls": len(dots),
            "bit_exact": _exact(region, feed, got)}


def pareto(rows: list[dict]) -> list[dict]:
    """Rows no other row of the same model and board beats on both flash and instructions."""
    return [r for r in rows if not any(
        o is not r and o["model"] == r["model"] and o["board"] == r["board"]
        and o["flash_bytes"] <= r["flash_bytes"] and o["instructions"] <= r["instructions"]
        and (o["flash_bytes"], o["instructions"]) != (r["flash_bytes"], r["instructions"]) for o in rows)]


def plot(rows: list[dict], front: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r["model"], r["board"]) for r in rows})
    figure, axes = plt.subplots(1, len(groups), figsize=(4 * len(groups), 3.6), dpi=110, squeeze=False)
    for axis, (model, board) in zip(axes[0], groups, strict=True):
        mine = [r for r in rows if (r["model"], r["board"]) == (model, board)]
        best = sorted((r for r in front if (r["model"], r["board"]) == (model, board)), key=lambda r: r["flash_bytes"])
        axis.scatter([r["flash_bytes"] / 1024 for r in mine], [r["instructions"] / 1e6 for r in mine])
        axis.plot([r["flash_bytes"] / 1024 for r in best], [r["instructions"] / 1e6 for r in best], "k--", lw=1)
        axis.set_title(f"{model} on {board}", fontsize=9)
        axis.set_xlabel("flash (KiB)")
        axis.set_ylabel("instructions (M, qemu -icount)")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["cnn", "vit"], choices=["cnn", "vit"])
    parser.add_argument("--boards", nargs="+", default=["cortex-m4", "cortex-m55"])
    parser.add_argument("--plot", type=Path, help="write the flash vs instructions plot (PNG) here")
    args = parser.parse_args()
    onnxruntime.set_default_logger_severity(3)
    rows = []
    with tempfile.TemporaryDirectory(prefix="qc-mcu-sweep-") as tmp:
        for i, (model, board, config) in enumerate(itertools.product(args.models, args.boards, CONFIGS)):
            rows.append(measure(model, board, config, Path(tmp) / str(i)))
            print(json.dumps(rows[-1]), flush=True)
        profiles = []
        for model, board in itertools.product(args.models, args.boards):
            pair = [layer_profile(model, board, simd, Path(tmp) / f"profile-{model}-{board}-{simd}")
                    for simd in (False, True)]  # fmt: skip
            profiles.append(pair)
            for p in pair:
                print(json.dumps(p), flush=True)
    front = pareto(rows)

    def on(flag: bool) -> str:
        return "on" if flag else "off"

    print("\n| model | board | weights | pack | arg checks | SIMD | flash B | RAM B | weights B | instructions | "
          "bit-exact | Pareto |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['board']} | {r['weight_bits']}-bit | {on(r['pack_weights'])} | "
              f"{on(r['arg_checks'])} | {on(r['simd'])} | {r['flash_bytes']:,} | {r['ram_bytes']:,} | "
              f"{r['weights_bytes']:,} | {r['instructions']:,} | {'yes' if r['bit_exact'] else 'NO'} | "
              f"{'*' if r in front else ''} |")
    print("\n8-bit weights, pack on, checks off; instructions per part of the model (profiling image):\n")
    print("| model | board | dot layers, scalar C | dot layers, SIMD | ratio | rest, scalar | rest, SIMD | "
          "bit-exact |")
    print("|---|---|---|---|---|---|---|---|")
    for scalar, simd in profiles:
        print(f"| {scalar['model']} | {scalar['board']} | {scalar['dot_instructions']:,} | "
              f"{simd['dot_instructions']:,} | {scalar['dot_instructions'] / simd['dot_instructions']:.2f}x | "
              f"{scalar['rest_instructions']:,} | {simd['rest_instructions']:,} | "
              f"{'yes' if scalar['bit_exact'] and simd['bit_exact'] else 'NO'} |")
    if args.plot:
        plot(rows, front, args.plot)
        print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
