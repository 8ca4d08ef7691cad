"""The static graph plan: Relax ``main`` as a list of kernel calls over buffers at fixed arena offsets.

Walking ``main`` (after :func:`qcompiler.targets.cortex_m._kernels.fuse`) in binding order gives

* **buffers**: caller-owned inputs and outputs, ``const`` weights (to flash), and arena buffers (call_tir
  results, plus one workspace per kernel that allocates scratch memory while it runs);
* **tensors**: a (buffer, dtype, shape) view each; a reshape is a second view of the same buffer, no copy;
* **steps**: one kernel call each, with the tensors it reads and writes; then copies for graph outputs that
  are not computed in place (an input, a constant, or a buffer already returned as another output).

**Packed weights** (``pack_weights``): an int8 constant of at least :data:`PACK_MIN_VALUES` values that
all fit a signed 4-bit (or 2-bit) range is stored as a uint8 array, value ``i`` in bits
``[(i % k) * b, (i % k + 1) * b)`` of byte ``i // k`` (``b`` bits, ``k = 8 / b`` values per byte, two's
complement). Every kernel that reads it gets, in the step just before, an unpack step
(:data:`UNPACK_KERNELS`, C in :mod:`~qcompiler.targets.cortex_m._emit`) into an arena buffer that lives
from the unpack to that kernel; the unpacking is exact, so the kernels see the same int8 values.

Arena offsets come from liveness (a buffer lives from the step that writes it to the last step that reads
any view of it, both inclusive, so a kernel's outputs never overlap its inputs) and greedy placement: the
largest buffer first, each at the lowest offset that overlaps no buffer alive at the same time.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tvm
from tvm import relax

from qcompiler.errors import TargetError

__all__ = ["ARENA_ALIGN", "PACK_MIN_VALUES", "UNPACK_KERNELS", "Buffer", "Plan", "Step", "Tensor", "pack_codes",
           "plan"]

#: every arena buffer starts at a multiple of this (enough for int64 and for 128-bit MVE loads).
ARENA_ALIGN = 16
#: the unpack step of each packed width.
UNPACK_KERNELS = {2: "qc_unpack_int2", 4: "qc_unpack_int4"}
#: smaller int8 constants stay unpacked (an unpack step costs more than it saves).
PACK_MIN_VALUES = 64


def pack_codes(values: np.ndarray, bits: int) -> np.ndarray:
    """``values`` (int8, all in the signed ``bits`` range) packed ``8 // bits`` per byte, low bits first."""
    per_byte = 8 // bits
    codes = (values.reshape(-1).astype(np.int16) & ((1 << bits) - 1)).astype(np.uint8)
    codes = np.concatenate([codes, np.zeros(-len(codes) % per_byte, np.uint8)]).reshape(-1, per_byte)
    return np.bitwise_or.reduce(codes << (np.arange(per_byte, dtype=np.uint8) * bits), axis=1).astype(np.uint8)


def _packed_bits(value: np.ndarray) -> int:
    """The narrowest width of :data:`UNPACK_KERNELS` that holds every value of an int8 constant, else 8."""
    if value.dtype != np.int8 or value.size < PACK_MIN_VALUES:
        return 8
    low, high = int(value.min()), int(value.max())
    return next((b for b in sorted(UNPACK_KERNELS) if -(1 << (b - 1)) <= low and high < 1 << (b - 1)), 8)


@dataclasses.dataclass
class Buffer:
    """Bytes somewhere: ``kind`` is "input"/"output" (caller's, ``index`` in the signature), "const"
    (``index`` into :attr:`Plan.constants`) or "arena" (at ``offset``, alive over steps ``[first, last]``)."""

    kind: str
    nbytes: int
    index: int = -1
    offset: int = -1
    first: int = -1
    last: int = -1


@dataclasses.dataclass(frozen=True)
class Tensor:
    """A typed view of a buffer (what one DLTensor describes)."""

    buffer: int
    dtype: str
    shape: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Step:
    """``kernel(*args)``: args are tensor ids, inputs then outputs; ``workspace`` is a buffer id or -1."""

    kernel: str
    args: tuple[int, ...]
    workspace: int = -1


