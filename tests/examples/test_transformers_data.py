"""The BERT data helper: mixed padding, valid ids, the layout the compile API accepts."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
export = pytest.importorskip("examples.transformers.export")


def test_bert_inputs_mixed_padding(tmp_path):
    data = export.bert_inputs(64, seed=0)
    ids, mask = data["input_ids"], data["attention_mask"]
    assert ids.shape == mask.shape == (64, export.SEQ_LEN) and ids.dtype == mask.dtype == np.int64
    lengths = mask.sum(axis=1)
    assert lengths.min() == export.MIN_LENGTH and lengths.max() == export.SEQ_LEN and len(set(lengths)) > 10
    assert np.all(np.diff(mask, axis=1) <= 0)  # 1s then 0s
    assert np.all(ids[mask == 0] == 0) and np.all(ids[:, 0] == 101) and ids.max() < export.VOCAB_SIZE
    path = export.write_bert_data(tmp_path / "bert.npz", samples=4)
    with np.load(path) as saved:
        assert sorted(saved.files) == ["attention_mask", "input_ids"] and saved["input_ids"].shape == (4, 128)
