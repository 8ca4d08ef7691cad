"""Running a compiled integer region on this host: one wrapper shared by every target that builds a Relax VM.

The wrapper checks every call against the input signature recorded at compile time, so a wrong name, dtype or
shape is a :class:`InputMismatchError` that names the tensor, never a crash inside the VM.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnx
import tvm
from tvm import relax

from qcompiler.errors import ArtifactError, ModelError, QcError

__all__ = ["CompiledModule", "InputMismatchError", "TensorSpec", "region_signature", "set_num_threads"]


def _usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# TVM creates its thread pool once per thread, on first use, with TVM_NUM_THREADS workers or else half the
# logical CPUs on x86 (it assumes hyper-threading): one worker on a 2-core machine, which no later
# config_threadpool call can raise. Sizing it here, before any kernel runs, gives every core by default.
os.environ.setdefault("TVM_NUM_THREADS", str(_usable_cores()))


def set_num_threads(num_threads: int) -> None:
    """Run this process's TVM CPU thread pool (shared by every loaded module) on ``num_threads`` workers.

    Without a call the pool uses ``TVM_NUM_THREADS`` or else every core this process may run on; a call
    can lower that count, not raise it past the pool's size (``TVM_NUM_THREADS``).
    """
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
        raise QcError(f"num_threads must be a positive integer, got {num_threads!r}")
    tvm.get_global_func("runtime.config_threadpool")(1, num_threads)  # 1: the big-core pool (all cores here)


class InputMismatchError(QcError):
    """Inputs passed to a compiled module do not match its signature (names, dtypes or shapes)."""


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """Name, numpy dtype name and static shape of one graph input or output."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    def to_json(self) -> dict:
        """JSON-able form, as stored in a target's ``library_info``."""
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, data: Mapping) -> TensorSpec:
        """Inverse of :meth:`to_json`."""
        return cls(str(data["name"]), str(data["dtype"]), tuple(int(d) for d in data["shape"]))


