"""C text of the model: ``model.h`` (the API), ``model.c`` (the graph driver), ``weights.c`` (flash).

The driver holds one static arena; every tensor is a ``const DLTensor`` whose data pointer is an address
constant (arena + offset, or a weight), except the caller's inputs and outputs, whose descriptors ``qc_run``
fills on each call. Kernel argument lists are ``const TVMFFIAny`` arrays, so the graph description sits in
flash. A kernel that needs scratch memory gets it from a bump allocator over its own slot of the arena.
"""

from __future__ import annotations

import re

import numpy as np
import tvm

from qcompiler.targets._runtime import TensorSpec
from qcompiler.targets.cortex_m._plan import ARENA_ALIGN, UNPACK_KERNELS, Plan

__all__ = ["c_identifier", "model_c", "model_h", "weights_c", "weights_h"]

_C_TYPES = {
    "int8": "int8_t",
    "uint8": "uint8_t",
    "int16": "int16_t",
    "uint16": "uint16_t",
    "int32": "int32_t",
    "uint32": "uint32_t",
    "int64": "int64_t",
    "uint64": "uint64_t",
    "bool": "uint8_t",
}
_SUFFIX = {"int64": "LL", "uint64": "ULL", "uint32": "U"}
_VALUES_PER_LINE = 24


def c_identifier(name: str) -> str:
    """A C identifier for a tensor name (non-word characters become ``_``; never a leading digit)."""
    ident = re.sub(r"\W", "_", name)
    return ident if ident and not ident[0].isdigit() else f"t_{ident}"


def _literal(value: int, dtype: str) -> str:
    """A C literal of ``dtype``; the minimum of a signed type is written as an expression (``-N`` would
    negate an out-of-range ``N``)."""
    if dtype in ("int32", "int64") and value == np.iinfo(dtype).min:
        return f"({value + 1}{_SUFFIX.get(dtype, '')} - 1)"
    return f"{value}{_SUFFIX.get(dtype, '')}"


def _declaration(index: int, value: np.ndarray) -> str:
    return f"const {_C_TYPES[value.dtype.name]} qc_weight_{index}[{max(value.size, 1)}]"


def weights_c(plan: Plan) -> str:
    """``weights.c``: every constant as a ``const`` array (the linker puts them in flash)."""
    lines = [
        "/* qc: weights and integer parameters (generated). */",
        "#include <stdint.h>",
        '#include "weights.h"',
    ]
    for index, value in enumerate(plan.constants):
        flat = [_literal(int(v), value.dtype.name) for v in value.reshape(-1).tolist()] or ["0"]
        lines.append("")
        lines.append(f"{_declaration(index, value)} __attribute__((aligned({ARENA_ALIGN}))) = {{")
        lines.extend(
            f"  {', '.join(flat[i : i + _VALUES_PER_LINE])}," for i in range(0, len(flat), _VALUES_PER_LINE)
        )
        lines.append("};")
    return "\n".join(lines) + "\n"


def weights_h(plan: Plan) -> str:
    """``weights.h``: the weight arrays, for the driver."""
    decls = [f"extern {_declaration(i, v)};" for i, v in enumerate(plan.constants)]
    return "#pragma once\n#include <stdint.h>\n\n" + "\n".join(decls) + "\n"


def _bytes(spec: TensorSpec) -> int:
    return int(np.prod(spec.shape, dtype=np.int64)) * np.dtype(spec.dtype).itemsize


def _signature(inputs: list[TensorSpec], outputs: list[TensorSpec]) -> str:
    params = [f"const {_C_TYPES[s.dtype]} *{c_identifier(s.name)}" for s in inputs]
    params += [f"{_C_TYPES[s.dtype]} *{c_identifier(s.name)}" for s in outputs]
    return f"int qc_run({', '.join(params)})"


def model_h(inputs: list[TensorSpec], outputs: list[TensorSpec], plan: Plan) -> str:
    """``model.h``: ``qc_run`` with one typed pointer per input and output; sizes as macros."""
    sizes = [f"#define QC_INPUT{i}_BYTES {_bytes(s)}u /* {s.name}: {s.dtype}{list(s.shape)} */"
             for i, s in enumerate(inputs)]  # fmt: skip
    sizes += [f"#define QC_OUTPUT{i}_BYTES {_bytes(s)}u /* {s.name}: {s.dtype}{list(s.shape)} */"
              for i, s in enumerate(outputs)]  # fmt: skip
    newline = "\n"
    return f"""/* qc: integer-only model for Cortex-M (generated); bit-exact with model.int.onnx. */
#pragma once
#include <stdint.h>

#define QC_NUM_INPUTS {len(inputs)}
#define QC_NUM_OUTPUTS {len(outputs)}
#define QC_NUM_STEPS {len(plan.steps)} /* kernel calls per run */
{newline.join(sizes)}
#define QC_ARENA_BYTES {plan.arena_bytes}u /* static, in model.c: no malloc */

/* Run the model once. Inputs and outputs are the caller's: they must not overlap, and must be aligned
 * to their element size (16 bytes is always enough). Not reentrant: the arena is static.
 * Returns 0, or 1 + the index of the kernel that failed (qc_last_error() says why). */
{_signature(inputs, outputs)};

/* The same, with the buffers as arrays of pointers in signature order. */
int qc_run_buffers(const void *const *inputs, void *const *outputs);

/* The message of the last failure ("" after a successful run). */
const char *qc_last_error(void);
"""


