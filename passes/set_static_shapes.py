"""Give every graph input a static shape (from the model or ``--input-shape``) and infer all shapes."""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import ShapeInferencePass

from qcompiler.errors import ModelError
from qcompiler.pass_infra import PassResult, QcPass


class SetStaticShapesPass(QcPass):
    """Apply user shape overrides to graph inputs, refuse remaining dynamic dims, then infer shapes.

    ``overrides`` maps an input name to its full static shape. Invariant after the pass: every graph input
    has a fully static shape. Raises :class:`ModelError` naming each dynamic input and the flag that fixes it.
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
            if name in self.overrides:
                modified |= self._override(value, self.overrides[name])
            dims = list(value.shape.dims) if value.shape is not None else None
            if dims is None or not all(isinstance(d, int) for d in dims):
                shown = "?" if dims is None else ",".join(_dim_text(d) for d in dims)
                example = ",".join(str(d) if isinstance(d, int) else "1" for d in (dims or [1, 3, 224, 224]))
                problems.append(f"input '{name}' has a dynamic shape [{shown}]: pass --input-shape {name}={example}")
        if problems:
            raise ModelError("qc needs static shapes:\n  " + "\n  ".join(problems))
        modified |= ShapeInferencePass()(model).modified
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


def _dim_text(dim) -> str:
    """A dim for messages: its size, its symbolic name, or ``?``."""
    return str(dim) if isinstance(dim, int) else str(getattr(dim, "value", None) or "?")
