"""``report.html``: the per-layer error report of an artifact as one self-contained page.

The page needs no network and no script: its plots are inline SVG drawn here, its style is inline CSS. It
shows float vs integer accuracy (when the report has it), SQNR per layer along the graph order, activation
and weight ranges per layer, and the per-layer table worst first (:func:`qcompiler.layer_errors.table_rows`).
"""

from __future__ import annotations

import html
import math
from pathlib import Path

from qcompiler.layer_errors import COLUMNS, sqnr_text, table_rows

__all__ = ["PALETTE", "render", "write_report_html"]

#: plot colors: SQNR bars (worst five highlighted), float activation range, integer grid, weight range.
PALETTE = {"bar": "#1f77b4", "worst": "#d62728", "float": "#2ca02c", "grid": "#ff7f0e", "weight": "#9467bd"}
_WORST = 5
_WIDTH, _LEFT, _RIGHT = 1100, 70, 20
_CSS = ("body{font:14px sans-serif;margin:24px;color:#222}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}td:nth-child(2),td:nth-child(3){text-align:left}"
        "svg{display:block;margin:8px 0 24px}text{font:11px sans-serif}")


def _ticks(low: float, high: float, count: int = 6) -> list[float]:
    """Evenly spaced tick values from ``low`` to ``high`` (inclusive)."""
    return [low + (high - low) * i / (count - 1) for i in range(count)]


def _sqnr_chart(layers: list[dict]) -> str:
    """Bars of SQNR (dB) per layer in graph order; an exact layer (no error) is drawn full height."""
    ordered = sorted(layers, key=lambda r: r["order"])
    worst = {r["tensor"] for r in layers[:_WORST]}
    finite = [r["sqnr_db"] for r in ordered if r["sqnr_db"] is not None] or [0.0]
    top, bottom = 10 * math.ceil(max(finite) / 10 + 0.1), 10 * math.floor(min(0.0, min(finite)) / 10)
    height, base = 380, 260

    def y(value: float) -> float:
        return base - (value - bottom) / (top - bottom) * (base - 20)

    step = (_WIDTH - _LEFT - _RIGHT) / max(len(ordered), 1)
    parts = [f'<line x1="{_LEFT}" y1="{base}" x2="{_WIDTH - _RIGHT}" y2="{base}" stroke="#000"/>']
    for tick in range(bottom, top + 1, 10):
        parts.append(f'<text x="{_LEFT - 6}" y="{y(tick) + 4:.1f}" text-anchor="end">{tick}</text>'
                     f'<line x1="{_LEFT}" y1="{y(tick):.1f}" x2="{_WIDTH - _RIGHT}" y2="{y(tick):.1f}" stroke="#eee"/>')
    for i, row in enumerate(ordered):
        value = row["sqnr_db"] if row["sqnr_db"] is not None else (top if row["rel_l2"] == 0 else bottom)
        x, color = _LEFT + i * step, PALETTE["worst" if row["tensor"] in worst else "bar"]
        top_y = min(y(value), y(0.0))
        parts.append(f'<rect x="{x + step * 0.15:.1f}" y="{top_y:.1f}" width="{step * 0.7:.1f}" '
                     f'height="{abs(y(0.0) - y(value)):.1f}" fill="{color}"><title>{html.escape(row["owner"])}: '
                     f'{sqnr_text(row)} dB</title></rect>')
        parts.append(f'<text transform="translate({x + step / 2 + 3:.1f},{base + 8}) rotate(60)">'
                     f'{html.escape(row["owner"])}</text>')
    parts.append(f'<text x="14" y="{base / 2}" transform="rotate(-90 14 {base / 2})">SQNR (dB)</text>')
    return f'<svg width="{_WIDTH}" height="{height}" xmlns="http://www.w3.org/2000/svg">{"".join(parts)}</svg>'