def _dl_dtype(dtype: str) -> str:
    t = tvm.DataType(dtype)
    return f"{{{t.type_code}, {t.bits}, {t.lanes}}}"


#: the three symbols TVM's C kernels need, over the arena (no malloc, no OS).
_RUNTIME = f"""
static char qc_error[160];
static uint8_t *qc_ws_top, *qc_ws_end;

/* The next kernel's scratch memory: its own slot of the arena (NULL when it needs none). */
static void qc_workspace(uint8_t *base, uint32_t nbytes) {{
  qc_ws_top = base;
  qc_ws_end = base + nbytes;
}}

void *TVMBackendAllocWorkspace(int device_type, int device_id, uint64_t nbytes, int code, int bits) {{
  (void)device_type, (void)device_id, (void)code, (void)bits;
  uint64_t rounded = (nbytes + {ARENA_ALIGN - 1}u) & ~(uint64_t){ARENA_ALIGN - 1}u;
  if (qc_ws_top == NULL || rounded > (uint64_t)(qc_ws_end - qc_ws_top)) return NULL;
  void *block = qc_ws_top;
  qc_ws_top += rounded;
  return block;
}}

int TVMBackendFreeWorkspace(int device_type, int device_id, void *ptr) {{
  (void)device_type, (void)device_id;
  qc_ws_top = (uint8_t *)ptr; /* kernels free in the reverse order of allocation */
  return 0;
}}

static void qc_append(size_t *used, const char *text) {{
  size_t len = strlen(text);
  if (len > sizeof(qc_error) - 1 - *used) len = sizeof(qc_error) - 1 - *used;
  memcpy(qc_error + *used, text, len);
  *used += len;
  qc_error[*used] = 0;
}}

void TVMFFIErrorSetRaisedFromCStrParts(const char *kind, const char **parts, int32_t n) {{
  size_t used = 0;
  qc_append(&used, kind);
  qc_append(&used, ": ");
  for (int32_t i = 0; i < n; ++i) qc_append(&used, parts[i]);
}}

const char *qc_last_error(void) {{ return qc_error; }}
"""


def _unpack_kernel(bits: int) -> str:
    """The C of :data:`UNPACK_KERNELS` ``[bits]``, with a kernel's calling convention: args = (packed uint8
    source, int8 destination); value ``i`` is bits ``[(i % k) * bits, ...)`` of byte ``i / k`` (k = 8 / bits),
    sign-extended (see :func:`~qcompiler.targets.cortex_m._plan.pack_codes`)."""
    per_byte, mask, half = 8 // bits, (1 << bits) - 1, 1 << (bits - 1)
    return f"""
static int32_t __tvm_ffi_{UNPACK_KERNELS[bits]}(void *self, void *args, int32_t num_args, void *ret) {{
  const TVMFFIAny *a = (const TVMFFIAny *)args;
  const uint8_t *src = (const uint8_t *)((const DLTensor *)a[0].v_ptr)->data;
  const DLTensor *dst = (const DLTensor *)a[1].v_ptr;
  int8_t *out = (int8_t *)dst->data;
  int64_t n = 1;
  for (int32_t d = 0; d < dst->ndim; ++d) n *= dst->shape[d];
  for (int64_t i = 0; i < n; ++i) {{
    int32_t code = (src[i / {per_byte}] >> ((i % {per_byte}) * {bits})) & {mask};
    out[i] = (int8_t)((code ^ {half}) - {half});
  }}
  (void)self; (void)num_args; (void)ret;
  return 0;
}}"""


