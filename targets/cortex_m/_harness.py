"""The bare-metal test image around the model: startup, semihosting I/O, linker script, Makefile.

The image reads each input from the host file ``in<i>.bin`` and writes each output to ``out<i>.bin``
(semihosting, relative to the emulator's working directory), so one ELF serves any number of runs. It
paints the stack before ``main`` and prints how much of it was used, then exits through semihosting
(status 0 only when every kernel succeeded).

**Instruction counts.** The image times ``qc_run_buffers`` with SysTick (the processor clock, 24-bit,
no interrupt: nothing is pushed on the model's stack), then times a calibration loop of exactly
:data:`CALIBRATION_INSTRUCTIONS` instructions the same way, and prints both tick counts. Under
``qemu-system-arm -icount shift=0`` the virtual clock advances one nanosecond per guest instruction and
SysTick counts that clock at the board's frequency, so ``ticks * CALIBRATION_INSTRUCTIONS /
calibration_ticks`` is the model's instruction count (to about one SysTick period, e.g. 40 instructions
at 25 MHz; deterministic from run to run). These are instructions, not cycles: qemu has no timing model.
A run longer than one SysTick wrap (2^24 ticks, ~670 M instructions at 25 MHz) prints no count.

**Per-kernel counts.** ``make profile`` builds ``qc_profile.elf``: the same image with ``model.c`` compiled
with ``-DQC_PROFILE_STEPS``, so the counter is read after every kernel call; it also prints the ticks of
each step (``step_ticks=...``). The reads add a few instructions per step to that image only.
"""

from __future__ import annotations

from qcompiler.targets._runtime import TensorSpec

__all__ = ["CALIBRATION_INSTRUCTIONS", "STACK_PAINT", "linker_script", "main_c", "makefile", "startup_c"]

#: the word the startup code fills the stack with (to measure its high-water mark).
STACK_PAINT = 0xA5A5A5A5
#: iterations of the calibration loop; each is two instructions (``subs``, ``bne``).
_CALIBRATION_ITERATIONS = 1 << 21
CALIBRATION_INSTRUCTIONS = 2 * _CALIBRATION_ITERATIONS