@dataclasses.dataclass
class Plan:
    """Everything the C driver needs: buffers with offsets, tensors, steps, output copies, constants."""

    buffers: list[Buffer]
    tensors: list[Tensor]
    steps: list[Step]
    inputs: list[int]
    outputs: list[int]
    copies: list[tuple[int, int]]
    constants: list[np.ndarray]
    arena_bytes: int = 0

    def producers(self, step: int) -> list[int]:
        """The earlier steps whose results step ``step`` reads (ascending)."""
        firsts = {self.buffers[self.tensors[t].buffer].first for t in self.steps[step].args}
        return sorted(f for f in firsts if 0 <= f < step)


def _nbytes(dtype: str, shape: tuple[int, ...]) -> int:
    bits = tvm.DataType(dtype).bits
    return int(np.prod(shape, dtype=np.int64)) * max(bits, 8) // 8


def _tensor_type(ty: relax.TensorType, what: str) -> tuple[str, tuple[int, ...]]:
    shape = ty.shape
    if shape is None or not all(isinstance(d, tvm.tirx.IntImm) for d in shape.values):
        raise TargetError(f"cortex-m: {what} has no static shape; the MCU driver needs static shapes")
    return str(ty.dtype), tuple(int(d) for d in shape.values)


class _Builder:
    def __init__(self, workspace: dict[str, int], pack_weights: bool):
        self.workspace = workspace
        self.pack_weights = pack_weights
        self.plan = Plan([], [], [], [], [], [], [])
        self.env: dict[relax.Var, object] = {}
        self.constants: dict[tvm.ir.expr.Constant, int] = {}  # one flash array per Relax constant
        self.packed: dict[int, tuple[int, int]] = {}  # const buffer id -> (its uint8 tensor, bits per value)

    def tensor(self, buffer: int, dtype: str, shape: tuple[int, ...]) -> int:
        self.plan.tensors.append(Tensor(buffer, dtype, shape))
        return len(self.plan.tensors) - 1

    def new_buffer(self, kind: str, dtype: str, shape: tuple[int, ...], index: int = -1) -> int:
        self.plan.buffers.append(Buffer(kind, _nbytes(dtype, shape), index))
        return self.tensor(len(self.plan.buffers) - 1, dtype, shape)

    def constant(self, const: tvm.ir.expr.Constant) -> int:
        if const not in self.constants:
            value = const.value.numpy()
            bits = _packed_bits(value) if self.pack_weights else 8
            stored = pack_codes(value, bits) if bits < 8 else value
            self.plan.constants.append(stored)
            tensor = self.new_buffer("const", stored.dtype.name, stored.shape, len(self.plan.constants) - 1)
            if bits < 8:  # the int8 view of the packed bytes, unpacked before each use (see unpacked)
                self.packed[self.plan.tensors[tensor].buffer] = (tensor, bits)
                tensor = self.tensor(self.plan.tensors[tensor].buffer, value.dtype.name, value.shape)
            self.constants[const] = tensor
        return self.constants[const]

    def unpacked(self, tensor: int) -> int:
        """``tensor`` itself, or, for a view of a packed constant, an arena copy unpacked by a new step."""
        view = self.plan.tensors[tensor]
        if view.buffer not in self.packed:
            return tensor
        source, bits = self.packed[view.buffer]
        step = len(self.plan.steps)
        target = self.new_buffer("arena", view.dtype, view.shape)
        self.plan.buffers[self.plan.tensors[target].buffer].first = step
        self.use(source, step)
        self.use(target, step)
        self.plan.steps.append(Step(UNPACK_KERNELS[bits], (source, target)))
        return target

    def value(self, expr: relax.Expr) -> object:
        """The tensor id (or tuple of them) an argument expression denotes."""
        if isinstance(expr, tvm.ir.expr.Constant):
            return self.constant(expr)
        if isinstance(expr, relax.Var):
            return self.env[expr]
        if isinstance(expr, relax.Tuple):
            return tuple(self.value(f) for f in expr.fields)
        if isinstance(expr, relax.TupleGetItem):
            return self.value(expr.tuple_value)[expr.index]
        raise TargetError(f"cortex-m: cannot place {type(expr).__name__} in the static plan: {expr}")

    def use(self, tensor: int, step: int) -> None:
        buffer = self.plan.buffers[self.plan.tensors[tensor].buffer]
        buffer.last = max(buffer.last, step)

    def call_tir(self, var: relax.Var, call: relax.Call) -> object:
        kernel, args = call.args[0], call.args[1]
        if len(call.args) > 2:
            raise TargetError(f"cortex-m: kernel {kernel.name_hint} takes symbolic shape arguments")
        inputs = [self.value(a) for a in args.fields]
        if any(isinstance(i, tuple) for i in inputs):
            raise TargetError(f"cortex-m: kernel {kernel.name_hint} takes a tuple argument")
        inputs = [self.unpacked(t) for t in inputs]
        step = len(self.plan.steps)
        ty = call.ty_args[0]
        fields = ty.fields if isinstance(ty, relax.TupleType) else [ty]
        outputs = [
            self.new_buffer("arena", *_tensor_type(f, f"output of {kernel.name_hint}")) for f in fields
        ]
        for t in inputs:
            self.use(t, step)
        for t in outputs:
            self.plan.buffers[self.plan.tensors[t].buffer].first = step
            self.use(t, step)
        workspace = -1
        if self.workspace.get(kernel.name_hint, 0):
            self.plan.buffers.append(Buffer("arena", self.workspace[kernel.name_hint], first=step, last=step))
            workspace = len(self.plan.buffers) - 1
        self.plan.steps.append(Step(kernel.name_hint, tuple(inputs + outputs), workspace))
        return tuple(outputs) if isinstance(ty, relax.TupleType) else outputs[0]

    def bind(self, var: relax.Var, value: relax.Expr) -> None:
        if isinstance(value, relax.Call) and value.op == tvm.ir.Op.get("relax.call_tir"):
            self.env[var] = self.call_tir(var, value)
        elif isinstance(value, relax.Call) and value.op == tvm.ir.Op.get("relax.reshape"):
            source = self.value(value.args[0])
            dtype, shape = _tensor_type(var.ty, f"reshape {var.name}")
            self.env[var] = self.tensor(self.plan.tensors[source].buffer, dtype, shape)
        elif isinstance(value, relax.Call):
            raise TargetError(
                f"cortex-m: the MCU driver cannot run {value.op} (binding {var.name}); "
                "only TIR kernels and reshapes are supported"
            )
        else:
            self.env[var] = self.value(value)


