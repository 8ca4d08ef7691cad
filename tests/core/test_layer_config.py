"""Per-layer widths in CompileConfig: validation, glob patterns, precedence, typo protection, JSON."""

from __future__ import annotations

import pytest

from qcompiler.config import CompileConfig
from qcompiler.errors import QcError

LAYERS = ["/stem/Conv", "/blocks.0/attn/q/MatMul", "/blocks.0/attn/k/MatMul", "/blocks.1/mlp/MatMul", "/head/Gemm"]


def test_global_widths_without_layers():
    widths = CompileConfig(weight_bits=6, activation_bits=7).layer_widths(LAYERS)
    assert set(widths.values()) == {(6, 7)}


def test_patterns_in_order_then_exact_names_win():
    config = CompileConfig(layers={
        "/blocks.*": {"weight_bits": 4},
        "*/attn/*": {"weight_bits": 6, "activation_bits": 5},
        "/blocks.0/attn/k/MatMul": {"weight_bits": 3},
    })
    widths = config.layer_widths(LAYERS)
    assert widths["/stem/Conv"] == (8, 8)
    assert widths["/blocks.1/mlp/MatMul"] == (4, 8)
    assert widths["/blocks.0/attn/q/MatMul"] == (6, 5)  # the later pattern wins
    assert widths["/blocks.0/attn/k/MatMul"] == (3, 5)  # the exact name wins, the pattern's activation stays


def test_exact_name_beats_an_earlier_or_later_pattern():
    config = CompileConfig(layers={"/head/Gemm": {"weight_bits": 8}, "*": {"weight_bits": 4}})
    assert config.layer_widths(LAYERS)["/head/Gemm"] == (8, 8)
    assert config.layer_widths(LAYERS)["/stem/Conv"] == (4, 8)


def test_a_key_matching_no_layer_is_named():
    config = CompileConfig(layers={"/stem/Cnv": {"weight_bits": 4}, "/blocks.*": {"weight_bits": 4}})
    with pytest.raises(QcError, match=r"\['/stem/Cnv'\] match no Conv/MatMul layer.*/stem/Conv"):
        config.layer_widths(LAYERS)


@pytest.mark.parametrize(("entry", "message"), [
    ({"weight_bits": 9}, r"\['weight_bits'\]=9 must be an integer between 2 and 8"),
    ({"weight_bits": True}, r"\['weight_bits'\]=True must be an integer"),
    ({"bits": 4}, r"unknown key 'bits'; valid: weight_bits, activation_bits"),
    ({}, r"must map a node name or pattern"),
    (4, r"must map a node name or pattern"),
])
def test_bad_entries_are_refused_with_the_key(entry, message):
    with pytest.raises(QcError, match=r"layers\['/stem/Conv'\]" + ".*" + message):
        CompileConfig(layers={"/stem/Conv": entry})


def test_sets_activation_bits_only_for_entries_that_set_it():
    config = CompileConfig(layers={"*/attn/*": {"activation_bits": 4}, "/stem/Conv": {"weight_bits": 4}})
    assert config.sets_activation_bits("/blocks.0/attn/q/MatMul")
    assert not config.sets_activation_bits("/stem/Conv")


def test_layers_and_per_channel_round_trip_through_json():
    config = CompileConfig(per_channel=False, layers={"/stem/Conv": {"weight_bits": 4, "activation_bits": 6}})
    assert CompileConfig.from_json(config.to_json()) == config