def startup_c() -> str:
    """Vector table, reset handler (copy .data, zero .bss, enable FPU/MVE, paint the stack), semihosting."""
    return f"""/* qc: bare-metal startup and semihosting for Cortex-M (generated). */
#include <stdint.h>
#include <string.h>

extern uint32_t __data_load[], __data_start[], __data_end[], __bss_start[], __bss_end[];
extern uint32_t __stack_limit[], __stack_top[];
int main(void);

int qc_semihost(int op, void *arg) {{
  register int r0 __asm__("r0") = op;
  register void *r1 __asm__("r1") = arg;
  __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
  return r0;
}}

void qc_puts(const char *text) {{ qc_semihost(0x04, (void *)text); }}

__attribute__((noreturn)) void qc_exit(int ok) {{
  /* SYS_EXIT: ADP_Stopped_ApplicationExit -> status 0, ADP_Stopped_RunTimeErrorUnknown -> 1 */
  qc_semihost(0x18, (void *)(ok ? 0x20026 : 0x20023));
  for (;;) {{
  }}
}}

uint32_t qc_stack_used(void) {{
  const uint32_t *word = __stack_limit;
  while (word < __stack_top && *word == 0x{STACK_PAINT:08X}u) ++word;
  return (uint32_t)((const uint8_t *)__stack_top - (const uint8_t *)word);
}}

__attribute__((noreturn)) void Reset_Handler(void) {{
  memcpy(__data_start, __data_load, (size_t)((uint8_t *)__data_end - (uint8_t *)__data_start));
  memset(__bss_start, 0, (size_t)((uint8_t *)__bss_end - (uint8_t *)__bss_start));
#if defined(__ARM_FP) || defined(__ARM_FEATURE_MVE)
  *(volatile uint32_t *)0xE000ED88u |= 0xFu << 20; /* CPACR: CP10/CP11 full access (FPU, MVE) */
  __asm__ volatile("dsb\\n\\tisb" ::: "memory");
#endif
  uint32_t *sp;
  __asm__ volatile("mov %0, sp" : "=r"(sp));
  for (uint32_t *word = __stack_limit; word < sp - 16; ++word) *word = 0x{STACK_PAINT:08X}u;
  qc_exit(main() == 0);
}}

/* SysTick as a tick counter (see the module docstring of qc's _harness): processor clock, no interrupt. */
#define QC_SYST ((volatile uint32_t *)0xE000E010u) /* CSR, RVR, CVR */
void qc_ticks_start(void) {{
  QC_SYST[0] = 0;
  QC_SYST[1] = 0xFFFFFFu;
  QC_SYST[2] = 0;
  QC_SYST[0] = 5u; /* enable, processor clock */
  while (QC_SYST[2] == 0u) {{
  }} /* the first tick loads RVR */
}}

/* The counter itself (it counts down from 0xFFFFFF). */
uint32_t qc_tick_value(void) {{ return QC_SYST[2]; }}

/* Ticks since qc_ticks_start, or 0xFFFFFFFF when the counter wrapped (COUNTFLAG). */
uint32_t qc_ticks(void) {{
  uint32_t now = QC_SYST[2], csr = QC_SYST[0];
  QC_SYST[0] = 0;
  return (csr & (1u << 16)) ? 0xFFFFFFFFu : 0xFFFFFFu - now;
}}

void qc_calibration_loop(void) {{
  uint32_t n = {_CALIBRATION_ITERATIONS}u;
  __asm__ volatile("1: subs %0, %0, #1\\n\\tbne 1b" : "+r"(n) : : "cc");
}}

__attribute__((noreturn)) void qc_fault(void) {{
  qc_puts("qc: fault (HardFault/MemManage/BusFault/UsageFault)\\n");
  qc_exit(0);
}}

typedef void (*qc_handler)(void);
__attribute__((section(".vectors"), used)) const qc_handler qc_vectors[16] = {{
  (qc_handler)(uintptr_t)__stack_top, Reset_Handler, qc_fault, qc_fault, qc_fault, qc_fault, qc_fault,
  0, 0, 0, 0, qc_fault, qc_fault, 0, qc_fault, qc_fault,
}};
"""


