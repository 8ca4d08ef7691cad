"""Pass infrastructure: qc passes are onnx-ir in-place passes run by an observable :class:`Pipeline`.

A pass subclasses :class:`QcPass` and implements ``call(model) -> PassResult`` reporting ``modified``;
``requires``/``ensures`` hold its pre- and postconditions as code. A :class:`Pipeline` is itself a pass: it
runs a literal list of passes in order, wraps any failure in :class:`~qcompiler.errors.PassFailure` naming the
pass and the passes that ran before it. Every pass, in a pipeline or called alone, calls the active
instruments after it ran (tests add the staged verifier as an instrument, see ``tests/conftest.py``).
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Callable, Iterator, Sequence

import onnx_ir as ir
from onnx_ir.passes import InPlacePass, PassResult

from qcompiler.errors import PassFailure, QcError

__all__ = ["QcPass", "Pipeline", "PassResult", "Instrument", "instrumented", "active_instruments"]

#: an instrument is called as ``instrument(pass_name, model)`` after every pass (pipelines included).
Instrument = Callable[[str, ir.Model], None]

_INSTRUMENTS: contextvars.ContextVar[tuple[Instrument, ...]] = contextvars.ContextVar("qc_instruments", default=())


@contextlib.contextmanager
def instrumented(*instruments: Instrument) -> Iterator[None]:
    """Within this context every pass also runs ``instruments`` after it ran."""
    token = _INSTRUMENTS.set(_INSTRUMENTS.get() + instruments)
    try:
        yield
    finally:
        _INSTRUMENTS.reset(token)


def active_instruments() -> tuple[Instrument, ...]:
    """The instruments installed by enclosing :func:`instrumented` contexts."""
    return _INSTRUMENTS.get()


class QcPass(InPlacePass):
    """Base of qc's graph passes: an in-place onnx-ir pass with a readable name."""

    @property
    def name(self) -> str:
        """The pass's class name, used in errors, timings and ``--print-ir-after``."""
        return type(self).__name__

    def __call__(self, model: ir.Model) -> PassResult:
        """Run the pass (with its pre- and postconditions), then the active instruments."""
        result = super().__call__(model)
        for instrument in active_instruments():
            instrument(self.name, result.model)
        return result


class Pipeline(QcPass):
    """Run ``passes`` once each, in order; itself a pass, so pipelines nest.

    Invariant: on failure the raised :class:`PassFailure` names the failing pass and every pass before it;
    a :class:`QcError` raised by a pass keeps its own type and message with that context appended.
    """

    def __init__(self, passes: Sequence[QcPass], name: str = "Pipeline"):
        super().__init__()
        self.passes = list(passes)
        self._name = name
        self.timings: list[tuple[str, float]] = []

    @property
    def name(self) -> str:
        """The name given at construction."""
        return self._name

    def __call__(self, model: ir.Model) -> PassResult:
        """Run the pipeline without a run of the instruments of its own: each of its passes ran them."""
        return InPlacePass.__call__(self, model)

    def call(self, model: ir.Model) -> PassResult:
        """Run every pass (each runs the active instruments); report whether any pass modified the model."""
        modified = False
        ran: list[str] = []
        for each in self.passes:
            start = time.perf_counter()
            try:
                result = each(model)
            except PassFailure:
                raise
            except QcError as error:
                error.args = (f"{error}\n  in pass: {each.name}\n  after passes: {', '.join(ran) or '(none)'}",)
                raise
            except Exception as error:  # a bug or unexpected input inside a pass: say where
                raise PassFailure(each.name, ran, error) from error
            self.timings.append((each.name, time.perf_counter() - start))
            modified |= result.modified
            ran.append(each.name)
        return PassResult(model, modified)
