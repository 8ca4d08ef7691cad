"""The compile configuration: frozen, validated on construction, versioned and JSON-serialisable.

One :class:`CompileConfig` drives both ``qcompiler.compile`` and ``qc compile`` (``--config file.json`` loads
the same keys).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from qcompiler.errors import QcError
from qcompiler.nonlinear import GELU_METHODS, SOFTMAX_METHODS, SOFTMAX_QUANTIZERS

__all__ = ["CompileConfig", "CALIBRATION_METHODS", "ACTIVATION_DTYPES"]

CONFIG_VERSION = 1
#: calibration methods, named as onnxruntime names them (case-insensitive on input).
CALIBRATION_METHODS = ("minmax", "percentile", "entropy", "mse")
ACTIVATION_DTYPES = ("uint8", "int8")
#: supported widths of weights, activations and attention probabilities (stored in 8-bit integers).
BIT_WIDTHS = range(2, 9)


@dataclass(frozen=True)
class CompileConfig:
    """How to quantize and compile a model.

    Attributes:
        target: target name (``qc targets`` lists them), e.g. ``"x86"``.
        target_options: target-specific options, e.g. ``{"mcpu": "znver5"}``.
        calibration_method: one of :data:`CALIBRATION_METHODS`.
        percentile: the percentile used by ``calibration_method="percentile"``.
        activation_dtype: ``"uint8"`` (asymmetric, default) or ``"int8"`` per-tensor activations.
        weight_bits: bits of the symmetric weights (2..8).
        per_channel: one weight scale per output channel (default) or one per weight tensor.
        activation_bits: bits of the activations that feed linear layers and matmuls (2..8; the residual
            stream, LayerNorm/Softmax inputs and model inputs and outputs stay 8-bit).
        attention_bits: bits of post-Softmax activations (uniform steps, or log2 / log-sqrt2 codes).
        softmax: integer Softmax method, one of ``nonlinear.SOFTMAX_METHODS``.
        softmax_quant: post-Softmax quantizer, one of ``nonlinear.SOFTMAX_QUANTIZERS``.
        gelu: integer GELU method, one of ``nonlinear.GELU_METHODS``.
        reparam: RepQ-ViT scale reparameterization of post-LayerNorm activations.
        input_shapes: static shapes for inputs with dynamic dims, ``{"input": (1, 3, 224, 224)}``.
        layers: per-layer widths of Conv/MatMul nodes with a constant weight, keyed by node name or by a glob
            pattern over node names (``"/blocks.*/attn/*"``), e.g. ``{"/conv1/Conv": {"weight_bits": 4}}``;
            entry values are ``weight_bits`` and/or ``activation_bits`` (the width of the layer's input).
            See :meth:`layer_widths` for precedence.
    """

    target: str = "x86"
    target_options: dict = field(default_factory=dict)
    calibration_method: str = "minmax"
    percentile: float = 99.999
    activation_dtype: str = "uint8"
    weight_bits: int = 8
    per_channel: bool = True
    activation_bits: int = 8
    attention_bits: int = 8
    softmax: str = "table"
    softmax_quant: str = "uniform"
    gelu: str = "table"
    reparam: bool = True
    input_shapes: dict = field(default_factory=dict)
    layers: dict = field(default_factory=dict)
    version: int = CONFIG_VERSION

    def __post_init__(self):
        problems = self._type_problems()
        for name in ("calibration_method", "softmax", "softmax_quant", "gelu"):
            if isinstance(getattr(self, name), str):
                object.__setattr__(self, name, getattr(self, name).lower())
        problems += self._value_problems(badly_typed={p.split(" ")[0] for p in problems})
        if problems:
            raise QcError("invalid configuration:\n  " + "\n  ".join(problems))
        object.__setattr__(self, "input_shapes", {k: tuple(int(d) for d in v) for k, v in self.input_shapes.items()})

    def _type_problems(self) -> list[str]:
        """Fields whose type is wrong (checked first: the value checks below assume the types)."""
        expected = {"target": str, "target_options": dict, "calibration_method": str, "percentile": (int, float),
                    "activation_dtype": str, "weight_bits": int, "per_channel": bool, "activation_bits": int, "attention_bits": int,
                    "softmax": str, "softmax_quant": str, "gelu": str, "reparam": bool, "input_shapes": dict,
                    "layers": dict, "version": int}
        problems = [f"{name} must be {getattr(kind, '__name__', 'a number')}, got {getattr(self, name)!r}"
                    for name, kind in expected.items()
                    if not isinstance(getattr(self, name), kind)
                    or (kind is not bool and isinstance(getattr(self, name), bool))]
        if isinstance(self.input_shapes, dict):
            problems += [f"input_shapes['{name}'] = {shape!r} must be a list of positive integers"
                         for name, shape in self.input_shapes.items()
                         if not isinstance(shape, (list, tuple))
                         or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)]
        if isinstance(self.layers, dict):
            problems += [problem for key, entry in self.layers.items() for problem in _layer_entry_problems(key, entry)]
        return problems

    def _value_problems(self, badly_typed: set[str]) -> list[str]:
        """Well-typed fields whose value is out of range, all of them."""
        choices = {"calibration_method": CALIBRATION_METHODS, "activation_dtype": ACTIVATION_DTYPES,
                   "softmax": SOFTMAX_METHODS, "softmax_quant": SOFTMAX_QUANTIZERS, "gelu": GELU_METHODS}
        checks = {
            **{name: (lambda name=name, allowed=allowed: getattr(self, name) not in allowed)
               for name, allowed in choices.items()},
            **{name: (lambda name=name: getattr(self, name) not in BIT_WIDTHS)
               for name in ("weight_bits", "activation_bits", "attention_bits")},
            "percentile": lambda: not 50.0 < self.percentile <= 100.0,
            "version": lambda: self.version != CONFIG_VERSION,
        }
        failing = {name for name, check in checks.items() if name not in badly_typed and check()}
        problems = [f"{name} '{getattr(self, name)}' is not one of {', '.join(allowed)}"
                    for name, allowed in choices.items() if name in failing]
        problems += [f"{name}={getattr(self, name)} must be between {BIT_WIDTHS[0]} and {BIT_WIDTHS[-1]}"
                     for name in ("weight_bits", "activation_bits", "attention_bits") if name in failing]
        if "percentile" in failing:
            problems.append(f"percentile={self.percentile} must be in (50, 100]")
        if "version" in failing:
            problems.append(f"config version {self.version} is not supported (this qc reads version {CONFIG_VERSION})")
        return problems

    def to_json(self) -> dict:
        """The configuration as plain JSON data."""
        data = dataclasses.asdict(self)
        data["input_shapes"] = {k: list(v) for k, v in self.input_shapes.items()}
        return data

    @classmethod
    def from_json(cls, data: dict) -> CompileConfig:
        """Build from JSON data; unknown keys are an error listing the valid ones."""
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - valid)
        if unknown:
            raise QcError(f"unknown config key(s) {unknown}; valid keys: {sorted(valid)}")
        return cls(**data)

    @classmethod
    def load(cls, path: str | Path) -> CompileConfig:
        """Read a JSON config file."""
        try:
            return cls.from_json(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as error:
            raise QcError(f"cannot read config {path}: {error}") from error

    def layer_widths(self, names: Iterable[str]) -> dict[str, tuple[int, int]]:
        """``(weight_bits, activation_bits)`` of each layer in ``names`` (node names of the linear layers).

        Precedence, lowest first: the global ``weight_bits``/``activation_bits``, then every matching pattern
        of :attr:`layers` in order (a later one wins), then an entry naming the node exactly. A key that
        matches no layer is an error (a typo would otherwise be ignored silently).
        """
        names = list(names)
        unmatched = [key for key in self.layers if not any(_key_matches(key, name) for name in names)]
        if unmatched:
            shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
            raise QcError(f"config layers {unmatched} match no Conv/MatMul layer of the model; its layers are: "
                          f"{shown} (`qc inspect` lists every node)")
        widths = {}
        for name in names:
            chosen = {"weight_bits": self.weight_bits, "activation_bits": self.activation_bits}
            for key, entry in self.layers.items():
                if _is_pattern(key) and fnmatch.fnmatchcase(name, key):
                    chosen.update(entry)
            chosen.update(self.layers.get(name, {}))
            widths[name] = (chosen["weight_bits"], chosen["activation_bits"])
        return widths

    def sets_activation_bits(self, name: str) -> bool:
        """Whether an entry of :attr:`layers` matching layer ``name`` sets its ``activation_bits``."""
        return any(_key_matches(key, name) and "activation_bits" in entry for key, entry in self.layers.items())

    def replace(self, **changes) -> CompileConfig:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)


_LAYER_KEYS = ("weight_bits", "activation_bits")


def _is_pattern(key: str) -> bool:
    return any(c in key for c in "*?[")


def _key_matches(key: str, name: str) -> bool:
    return fnmatch.fnmatchcase(name, key) if _is_pattern(key) else key == name


def _layer_entry_problems(key, entry) -> list[str]:
    """What is wrong with one ``layers`` entry (empty when it is valid)."""
    if not isinstance(key, str) or not isinstance(entry, dict) or not entry:
        return [f"layers[{key!r}] must map a node name or pattern to {{'weight_bits': b, 'activation_bits': b}}, "
                f"got {entry!r}"]
    problems = [f"layers[{key!r}] has unknown key {k!r}; valid: {', '.join(_LAYER_KEYS)}" for k in entry
                if k not in _LAYER_KEYS]
    problems += [f"layers[{key!r}][{k!r}]={v!r} must be an integer between {BIT_WIDTHS[0]} and {BIT_WIDTHS[-1]}"
                 for k, v in entry.items() if k in _LAYER_KEYS
                 and (not isinstance(v, int) or isinstance(v, bool) or v not in BIT_WIDTHS)]
    return problems
