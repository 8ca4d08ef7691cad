"""The nearest-Resize index maps the lowering computes equal onnxruntime's for every supported mode pair.

No compile needed: the lowering turns Resize into gathers with these maps, so checking the maps over many
sizes (ties and float32 noise around x.5 included) is what keeps Resize bit-exact.
"""

from __future__ import annotations

import numpy as np
import pytest
from targets_testkit import node, ort_session, region

from qcompiler.targets.relax_lowering import _COORDINATES, _NEAREST, _nearest_indices

#: every pair up to 10 -> 24, plus pairs whose float32 coordinates land within an ulp of x.5 or an integer.
SIZES = [(n_in, n_out) for n_in in range(1, 11) for n_out in range(1, 25)] + [
    (20, 6),
    (14, 19),
    (14, 2),
    (11, 26),
    (38, 39),
    (26, 64),
    (300, 7),
    (123, 457),
]
INPUT_SIZES = sorted({n_in for n_in, _ in SIZES})


@pytest.mark.parametrize("nearest", sorted(_NEAREST))
@pytest.mark.parametrize("coordinates", sorted(_COORDINATES))
def test_nearest_indices_match_onnxruntime(coordinates, nearest):
    """One region resizes arange(n_in) to every n_out; its outputs are onnxruntime's index maps."""
    nodes = [
        node(
            "Resize",
            [f"x{n_in}", "", "", f"size{n_out}"],
            [f"y{n_in}_{n_out}"],
            mode="nearest",
            coordinate_transformation_mode=coordinates,
            nearest_mode=nearest,
        )
        for n_in, n_out in SIZES
    ]
    sizes = {f"size{n_out}": np.array([n_out], np.int64) for _, n_out in SIZES}
    model = region(
        nodes, {f"x{n}": ("int32", (n,)) for n in INPUT_SIZES}, [n.output[0] for n in nodes], sizes
    )
    maps = ort_session(model).run(None, {f"x{n}": np.arange(n, dtype=np.int32) for n in INPUT_SIZES})
    for (n_in, n_out), expected in zip(SIZES, maps, strict=True):
        np.testing.assert_array_equal(
            _nearest_indices(n_in, n_out, coordinates, nearest), expected, err_msg=f"{n_in} -> {n_out}"
        )
