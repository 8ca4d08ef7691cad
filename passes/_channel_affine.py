"""Recognise elementwise ``x * k`` / ``x + a`` (and Sub, Div) by constants that vary at most per channel."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from qcompiler.ir import const_array

_AFFINE_OPS = ("Mul", "Add", "Sub", "Div")


@dataclass(frozen=True)
class ChannelAffine:
    """``node`` computes ``activation * scale + offset`` with per-channel ``scale``/``offset`` of length C."""

    node: ir.Node
    activation: ir.Value
    scale: np.ndarray
    offset: np.ndarray


def match_channel_affine(node: ir.Node, channel_axis: int) -> ChannelAffine | str:
    """Match ``node`` as a per-channel affine op along ``channel_axis`` of its activation input.

    Returns the match, or a string saying why it does not match. The constant must broadcast to the
    activation as a per-channel (or per-tensor) vector: all its non-unit dims must sit on the channel axis.
    """
    if node.op_type not in _AFFINE_OPS or node.domain not in ("", "ai.onnx"):
        return "not an elementwise Mul/Add/Sub/Div"
    left, right = (const_array(v) for v in node.inputs[:2])
    if (left is None) == (right is None):
        return "needs exactly one constant operand"
    if node.op_type in ("Sub", "Div") and left is not None:
        return "constant on the left of Sub/Div is not affine in the activation"
    activation = node.inputs[1] if left is not None else node.inputs[0]
    const = (left if left is not None else right).astype(np.float64)
    shape = activation.shape
    if shape is None or not shape.is_static() or len(shape) <= channel_axis:
        return "activation shape unknown or of too low rank"
    channels = shape[channel_axis]
    vector = per_channel_vector(const, len(shape), channel_axis, channels)
    if vector is None:
        return f"constant of shape {const.shape} is not per-channel along axis {channel_axis}"
    ones, zeros = np.ones(channels), np.zeros(channels)
    if node.op_type in ("Add", "Sub"):
        return ChannelAffine(node, activation, ones, vector if node.op_type == "Add" else -vector)
    if node.op_type == "Div" and np.any(vector == 0):
        return "division by a constant containing 0"
    return ChannelAffine(node, activation, vector if node.op_type == "Mul" else 1.0 / vector, zeros)


def per_channel_vector(const: np.ndarray, rank: int, axis: int, channels: int) -> np.ndarray | None:
    """``const`` as a length-``channels`` vector when it broadcasts per channel, else ``None``."""
    if const.ndim > rank:
        return None
    padded = const.reshape((1,) * (rank - const.ndim) + const.shape)
    if any(size != 1 for i, size in enumerate(padded.shape) if i != axis):
        return None
    if padded.shape[axis] not in (1, channels):
        return None
    return np.broadcast_to(padded.reshape(-1), (channels,)).copy()