def model_c(plan: Plan, kernels: list[str], inputs: list[TensorSpec], outputs: list[TensorSpec]) -> str:
    """``model.c``: shapes, tensor descriptors, argument lists, the arena, ``qc_run_buffers``, ``qc_run``."""
    io_tensors = [
        t for t, view in enumerate(plan.tensors) if plan.buffers[view.buffer].kind in ("input", "output")
    ]
    io = {t: i for i, t in enumerate(io_tensors)}

    def ref(t: int) -> str:
        return f"&qc_io[{io[t]}]" if t in io else f"&qc_tensors[{t}]"

    out = [
        "/* qc: graph driver (generated): static memory plan, one arena, weights in flash. */",
        "#include <stddef.h>",
        "#include <stdint.h>",
        "#include <string.h>",
        "#include <dlpack/dlpack.h>",
        "#include <tvm/ffi/c_api.h>",
        '#include "model.h"',
        '#include "weights.h"',
        "",
        "/* Built with -DQC_PROFILE_STEPS (make profile), qc_step_done(step) runs after each kernel call. */",
        "#ifdef QC_PROFILE_STEPS",
        "void qc_step_done(int step);",
        "#define QC_STEP_DONE(step) qc_step_done(step)",
        "#else",
        "#define QC_STEP_DONE(step) ((void)0)",
        "#endif",
        "",
        *(f"int32_t __tvm_ffi_{k}(void *self, void *args, int32_t num_args, void *ret);" for k in kernels),
        *(_unpack_kernel(b) for b, k in sorted(UNPACK_KERNELS.items()) if any(s.kernel == k for s in plan.steps)),
        "",
        f"static uint8_t qc_arena[{plan.arena_bytes}] __attribute__((aligned({ARENA_ALIGN})));"
        if plan.arena_bytes
        else "/* no arena: every kernel result goes straight to an output */",
        "/* descriptors of views of the caller's buffers, filled by qc_run_buffers */",
        f"static DLTensor qc_io[{max(len(io), 1)}];",
        "",
    ]
    for t, tensor in enumerate(plan.tensors):
        dims = ", ".join(map(str, tensor.shape)) or "1"
        out.append(f"static const int64_t qc_shape_{t}[{max(len(tensor.shape), 1)}] = {{{dims}}};")
    out.append("")
    out.append(f"static const DLTensor qc_tensors[{max(len(plan.tensors), 1)}] = {{")
    for t, tensor in enumerate(plan.tensors):
        buffer = plan.buffers[tensor.buffer]
        data = {"arena": f"qc_arena + {buffer.offset}", "const": f"(void *)qc_weight_{buffer.index}"}.get(
            buffer.kind, "NULL"
        )
        out.append(
            f"  {{{data}, {{kDLCPU, 0}}, {len(tensor.shape)}, {_dl_dtype(tensor.dtype)}, (int64_t *)qc_shape_{t}, "
            f"NULL, 0}}, /* {t}: {buffer.kind} {tensor.dtype}{list(tensor.shape)} */"
        )
    out.append("};")
    out.append("")
    for s, step in enumerate(plan.steps):
        args = ", ".join(
            f"{{.type_index = kTVMFFIDLTensorPtr, .v_ptr = (void *){ref(a)}}}" for a in step.args
        )
        out.append(f"static const TVMFFIAny qc_args_{s}[{len(step.args)}] = {{{args}}};")
    out.append(_RUNTIME)
    out.append("int qc_run_buffers(const void *const *inputs, void *const *outputs) {")
    out.append("  TVMFFIAny ret;")
    out.append("  qc_error[0] = 0;")
    for t in io_tensors:
        buffer = plan.buffers[plan.tensors[t].buffer]
        source = f"(void *)inputs[{buffer.index}]" if buffer.kind == "input" else f"outputs[{buffer.index}]"
        out.append(f"  qc_io[{io[t]}] = qc_tensors[{t}];")
        out.append(f"  qc_io[{io[t]}].data = {source};")
    for s, step in enumerate(plan.steps):
        if step.workspace >= 0:
            slot = plan.buffers[step.workspace]
            out.append(f"  qc_workspace(qc_arena + {slot.offset}, {slot.nbytes}u);")
        else:
            out.append("  qc_workspace(NULL, 0);")
        out.append(f"  if (__tvm_ffi_{step.kernel}(NULL, (void *)qc_args_{s}, {len(step.args)}, &ret) != 0) "
                   f"return {s + 1};")  # fmt: skip
        out.append(f"  QC_STEP_DONE({s});")
    for source, target in plan.copies:
        buffer = plan.buffers[plan.tensors[target].buffer]
        out.append(f"  memcpy(outputs[{buffer.index}], ({ref(source)})->data, {buffer.nbytes}u);")
    out.append("  return 0;")
    out.append("}")
    names = [c_identifier(s.name) for s in [*inputs, *outputs]]
    ins = ", ".join(names[: len(inputs)]) or "NULL"
    outs = ", ".join(names[len(inputs) :])
    out.append(f"""
{_signature(inputs, outputs)} {{
  const void *const inputs[{max(len(inputs), 1)}] = {{{ins}}};
  void *const outputs[{len(outputs)}] = {{{outs}}};
  return qc_run_buffers(inputs, outputs);
}}""")
    return "\n".join(out) + "\n"
