"""SIMD int8 dot-product kernels for Cortex-M (``SMLAD``; Helium on the M55), called from TVM's C kernels.

The integer convolutions and the matrix products with a constant weight are legalized (instead of TVM's
scalar loops) into a call of a C function of ``qc_simd.c`` that writes the same int32 result:

* ``qc_simd_conv2d_<a><b>`` (NCHW input ``x`` of dtype ``a``, OIHW weight ``w`` of dtype ``b``, any stride,
  padding, dilation and groups): per output pixel, the input window of one group is gathered into ``col``
  (zeros where the window leaves the input, as TVM's padding does), and each pair of output channels takes
  two dot products with it;
* ``qc_simd_matmul_<a><b>`` (``a[M, K]`` times a constant ``b[K, N]``, passed transposed as ``bt[N, K]`` so
  both operands are read along K): each row of ``a`` takes dot products with two columns at a time.

**The dot product.** Four bytes of each operand are loaded as one word; ``SXTB16`` (int8) or ``UXTB16``
(uint8) widens bytes 0 and 2 to two 16-bit halves, the same with its ``ror #8`` operand bytes 1 and 3, and ``SMLAD`` adds both halves' products to the accumulator: 4 multiply-accumulates in about 5
instructions per operand pair, against about 15 for TVM's scalar loop (which loads and stores the
accumulator in memory every time). Exact: the halves hold the 8-bit values unchanged (0..255 or
-128..127, within int16), each product fits 16 x 16 -> 32 bits, and ``SMLAD``'s accumulation wraps modulo
2**32 like the int32 sum it replaces, in any order. The tail (K mod 4) and cores without the DSP extension
(no ``__ARM_FEATURE_SIMD32``) use the same sum in plain C, accumulated as ``uint32_t`` (wrapping, defined).

**Helium (MVE, Cortex-M55).** The loop first takes 8 values at a time: ``VLDRB.U16`` / ``VLDRB.S16`` load 8
bytes widened to 8 int16 lanes and ``VMLADAVA.S16`` adds the 8 products to the accumulator (16 x 16 -> 32
bits, the accumulation wrapping modulo 2**32): exact for the same reasons. The SMLAD loop and the plain C
then take the rest of K.

The result then goes through the requantization epilogue in its own (fused, element-wise) TVM kernel.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, te, tirx

__all__ = ["KERNEL_PREFIX", "MIN_DOT_LENGTH", "SIMD_HEADER", "SIMD_SOURCE", "legalizations", "simd_c", "simd_h"]

SIMD_HEADER = "qc_simd.h"
SIMD_SOURCE = "qc_simd.c"
#: the TVM kernels (PrimFuncs) that call a SIMD kernel are named so.
KERNEL_PREFIX = "simd_"
#: shorter reductions stay with TVM (they fuse with their neighbours, and SIMD gains nothing on them).
MIN_DOT_LENGTH = 8

_C_TYPES = {"uint8": "uint8_t", "int8": "int8_t"}
_SHORT = {"uint8": "u8", "int8": "s8"}
_WIDEN = {"uint8": "uxtb16", "int8": "sxtb16"}
#: MVE: 8 bytes widened to 8 int16 lanes (zero- or sign-extending load).
_MVE_LOAD = {"uint8": "qc_load_u8x8", "int8": "vldrbq_s16"}
_PAIRS = [(a, b) for a in _C_TYPES for b in _C_TYPES]


def _suffix(a_dtype: str, b_dtype: str) -> str:
    return _SHORT[a_dtype] + _SHORT[b_dtype]


def _dot2(a_dtype: str, b_dtype: str) -> str:
    """``qc_dot2_<ab>``: two dot products of ``a`` with ``b0`` and ``b1`` over ``k`` values."""
    ta, tb, wa, wb = _C_TYPES[a_dtype], _C_TYPES[b_dtype], _WIDEN[a_dtype], _WIDEN[b_dtype]
    return f"""