def _range_chart(labels: list[str], spans: list[list[tuple[list[float] | None, str]]]) -> str:
    """One row per label: each ``(range, color)`` span drawn as a bar on a shared linear axis."""
    values = [v for row in spans for pair, _ in row if pair is not None for v in pair] or [0.0, 1.0]
    low, high = min(values), max(values)
    high = high if high > low else low + 1
    label_width, row_height = 260, 16

    def x(value: float) -> float:
        return label_width + (value - low) / (high - low) * (_WIDTH - label_width - _RIGHT)

    height = row_height * len(labels) + 30
    parts = [f'<line x1="{x(0.0):.1f}" y1="0" x2="{x(0.0):.1f}" y2="{height - 20}" stroke="#999"/>'
             if low <= 0 <= high else ""]
    for tick in _ticks(low, high):
        parts.append(f'<text x="{x(tick):.1f}" y="{height - 6}" text-anchor="middle">{tick:.3g}</text>')
    for i, (label, row) in enumerate(zip(labels, spans, strict=True)):
        top = i * row_height + 2
        parts.append(f'<text x="{label_width - 6}" y="{top + 11}" text-anchor="end">{html.escape(label)}</text>')
        for j, (pair, color) in enumerate(row):
            if pair is not None:
                thickness = (row_height - 4) / len(row)
                parts.append(f'<rect x="{x(pair[0]):.1f}" y="{top + j * thickness:.1f}" '
                             f'width="{max(x(pair[1]) - x(pair[0]), 1):.1f}" height="{thickness:.1f}" fill="{color}">'
                             f'<title>[{pair[0]:.4g}, {pair[1]:.4g}]</title></rect>')
    return f'<svg width="{_WIDTH}" height="{height}" xmlns="http://www.w3.org/2000/svg">{"".join(parts)}</svg>'


def _legend(*entries: tuple[str, str]) -> str:
    return "<p>" + " ".join(f'<span style="color:{color}">&#9632;</span> {html.escape(text)}'
                            for text, color in entries) + "</p>"


def _table(layers: list[dict]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>"
                   for row in table_rows(layers))
    return f"<table><tr>{head}</tr>{body}</table>"


def _accuracy(report: dict) -> str:
    accuracy = report.get("accuracy")
    if not accuracy:
        return ""
    return (f"<p>Top-1 accuracy on {accuracy['samples']} samples: float {accuracy['float']:.4f}, integer "
            f"{accuracy['integer']:.4f} (delta {accuracy['integer'] - accuracy['float']:+.4f})</p>")


def render(report: dict) -> str:
    """The page for ``report`` (a ``report.json`` holding ``layer_errors``, see :mod:`qcompiler.layer_errors`)."""
    errors = report["layer_errors"]
    layers = errors["layers"]
    ordered = sorted(layers, key=lambda r: r["order"])
    weighted = [r for r in ordered if r["weight_range"] is not None]
    return "".join([
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>qc per-layer error</title><style>{_CSS}"
        "</style></head><body><h1>qc per-layer error report</h1>", _accuracy(report),
        f"<p>Integer model (<code>model.int.onnx</code>) against the float model on {errors['samples']} samples; "
        "errors accumulate from the input, so blame the layer where SQNR drops.</p>",
        "<h2>SQNR per layer (graph order)</h2>", _legend((f"worst {_WORST}", PALETTE["worst"]), ("other", PALETTE["bar"])),
        _sqnr_chart(layers), "<h2>Activation ranges</h2>",
        _legend(("float activations (observed)", PALETTE["float"]), ("integer grid", PALETTE["grid"])),
        _range_chart([r["owner"] for r in ordered],
                     [[(r["float_range"], PALETTE["float"]), (r["int_range"], PALETTE["grid"])] for r in ordered]),
        "<h2>Weight ranges</h2>", _legend(("float weights", PALETTE["weight"])),
        _range_chart([r["owner"] for r in weighted], [[(r["weight_range"], PALETTE["weight"])] for r in weighted]),
        "<h2>Layers, worst first</h2>", _table(layers), "</body></html>",
    ])


def write_report_html(report: dict, path: Path) -> None:
    """Write :func:`render` of ``report`` to ``path``."""
    path.write_text(render(report), encoding="utf-8")