def main_c(inputs: list[TensorSpec], outputs: list[TensorSpec]) -> str:
    """The test program: read ``in<i>.bin``, run the model, write ``out<i>.bin``, report the stack used."""
    buffers = [
        f"static uint8_t qc_in{i}[QC_INPUT{i}_BYTES] __attribute__((aligned(16)));"
        for i in range(len(inputs))
    ]
    buffers += [
        f"static uint8_t qc_out{i}[QC_OUTPUT{i}_BYTES] __attribute__((aligned(16)));"
        for i in range(len(outputs))
    ]
    ins = ", ".join(f"qc_in{i}" for i in range(len(inputs))) or "NULL"
    outs = ", ".join(f"qc_out{i}" for i in range(len(outputs)))
    read = "\n".join(
        f'  if (!qc_file("in{i}.bin", 1, qc_in{i}, QC_INPUT{i}_BYTES)) return 2;' for i in range(len(inputs))
    )
    write = "\n".join(
        f'  if (!qc_file("out{i}.bin", 5, qc_out{i}, QC_OUTPUT{i}_BYTES)) return 2;'
        for i in range(len(outputs))
    )
    return f"""/* qc: semihosting test program (generated): in<i>.bin -> model -> out<i>.bin. */
#include <stdint.h>
#include <string.h>
#include "model.h"

int qc_semihost(int op, void *arg);
void qc_puts(const char *text);
uint32_t qc_stack_used(void);
void qc_ticks_start(void);
uint32_t qc_ticks(void);
void qc_calibration_loop(void);
uint32_t qc_tick_value(void);

#ifdef QC_PROFILE
/* the counter before the first kernel and after each (model.c built with -DQC_PROFILE_STEPS) */
static uint32_t qc_marks[QC_NUM_STEPS + 1];
void qc_step_done(int step) {{ qc_marks[step + 1] = qc_tick_value(); }}
#define QC_MARK_START() (qc_marks[0] = qc_tick_value())
#else
#define QC_MARK_START() ((void)0)
#endif

{chr(10).join(buffers)}

/* Read (mode 1, "rb") or write (mode 5, "wb") exactly n bytes of a host file; 1 on success. */
static int qc_file(const char *name, int mode, uint8_t *data, uint32_t n) {{
  uint32_t open_args[3] = {{(uint32_t)name, (uint32_t)mode, (uint32_t)strlen(name)}};
  int handle = qc_semihost(0x01, open_args);
  if (handle < 0) {{
    qc_puts("qc: cannot open ");
    qc_puts(name);
    qc_puts("\\n");
    return 0;
  }}
  uint32_t io_args[3] = {{(uint32_t)handle, (uint32_t)data, n}};
  int left = qc_semihost(mode == 1 ? 0x06 : 0x05, io_args);
  qc_semihost(0x02, &handle);
  if (left != 0) {{
    qc_puts("qc: short transfer on ");
    qc_puts(name);
    qc_puts("\\n");
  }}
  return left == 0;
}}

static void qc_put_uint(const char *label, uint32_t value) {{
  char text[12];
  int i = 11;
  text[i] = 0;
  do {{
    text[--i] = (char)('0' + value % 10u);
    value /= 10u;
  }} while (value);
  qc_puts(label);
  qc_puts(text + i);
}}

int main(void) {{
  const void *const inputs[{max(len(inputs), 1)}] = {{{ins}}};
  void *const outputs[{len(outputs)}] = {{{outs}}};
{read}
  qc_ticks_start();
  QC_MARK_START();
  int rc = qc_run_buffers(inputs, outputs);
  uint32_t ticks = qc_ticks();
  if (rc != 0) {{
    qc_put_uint("qc: kernel ", (uint32_t)(rc - 1));
    qc_puts(" failed: ");
    qc_puts(qc_last_error());
    qc_puts("\\n");
    return 1;
  }}
{write}
  qc_ticks_start();
  qc_calibration_loop();
  uint32_t calibration = qc_ticks();
  qc_put_uint("qc: ticks=", ticks);
  qc_put_uint(" calibration_ticks=", calibration);
  qc_puts("\\n");
#ifdef QC_PROFILE
  qc_puts("qc: step_ticks=");
  for (int s = 0; s < QC_NUM_STEPS; ++s) qc_put_uint(s ? "," : "", qc_marks[s] - qc_marks[s + 1]);
  qc_puts("\\n");
#endif
  qc_put_uint("qc: ok stack_used=", qc_stack_used());
  qc_puts("\\n");
  return 0;
}}
"""


def linker_script(flash: tuple[int, int], ram: tuple[int, int], constants: tuple[int, int] | None = None) -> str:
    """Code, constants and the .data image in flash; stack (lowest), .data and .bss (with the arena) in RAM.

    A board with a separate ``constants`` flash gets ``.rodata`` (the weights) there instead.
    """
    rodata = "CONST" if constants else "FLASH"
    const_region = f"\n  CONST (r)   : ORIGIN = 0x{constants[0]:08X}, LENGTH = {constants[1]}" if constants else ""
    return f"""/* qc: memory layout of the board (generated). */
MEMORY
{{
  FLASH (rx)  : ORIGIN = 0x{flash[0]:08X}, LENGTH = {flash[1]}
  RAM   (rwx) : ORIGIN = 0x{ram[0]:08X}, LENGTH = {ram[1]}{const_region}
}}

/* __stack_size: bytes, from the Makefile (-Wl,--defsym=__stack_size=...) */
ENTRY(Reset_Handler)

SECTIONS
{{
  .text :
  {{
    KEEP(*(.vectors))
    *(.text*)
    . = ALIGN(16);
  }} > FLASH
  .rodata :
  {{
    *(.rodata*)
    . = ALIGN(16);
  }} > {rodata}
  .ARM.exidx : {{ *(.ARM.exidx*) }} > FLASH
  .stack (NOLOAD) :
  {{
    . = ALIGN(8);
    __stack_limit = .;
    . += __stack_size;
    . = ALIGN(8);
    __stack_top = .;
  }} > RAM
  .data :
  {{
    . = ALIGN(16);
    __data_start = .;
    *(.data*)
    . = ALIGN(16);
    __data_end = .;
  }} > RAM AT > FLASH
  __data_load = LOADADDR(.data);
  .bss (NOLOAD) :
  {{
    . = ALIGN(16);
    __bss_start = .;
    *(.bss*)
    *(COMMON)
    . = ALIGN(16);
    __bss_end = .;
  }} > RAM
}}
"""