static inline void qc_dot2_{_suffix(a_dtype, b_dtype)}(const {ta} *a, const {tb} *b0, const {tb} *b1, int32_t k,
                                     int32_t *s0, int32_t *s1) {{
  uint32_t acc0 = 0, acc1 = 0;
  int32_t i = 0;
#if QC_MVE
  for (; i + 8 <= k; i += 8) {{
    int16x8_t x = {_MVE_LOAD[a_dtype]}(a + i);
    acc0 = (uint32_t)vmladavaq_s16((int32_t)acc0, x, {_MVE_LOAD[b_dtype]}(b0 + i));
    acc1 = (uint32_t)vmladavaq_s16((int32_t)acc1, x, {_MVE_LOAD[b_dtype]}(b1 + i));
  }}
#endif
#ifdef __ARM_FEATURE_SIMD32
  for (; i + 4 <= k; i += 4) {{
    uint32_t x = qc_word(a + i), y0 = qc_word(b0 + i), y1 = qc_word(b1 + i);
    int32_t x02 = (int32_t)__{wa}(x), x13 = qc_{wa}_ror8(x);
    acc0 = (uint32_t)__smlad(x02, (int32_t)__{wb}(y0), (int32_t)acc0);
    acc0 = (uint32_t)__smlad(x13, qc_{wb}_ror8(y0), (int32_t)acc0);
    acc1 = (uint32_t)__smlad(x02, (int32_t)__{wb}(y1), (int32_t)acc1);
    acc1 = (uint32_t)__smlad(x13, qc_{wb}_ror8(y1), (int32_t)acc1);
  }}
#endif
  for (; i < k; ++i) {{
    acc0 += (uint32_t)((int32_t)a[i] * (int32_t)b0[i]);
    acc1 += (uint32_t)((int32_t)a[i] * (int32_t)b1[i]);
  }}
  *s0 = (int32_t)acc0;
  *s1 = (int32_t)acc1;
}}"""


def _conv2d_signature(a_dtype: str, b_dtype: str) -> str:
    """The convolution kernel's C signature: as TVM's ``kernels.c`` declares it (non-const pointers, int32)."""
    ta, tb, s = _C_TYPES[a_dtype], _C_TYPES[b_dtype], _suffix(a_dtype, b_dtype)
    sizes = ", ".join(f"int32_t {v}" for v in ("batch", "c", "h", "wd", "o", "kh", "kw", "oh", "ow", "sh", "sw",
                                               "ph", "pw", "dh", "dw", "groups"))
    return f"int32_t qc_simd_conv2d_{s}({ta} *x, {tb} *w, int32_t *y, {ta} *col, {sizes})"


def _matmul_signature(a_dtype: str, b_dtype: str) -> str:
    """The matrix-product kernel's C signature (as :func:`_conv2d_signature`)."""
    ta, tb, s = _C_TYPES[a_dtype], _C_TYPES[b_dtype], _suffix(a_dtype, b_dtype)
    return f"int32_t qc_simd_matmul_{s}({ta} *a, {tb} *bt, int32_t *y, int32_t m, int32_t k, int32_t n)"


def _conv2d(a_dtype: str, b_dtype: str) -> str:
    ta, tb, s = _C_TYPES[a_dtype], _C_TYPES[b_dtype], _suffix(a_dtype, b_dtype)
    return f"""
{_conv2d_signature(a_dtype, b_dtype)} {{
  const int32_t cg = c / groups, og = o / groups, k = cg * kh * kw, plane = oh * ow;
  for (int32_t n = 0; n < batch; ++n) {{
    for (int32_t g = 0; g < groups; ++g) {{
      const {ta} *xg = x + (n * c + g * cg) * h * wd;
      const {tb} *wg = w + g * og * k;
      int32_t *yg = y + (n * o + g * og) * plane;
      for (int32_t oy = 0; oy < oh; ++oy) {{
        for (int32_t ox = 0; ox < ow; ++ox) {{
          {ta} *p = col;
          for (int32_t ci = 0; ci < cg; ++ci) {{
            for (int32_t ky = 0; ky < kh; ++ky) {{
              const int32_t iy = oy * sh - ph + ky * dh;
              for (int32_t kx = 0; kx < kw; ++kx) {{
                const int32_t ix = ox * sw - pw + kx * dw;
                *p++ = (iy >= 0 && iy < h && ix >= 0 && ix < wd) ? xg[(ci * h + iy) * wd + ix] : 0;
              }}
            }}
          }}
          int32_t *out = yg + oy * ow + ox, oc = 0, last;
          for (; oc + 2 <= og; oc += 2) {{
            qc_dot2_{s}(col, wg + oc * k, wg + (oc + 1) * k, k, &out[oc * plane], &out[(oc + 1) * plane]);
          }}
          if (oc < og) qc_dot2_{s}(col, wg + oc * k, wg + oc * k, k, &out[oc * plane], &last);
        }}
      }}
    }}
  }}
  return 0;
}}"""


