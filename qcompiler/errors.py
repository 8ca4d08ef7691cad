"""Errors that qc reports to users.

Every error qc raises on bad input derives from :class:`QcError`; the CLI prints its message and exits with
status 2. Messages name the offending node, tensor or file and say what to do about it.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "QcError",
    "ModelError",
    "UnsupportedOpsError",
    "CalibrationError",
    "OverflowRiskError",
    "ArtifactError",
    "TargetError",
    "PassFailure",
    "QcWarning",
]


class QcError(Exception):
    """Base class of every user-facing qc error (exit status 2 from the CLI)."""

    exit_code = 2


class QcWarning(UserWarning):
    """Something qc did that the user should know about (data dropped, a default chosen); the CLI prints
    these as one ``warning:`` line each."""


class ModelError(QcError):
    """The input model is malformed, truncated, dynamic where qc needs static shapes, or holds NaN/Inf."""


class CalibrationError(QcError):
    """The calibration data is missing, empty, or does not match the model's inputs."""


class OverflowRiskError(QcError):
    """An integer value could leave its container (int32 accumulator, int64 product, shift range)."""


class ArtifactError(QcError):
    """An artifact directory is missing, incomplete, or would be overwritten without --force."""


class TargetError(QcError):
    """A target name, option or capability request is unknown or unsupported."""


class UnsupportedOpsError(QcError):
    """The model holds ops that qc cannot turn into integer code; lists them all at once."""

    def __init__(self, unsupported: Iterable[tuple[str, str, str]]):
        """Build the message from ``(op_type, node_name, reason)`` triples, grouped by op type."""
        rows = sorted(unsupported)
        self.unsupported = rows
        by_type: dict[str, list[tuple[str, str]]] = {}
        for op_type, name, reason in rows:
            by_type.setdefault(op_type, []).append((name, reason))
        lines = [f"{len(rows)} node(s) cannot be made integer-only:"]
        for op_type, nodes in by_type.items():
            names = ", ".join(n for n, _ in nodes[:5]) + (", ..." if len(nodes) > 5 else "")
            lines.append(f"  {op_type} x{len(nodes)} ({names}): {nodes[0][1]}")
        lines.append(
            "qc has no float fallback inside the integer region. Rewrite these nodes into supported ops "
            "(see docs/ops.md), or cut the model before them and run the rest in float yourself."
        )
        super().__init__("\n".join(lines))


class PassFailure(QcError):
    """A graph pass failed; the message names the pass, the passes before it and the node."""

    def __init__(self, pass_name: str, ran_before: list[str], cause: BaseException, node_text: str = ""):
        """Wrap ``cause`` with the pipeline context in which it happened."""
        self.pass_name = pass_name
        self.cause = cause
        before = ", ".join(ran_before) if ran_before else "(none)"
        msg = f"{cause}\n  in pass: {pass_name}\n  after passes: {before}"
        if node_text:
            msg += f"\n  at node: {node_text}"
        super().__init__(msg)