def plan(main: relax.Function, workspace: dict[str, int], pack_weights: bool = True) -> Plan:
    """Walk ``main``; place every arena buffer (see the module docstring)."""
    builder = _Builder(workspace, pack_weights)
    result = builder.plan
    for i, param in enumerate(main.params):
        builder.env[param] = builder.new_buffer("input", *_tensor_type(param.ty, param.name), i)
        result.inputs.append(builder.env[param])
    body = main.body
    for block in body.blocks:
        for binding in block.bindings:
            builder.bind(binding.var, binding.value)
    returned = builder.value(body.body)
    returned = [builder.unpacked(t) for t in (returned if isinstance(returned, tuple) else [returned])]
    _place_outputs(builder, returned)
    result.arena_bytes = _place_arena(result.buffers)
    return result


def _place_outputs(builder: _Builder, returned: list[int]) -> None:
    """Kernels write graph outputs straight into the caller's buffers; the rest are copied at the end."""
    result = builder.plan
    for index, tensor in enumerate(returned):
        view = result.tensors[tensor]
        buffer = result.buffers[view.buffer]
        if buffer.kind == "arena" and buffer.first >= 0:  # a kernel result not yet returned
            buffer.kind, buffer.index = "output", index
            result.outputs.append(tensor)
        else:  # an input, a constant, or a buffer already returned as an earlier output
            target = builder.new_buffer("output", view.dtype, view.shape, index)
            result.copies.append((tensor, target))
            result.outputs.append(target)


def _place_arena(buffers: list[Buffer]) -> int:
    """Greedy by size, first fit in offset among buffers alive at the same time; returns the arena bytes."""
    placed: list[Buffer] = []
    order = sorted((b for b in buffers if b.kind == "arena"), key=lambda b: (-b.nbytes, b.first))
    for buffer in order:
        if buffer.last < buffer.first:
            buffer.last = buffer.first
        busy = sorted(
            (p for p in placed if p.first <= buffer.last and buffer.first <= p.last), key=lambda p: p.offset
        )
        offset = 0
        for other in busy:
            if offset + buffer.nbytes <= other.offset:
                break
            offset = max(offset, _align(other.offset + other.nbytes))
        buffer.offset = offset
        placed.append(buffer)
    return max((_align(b.offset + b.nbytes) for b in placed), default=0)


def _align(n: int) -> int:
    return -(-n // ARENA_ALIGN) * ARENA_ALIGN