def _matmul(a_dtype: str, b_dtype: str) -> str:
    ta, s = _C_TYPES[a_dtype], _suffix(a_dtype, b_dtype)
    return f"""
{_matmul_signature(a_dtype, b_dtype)} {{
  for (int32_t i = 0; i < m; ++i) {{
    const {ta} *row = a + i * k;
    int32_t *out = y + i * n, j = 0, last;
    for (; j + 2 <= n; j += 2) qc_dot2_{s}(row, bt + j * k, bt + (j + 1) * k, k, &out[j], &out[j + 1]);
    if (j < n) qc_dot2_{s}(row, bt + j * k, bt + j * k, k, &out[j], &last);
  }}
  return 0;
}}"""


def _prototypes() -> list[str]:
    return [f"{signature(a, b)};" for a, b in _PAIRS for signature in (_conv2d_signature, _matmul_signature)]


def simd_h() -> str:
    """``qc_simd.h``: the kernels TVM's C calls, with the signatures TVM declares for them in ``kernels.c``
    (non-const pointers, an int32 result: always 0)."""
    return "/* qc: SIMD int8 dot-product kernels (generated). */\n#pragma once\n#include <stdint.h>\n\n" + (
        "\n".join(_prototypes()) + "\n"
    )


def simd_c() -> str:
    """``qc_simd.c``: every kernel for every pair of 8-bit operand dtypes (the linker drops unused ones)."""
    parts = [
        "/* qc: SIMD int8 dot-product kernels (generated); see qc's targets/cortex_m/_simd.py. */",
        "#include <stdint.h>",
        "#include <string.h>",
        "#ifdef __ARM_FEATURE_SIMD32",
        "#include <arm_acle.h>",
        "#endif",
        "#if defined(__ARM_FEATURE_MVE) && (__ARM_FEATURE_MVE & 1)",
        "#define QC_MVE 1",
        "#include <arm_mve.h>",
        "static inline int16x8_t qc_load_u8x8(const uint8_t *p) { return vreinterpretq_s16_u16(vldrbq_u16(p)); }",
        "#else",
        "#define QC_MVE 0",
        "#endif",
        f'#include "{SIMD_HEADER}"',
        "",
        "/* Four bytes from any address (Armv7E-M and Armv8.1-M load unaligned words). */",
        "static inline uint32_t qc_word(const void *p) {",
        "  uint32_t v;",
        "  memcpy(&v, p, 4);",
        "  return v;",
        "}",
        "",
        "#ifdef __ARM_FEATURE_SIMD32",
        "/* bytes 1 and 3 widened: the extend's own rotate operand (gcc does not fold a shift into it) */",
        *(f"static inline int32_t qc_{w}_ror8(uint32_t x) {{\n  int32_t r;\n"
          f'  __asm__("{w} %0, %1, ror #8" : "=r"(r) : "r"(x));\n  return r;\n}}' for w in _WIDEN.values()),
        "#endif",
    ]
    parts += [_dot2(a, b) for a, b in _PAIRS]
    parts += [_conv2d(a, b) for a, b in _PAIRS]
    parts += [_matmul(a, b) for a, b in _PAIRS]
    return "\n".join(parts) + "\n"


