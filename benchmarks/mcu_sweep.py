"""Cortex-M sweep: flash, RAM and instruction counts of the Fashion-MNIST CNN and ViT per build configuration.

Per model and board (cortex-m4, cortex-m55), every combination of weight width (8, 4), ``pack_weights``
(on, off) and ``arg_checks`` (on, off): 8 configurations. Each is quantized for batch 1 (128 training images
to calibrate), compiled to the C tree and image, measured with arm-none-eabi-size (flash = .text + .rodata +
.data image; RAM = .data + .bss + stack), and run in qemu-system-arm on one test image, checked bit-exact
against onnxruntime on the integer model. **Instructions** are counted under ``qemu -icount`` (see
``qcompiler.targets.cortex_m._harness``): guest instructions executed by ``qc_run_buffers``, not cycles
(qemu has no timing model; a Cortex-M4 spends more than one cycle on loads, multiplies and taken branches).

The kernels are TVM's scalar C loops; no SIMD dot product (SMLAD, MVE) is used yet, so the int8 layers'
instruction counts here are the baseline a SIMD kernel must cut. Pack has no effect on 8-bit weights (no
constant fits 4 bits), which the table shows rather than hides.

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
from qcompiler.targets import get_target

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "fashion_mnist"
CONFIGS = [{"weight_bits": w, "pack_weights": p, "arg_checks": a}
           for w, p, a in itertools.product((8, 4), (True, False), (True, False))]


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


def measure(model: str, board: str, config: dict, work: Path) -> dict:
    """Build one configuration, run it once in qemu, check it against onnxruntime; one result row."""
    result, feed = quantized(model, config["weight_bits"])
    region = result.region()
    target = get_target(board, pack_weights=config["pack_weights"], arg_checks=config["arg_checks"])
    start = time.perf_counter()
    info = json.loads(json.dumps(target.compile(region, work)))
    got, run = target.emulate(work, info, feed)
    session = onnxruntime.InferenceSession(region.SerializeToString(), providers=["CPUExecutionProvider"])
    want = session.run(None, feed)
    exact = all(np.array_equal(g, w) for g, w in zip(got, want, strict=True))
    return {"model": model, "board": board, **config, "flash_bytes": info["flash_bytes"],
            "ram_bytes": info["ram_bytes"], "weights_bytes": info["weights_bytes"],
            "packed_weights": info["packed_weights"], "instructions": run.instructions, "bit_exact": exact,
            "seconds": round(time.perf_counter() - start, 1)}


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
    front = pareto(rows)
    print("\n| model | board | weights | pack | arg checks | flash B | RAM B | weights B | instructions | "
          "bit-exact | Pareto |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['board']} | {r['weight_bits']}-bit | {'on' if r['pack_weights'] else 'off'} | "
              f"{'on' if r['arg_checks'] else 'off'} | {r['flash_bytes']:,} | {r['ram_bytes']:,} | "
              f"{r['weights_bytes']:,} | {r['instructions']:,} | {'yes' if r['bit_exact'] else 'NO'} | "
              f"{'*' if r in front else ''} |")
    if args.plot:
        plot(rows, front, args.plot)
        print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