def region_signature(region: onnx.ModelProto) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Input and output specs of an integer region, in graph order; every shape must be static.

    Graph inputs that are also initializers (old-style ONNX) are constants, not inputs.
    """
    inferred = onnx.shape_inference.infer_shapes(region)
    infos = {v.name: v for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}

    def spec(name: str) -> TensorSpec:
        tensor_type = infos[name].type.tensor_type
        dims = tensor_type.shape.dim
        if not tensor_type.HasField("shape") or not all(d.HasField("dim_value") for d in dims):
            raise ModelError(
                f"integer region tensor {name!r} has no static shape; qc compiles static shapes only"
            )
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name
        return TensorSpec(name, dtype, tuple(d.dim_value for d in dims))

    constants = {t.name for t in region.graph.initializer}
    inputs = [spec(v.name) for v in region.graph.input if v.name not in constants]
    return inputs, [spec(v.name) for v in region.graph.output]


class CompiledModule:
    """A loaded library whose ``main`` maps the region's inputs to its outputs, run through the Relax VM."""

    def __init__(
        self,
        vm: relax.VirtualMachine,
        device: tvm.runtime.Device,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
    ):
        self._vm = vm
        self._device = device
        self.inputs = list(inputs)
        self.outputs = list(outputs)

    @classmethod
    def from_library(
        cls, path: pathlib.Path, device: tvm.runtime.Device, library_info: Mapping
    ) -> CompiledModule:
        """Load the library at ``path``; ``library_info`` is the dict the target's ``compile`` returned."""
        if not path.is_file():
            raise ArtifactError(f"compiled library {path} does not exist; compile the model again")
        # dlopen returns the already-loaded library for a path it has seen, even if the file was rebuilt
        # since; loading a private copy (deleted once mapped) always gets the file's current contents.
        with tempfile.TemporaryDirectory(prefix="qc-load-") as scratch:
            private = pathlib.Path(scratch) / path.name
            shutil.copyfile(path, private)
            try:
                vm = relax.VirtualMachine(tvm.runtime.load_module(str(private)), device)
            except Exception as err:  # TVM raises several unrelated types here; all mean "unusable library"
                raise ArtifactError(f"cannot load compiled library {path}: {err}") from err
        specs = [[TensorSpec.from_json(d) for d in library_info[key]] for key in ("inputs", "outputs")]
        return cls(vm, device, *specs)

    @property
    def input_names(self) -> list[str]:
        """Graph input names, in the order ``main`` takes them."""
        return [s.name for s in self.inputs]

    @property
    def output_names(self) -> list[str]:
        """Graph output names, in the order :meth:`run` returns them."""
        return [s.name for s in self.outputs]

    def run(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run ``main`` on ``inputs`` (by graph input name); return the outputs in graph order."""
        return numpy_outputs(self._vm["main"](*self._device_args(inputs)))

    def _device_args(self, inputs: Mapping[str, np.ndarray]) -> list:
        """``inputs`` checked and copied to the device, in graph input order."""
        self._check(inputs)
        return [tvm.runtime.tensor(np.asarray(inputs[s.name], order="C"), self._device) for s in self.inputs]

    def profile(self, inputs: Mapping[str, np.ndarray], rounds: int = 10) -> list[tuple[str, int, float]]:
        """Seconds spent per kernel over ``rounds`` runs of ``main``: ``(symbol, calls, seconds)`` rows,
        slowest first. Timed on the host around each call the VM makes (tens of microseconds of overhead per
        call, so sub-millisecond kernels read high); the VM's own bookkeeping is not counted."""
        args = self._device_args(inputs)
        totals: dict[str, list] = {}
        started: list[float] = []

        def instrument(func, symbol, before_run, ret_value, *call_args):
            if before_run:
                started.append(time.perf_counter())
            else:
                entry = totals.setdefault(str(symbol), [0, 0.0])
                entry[0] += 1
                entry[1] += time.perf_counter() - started.pop()
            return 0  # VMInstrumentReturnKind.kNoOp: run the call normally

        self._vm["main"](*args)  # warm-up, not counted
        self._vm.set_instrument(instrument)
        try:
            for _ in range(rounds):
                self._vm["main"](*args)
        finally:
            self._vm.set_instrument(None)
        rows = [(symbol, calls // rounds, seconds / rounds) for symbol, (calls, seconds) in totals.items()]
        return sorted(rows, key=lambda row: -row[2])

    def _check(self, inputs: Mapping[str, np.ndarray]) -> None:
        problems = [f"unexpected input {name!r}" for name in inputs if name not in self.input_names]
        for spec in self.inputs:
            if spec.name not in inputs:
                problems.append(f"missing input {spec.name!r}")
                continue
            value = np.asarray(inputs[spec.name])
            if value.dtype.name != spec.dtype or value.shape != spec.shape:
                problems.append(
                    f"input {spec.name!r} is {value.dtype.name}{list(value.shape)}, "
                    f"expected {spec.dtype}{list(spec.shape)}"
                )
        if problems:
            raise InputMismatchError(
                "inputs do not match the compiled model:\n  "
                + "\n  ".join(problems)
                + f"\nexpected inputs: {', '.join(self.input_names)}"
            )


class EmulatedModule(CompiledModule):
    """A library for another machine, run through an emulator: same signature checks as CompiledModule.

    ``run_fn(inputs)`` runs one emulated process on the (already checked) inputs and returns the outputs.
    """

    def __init__(self, library_info: Mapping, run_fn: Callable[[Mapping[str, np.ndarray]], list[np.ndarray]]):
        # no VM in this process: the state is the signature and the emulator hook
        self.inputs = [TensorSpec.from_json(d) for d in library_info["inputs"]]
        self.outputs = [TensorSpec.from_json(d) for d in library_info["outputs"]]
        self._run_fn = run_fn

    def run(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run ``main`` on ``inputs`` (by graph input name) under the emulator; outputs in graph order."""
        self._check(inputs)
        return self._run_fn(inputs)


def numpy_outputs(result) -> list[np.ndarray]:
    """A VM result (one tensor or a tuple of them) as numpy arrays in graph output order."""
    return [r.numpy() for r in ([result] if isinstance(result, tvm.runtime.Tensor) else list(result))]
