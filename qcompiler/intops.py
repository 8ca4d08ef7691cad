"""qc's integer op set: the ops allowed inside the integer region of ``model.int.onnx``.

The integer region is every node between the boundary ``QuantizeLinear`` (one per model input) and the
boundary ``DequantizeLinear`` (one per model output). Inside it every tensor is an integer tensor and every
op is either a standard ONNX op applied to integers (table :data:`STANDARD_INTEGER_OPS`) or a qc function
(domain :data:`DOMAIN`) whose body is itself written with standard integer ops, so that onnxruntime executes
the reference model as is. Targets lower qc functions directly from the semantics stated here.
"""

from __future__ import annotations

import onnx
import onnx.parser

__all__ = [
    "DOMAIN",
    "VERSION",
    "STANDARD_INTEGER_OPS",
    "QC_FUNCTIONS",
    "function_protos",
    "is_integer_op",
]

DOMAIN = "qc"
VERSION = 1
ONNX_OPSET = 21

#: Standard ONNX ops allowed inside the integer region (always on integer tensors; the verifier checks types).
STANDARD_INTEGER_OPS = frozenset(
    {
        "ConvInteger",  # u8/i8 x (pre-padded, no zero point), i8 w -> i32
        "MatMulInteger",  # u8/i8 x, i8 w -> i32
        "MatMul",  # int32 x int32 -> int32 (centered activation x activation products)
        "Add", "Sub", "Mul", "Div", "Mod", "Pow", "Neg", "Abs", "Sign",
        "Cast", "CastLike", "Clip", "Max", "Min", "Where", "Equal", "Less", "Greater", "Not", "And", "Or",
        "MaxPool", "ReduceSum", "ReduceMax", "ReduceMin",
        "Pad", "Reshape", "Flatten", "Transpose", "Concat", "Slice", "Resize", "Squeeze", "Unsqueeze",
        "Gather", "Expand", "Identity", "Split", "Tile",
    }
)  # fmt: skip

_REQUANTIZE = f"""
<domain: "{DOMAIN}", opset_import: ["": {ONNX_OPSET}]>
Requantize <to>(x, multiplier, shift, zero_point, qmin, qmax) => (y) {{
    wide = Cast <to = 7> (x)
    product = Mul (wide, multiplier)
    two = Constant <value = int64 {{2}}> ()
    one = Constant <value = int64 {{1}}> ()
    divisor = Pow (two, shift)
    shift_less_one = Sub (shift, one)
    half = Pow (two, shift_less_one)
    biased = Add (product, half)
    remainder = Mod <fmod = 0> (biased, divisor)
    exact = Sub (biased, remainder)
    floored = Div (exact, divisor)
    shifted = Add (floored, zero_point)
    clamped = Clip (shifted, qmin, qmax)
    y = Cast <to: int = @to> (clamped)
}}
"""

_LOOKUP_TABLE = f"""
<domain: "{DOMAIN}", opset_import: ["": {ONNX_OPSET}]>
LookupTable (x, table, index_offset) => (y) {{
    index = Cast <to = 6> (x)
    shifted = Add (index, index_offset)
    y = Gather <axis = 0> (table, shifted)
}}
"""

_SHIFT_LEFT = f"""
<domain: "{DOMAIN}", opset_import: ["": {ONNX_OPSET}]>
ShiftLeft (x, shift) => (y) {{
    two = Constant <value = int64 {{2}}> ()
    wide_shift = Cast <to = 7> (shift)
    power = Pow (two, wide_shift)
    factor = CastLike (power, x)
    y = Mul (x, factor)
}}
"""

_SHIFT_RIGHT = f"""
<domain: "{DOMAIN}", opset_import: ["": {ONNX_OPSET}]>
ShiftRight (x, shift) => (y) {{
    two = Constant <value = int64 {{2}}> ()
    wide_shift = Cast <to = 7> (shift)
    power = Pow (two, wide_shift)
    divisor = CastLike (power, x)
    remainder = Mod <fmod = 0> (x, divisor)
    exact = Sub (x, remainder)
    y = Div (exact, divisor)
}}
"""

#: qc functions and their semantics (the function bodies above are the executable definition).
QC_FUNCTIONS = {
    "Requantize": (
        _REQUANTIZE,
        "y = cast<to>(clip(floor((int64(x) * multiplier + 2**(shift-1)) / 2**shift) + zero_point, qmin, qmax)). "
        "x: int32 or int64; multiplier, shift: int64, broadcast against x (per channel); zero_point, qmin, "
        "qmax: int64 scalars; 1 <= shift <= 62. See qcompiler.qmath.requantize.",
    ),
    "LookupTable": (
        _LOOKUP_TABLE,
        "y = table[int32(x) + index_offset]. table: 1-D int8/uint8/int32; index_offset: int32, broadcast "
        "against x (a per-channel offset selects a per-channel table).",
    ),
    "ShiftLeft": (
        _SHIFT_LEFT,
        "y = x * 2**shift (a left shift that wraps like the dtype). x: int32 or int64; shift: int32 or int64, "
        "broadcast against x, 0 <= shift < bits(x) - 1. y has x's dtype and broadcast shape.",
    ),
    "ShiftRight": (
        _SHIFT_RIGHT,
        "y = floor(x / 2**shift) (an arithmetic right shift). x: int32 or int64; shift: int32 or int64, "
        "broadcast against x, 0 <= shift < bits(x) - 1. y has x's dtype and broadcast shape.",
    ),
}


def function_protos() -> list[onnx.FunctionProto]:
    """The qc functions as ONNX ``FunctionProto`` s, ready to attach to a model."""
    return [onnx.parser.parse_function(text) for text, _ in QC_FUNCTIONS.values()]


def is_integer_op(domain: str, op_type: str) -> bool:
    """Whether ``domain::op_type`` may appear inside the integer region."""
    if domain in ("", "ai.onnx"):
        return op_type in STANDARD_INTEGER_OPS
    return domain == DOMAIN and op_type in QC_FUNCTIONS