def makefile(cpu: str, cpu_flags: str) -> str:
    """The Makefile: ``make`` builds qc_model.elf (test image) and libqcmodel.a (model only)."""
    return f"""# qc: build the model for {cpu} with arm-none-eabi-gcc (generated).
#   make                  -> qc_model.elf (semihosting test image) and libqcmodel.a (model only)
#   make profile          -> qc_profile.elf (the test image, also timing each kernel call)
#   make CPU_FLAGS=...    -> another core of the same family
CC      = arm-none-eabi-gcc
AR      = arm-none-eabi-ar
SIZE    = arm-none-eabi-size
CPU_FLAGS ?= {cpu_flags}
OPT     ?= -O2
# stack.mk holds the stack size qc computed from -fstack-usage (the default is a safe guess).
-include stack.mk
STACK_SIZE ?= 8192
CFLAGS  = $(CPU_FLAGS) $(OPT) -std=gnu11 -ffunction-sections -fdata-sections -fstack-usage -Iinclude -I.
LDFLAGS = $(CPU_FLAGS) -nostartfiles --specs=nano.specs -Wl,--gc-sections -Wl,-T,board.ld \\
          -Wl,--defsym=__stack_size=$(STACK_SIZE) -Wl,-Map=build/qc_model.map

MODEL   = model.c kernels.c qc_simd.c weights.c
HARNESS = main.c startup.c
MODEL_OBJS   = $(MODEL:%.c=build/%.o)
HARNESS_OBJS = $(HARNESS:%.c=build/%.o)

all: qc_model.elf libqcmodel.a

objects: $(MODEL_OBJS) $(HARNESS_OBJS)

build/%.o: %.c model.h weights.h qc_simd.h | build
\t$(CC) $(CFLAGS) -c $< -o $@

build:
\tmkdir -p build

qc_model.elf: $(MODEL_OBJS) $(HARNESS_OBJS) board.ld
\t$(CC) $(LDFLAGS) $(MODEL_OBJS) $(HARNESS_OBJS) -o $@
\t$(SIZE) -A $@

# the test image that also times every kernel call (make profile; prints step_ticks=...)
PROFILE_OBJS = build/model_profile.o $(filter-out build/model.o,$(MODEL_OBJS)) build/main_profile.o build/startup.o

build/model_profile.o: model.c model.h weights.h | build
\t$(CC) $(CFLAGS) -DQC_PROFILE_STEPS -c $< -o $@

build/main_profile.o: main.c model.h | build
\t$(CC) $(CFLAGS) -DQC_PROFILE -c $< -o $@

profile: qc_profile.elf

qc_profile.elf: $(PROFILE_OBJS) board.ld
\t$(CC) $(LDFLAGS) $(PROFILE_OBJS) -o $@

libqcmodel.a: $(MODEL_OBJS)
\t$(AR) rcs $@ $^

clean:
\trm -rf build qc_model.elf qc_profile.elf libqcmodel.a

.PHONY: all objects profile clean
"""
