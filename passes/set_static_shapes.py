"""Give every graph input a static shape (from the model or ``--input-shape``) and infer all shapes."""

from __future__ import annotations

import onnx_ir as ir

from qcompiler.errors import ModelError
from qcompiler.ir import infer_shapes
from qcompiler.pass_infra import PassResult, QcPass


class SetStaticShapesPass(QcPass):
    """Apply user shape overrides to graph inputs, refuse remaining dynamic dims, then infer all other shapes.

    ``overrides`` maps an input name to its full static shape. An input without one whose only dynamic dim
    is the leading (batch) dim gets batch 1, the batch calibration samples are fed in. A negative
    ``dim_value`` (how some exporters, Paddle2ONNX among them, write a dynamic dim) counts as dynamic. The
    shapes of all other values (exporters' ``value_info``, which may contradict the static input shapes) are
    forgotten and inferred again from the inputs: value_info never decides a shape.

    Invariant after the pass: every graph input has a fully static shape. Raises :class:`ModelError` naming
    each input that is still dynamic and the flag that fixes it.
    """

    def __init__(self, overrides: dict[str, tuple[int, ...]] | None = None):
        super().__init__()
        self.overrides = dict(overrides or {})

    def call(self, model: ir.Model) -> PassResult:
        """Set shapes, validate them and run ONNX shape inference."""
        inputs = {value.name: value for value in model.graph.inputs}
        unknown = sorted(set(self.overrides) - set(inputs))
        if unknown:
            raise ModelError(f"--input-shape names unknown input(s) {unknown}; the model's inputs are {sorted(inputs)}")
        modified = False
        problems = []
        for name, value in inputs.items():
            if value.shape is not None:
                value.shape = ir.Shape([d if not isinstance(d, int) or d >= 0 else None for d in value.shape.dims])
            if name in self.overrides:
                modified |= self._override(value, self.overrides[name])
            elif _only_batch_dynamic(value):
                value.shape = ir.Shape([1, *value.shape.dims[1:]])
                modified = True
            dims = list(value.shape.dims) if value.shape is not None else None
            if dims is None or not all(isinstance(d, int) for d in dims):
                shown = "?" if dims is None else ",".join(_dim_text(d) for d in dims)
                example = ",".join(str(d) if isinstance(d, int) else "1" for d in (dims or [1, 3, 224, 224]))
                problems.append(f"input '{name}' has a dynamic shape [{shown}]: pass --input-shape {name}={example} "
                                f"(Python: input_shapes={{'{name}': ({example.replace(',', ', ')})}})")
        if problems:
            raise ModelError("qc needs static shapes:\n  " + "\n  ".join(problems))
        derived = [value for node in model.graph for value in node.outputs]
        before = [value.shape for value in derived]
        for value in derived:
            value.shape = None
        infer_shapes(model)
        modified |= any(value.shape != old for value, old in zip(derived, before, strict=True))
        return PassResult(model, modified)

    @staticmethod
    def _override(value: ir.Value, shape: tuple[int, ...]) -> bool:
        """Replace ``value``'s shape by ``shape`` after checking rank and the static dims it already has."""
        old = value.shape
        if old is not None and len(old) != len(shape):
            raise ModelError(f"--input-shape {value.name}: rank {len(shape)} given, the model's input has rank {len(old)}")
        if old is not None:
            for i, (was, new) in enumerate(zip(old.dims, shape, strict=True)):
                if isinstance(was, int) and was != new:
                    raise ModelError(f"--input-shape {value.name}: dim {i} is fixed to {was} by the model, got {new}")
        value.shape = ir.Shape(list(shape))
        return old is None or list(old.dims) != list(shape)


def _only_batch_dynamic(value: ir.Value) -> bool:
    """Whether ``value``'s shape is static except for its leading dim."""
    dims = list(value.shape.dims) if value.shape is not None else []
    return bool(dims) and not isinstance(dims[0], int) and all(isinstance(d, int) for d in dims[1:])


def _dim_text(dim) -> str:
    """A dim for messages: its size, its symbolic name, or ``?``."""
    return str(dim) if isinstance(dim, int) else str(getattr(dim, "value", None) or "?")