# ---- legalization: Relax calls -> call_tir of an extern PrimFunc -------------------------------------------


def _static_shape(expr: relax.Expr) -> tuple[int, ...] | None:
    shape = expr.ty.shape
    if shape is None or not all(isinstance(d, tirx.IntImm) for d in shape.values):
        return None
    return tuple(int(d) for d in shape.values)


def _eight_bit(expr: relax.Expr) -> bool:
    return str(expr.ty.dtype) in _C_TYPES


def _default(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    return tvm.ir.Op.get(call.op.name).get_attr("FLegalize")(bb, call)


def _conv2d_call(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    x, w = call.args
    attrs = call.attrs
    x_shape, w_shape = _static_shape(x), _static_shape(w)
    layouts = (attrs.data_layout, attrs.kernel_layout, attrs.out_layout or attrs.data_layout)
    if (
        x_shape is None or w_shape is None or not (_eight_bit(x) and _eight_bit(w))
        or str(attrs.out_dtype) != "int32" or layouts != ("NCHW", "OIHW", "NCHW")
        or w_shape[1] * w_shape[2] * w_shape[3] < MIN_DOT_LENGTH
    ):  # fmt: skip
        return _default(bb, call)
    (sh, sw), (dh, dw) = (tuple(int(v) for v in attrs.strides), tuple(int(v) for v in attrs.dilation))
    top, left, bottom, right = (int(v) for v in attrs.padding)
    batch, c, h, wd = x_shape
    o, cg, kh, kw = w_shape
    oh = (h + top + bottom - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + left + right - dw * (kw - 1) - 1) // sw + 1
    name = f"qc_simd_conv2d_{_suffix(str(x.ty.dtype), str(w.ty.dtype))}"
    geometry = (batch, c, h, wd, o, kh, kw, oh, ow, sh, sw, top, left, dh, dw, int(attrs.groups))

    def body(ins, outs):
        return tirx.Evaluate(tirx.call_extern(
            "int32", name, ins[0].data, ins[1].data, outs[0].data, outs[1].data, *geometry))  # fmt: skip

    def compute(xt, wt):
        return te.extern([(batch, o, oh, ow), (cg * kh * kw,)], [xt, wt], body,
                         dtype=["int32", str(x.ty.dtype)], name="simd_conv2d")  # fmt: skip

    return relax.TupleGetItem(bb.emit(bb.call_te(compute, x, w, primfunc_name_hint="simd_conv2d")), 0)


def _matmul_call(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    a, b = call.args
    a_shape = _static_shape(a)
    if (
        a_shape is None or len(a_shape) < 1 or not isinstance(b, tvm.ir.expr.Constant) or len(b.value.shape) != 2
        or not (_eight_bit(a) and _eight_bit(b)) or str(call.attrs.out_dtype) != "int32"
        or a_shape[-1] < MIN_DOT_LENGTH
    ):  # fmt: skip
        return _default(bb, call)
    k, n = (int(d) for d in b.value.shape)
    m = int(np.prod(a_shape[:-1], dtype=np.int64))
    bt = relax.const(np.ascontiguousarray(b.value.numpy().T))
    name = f"qc_simd_matmul_{_suffix(str(a.ty.dtype), str(b.ty.dtype))}"
    out_shape = (*a_shape[:-1], n)

    def body(ins, outs):
        return tirx.Evaluate(tirx.call_extern("int32", name, ins[0].data, ins[1].data, outs[0].data, m, k, n))

    def compute(at, btt):
        return te.extern(out_shape, [at, btt], body, dtype="int32", name="simd_matmul")

    return bb.call_te(compute, a, bt, primfunc_name_hint="simd_matmul")


def legalizations() -> dict:
    """``LegalizeOps``' custom map: integer conv2d and constant-weight matmul through the SIMD kernels
    (other calls of the same ops fall back to TVM's own legalization)."""
    return {"relax.nn.conv2d": _conv2d_call, "relax.matmul": _matmul_call}
