"""Export transformer encoders built from ``transformers`` configs (random init, fully offline) to ONNX.

Two models, both with static shapes, exported with the TorchScript exporter (opset 17, ``dynamo=False``) and
``attn_implementation="eager"`` so attention is plain MatMul / Softmax:

* **BERT sentence encoder** (``bert``): ``BertModel`` with 6 layers, hidden 384, 12 heads, intermediate
  1536, vocabulary 30522 (the size of MiniLM-L6), followed by masked mean pooling and L2 normalization.
  Inputs ``input_ids`` and ``attention_mask``, int64 ``[1, 128]`` (``token_type_ids`` are fixed zeros
  inside the wrapper); output ``embedding``, float ``[1, 384]``. ``attention_mask`` must hold 0/1 only.
* **DeiT-tiny-size ViT** (``vit``): ``ViTForImageClassification`` with 12 blocks, dim 192, 3 heads, MLP
  768, 224x224 images, 16x16 patches, 1000 classes. Input ``pixel_values`` float ``[1, 3, 224, 224]``;
  output ``logits`` ``[1, 1000]`` (classifier on the CLS token).

Weights are random (``torch.manual_seed(SEED)``): these models are for op coverage and bit-exactness, and
the BERT embedding is compared with the float one by cosine similarity, never for task accuracy. The ONNX
files live in the cache directory (``QC_CACHE_DIR``, default ``<repo>/.cache``), managed by
``ensure_model``. Data helpers: ``bert_inputs`` (random token ids with mixed padding), ``vit_images``.

CLI::

    python -m examples.transformers.export {bert,vit} OUT.onnx
    python -m examples.transformers.export bert-data OUT.npz [--samples 64] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F

SEED = 0
OPSET = 17
SEQ_LEN = 128
MIN_LENGTH = 8
VOCAB_SIZE = 30522
HIDDEN = 384
IMAGE_SIZE = 224
NUM_CLASSES = 1000
MAX_ABS_DIFF = 1e-4
"""Largest accepted |ONNX - torch| on the check inputs; the export is rejected above it."""

REPO_ROOT = Path(__file__).resolve().parents[2]

#: per model: input names, output name.
SIGNATURES = {
    "bert": (["input_ids", "attention_mask"], "embedding"),
    "vit": (["pixel_values"], "logits"),
}


def default_cache_dir() -> Path:
    """Return the cache directory: ``$QC_CACHE_DIR`` if set, else ``<repo>/.cache`` (git-ignored)."""
    return Path(os.environ.get("QC_CACHE_DIR", REPO_ROOT / ".cache"))


class SentenceEncoder(torch.nn.Module):
    """``BertModel`` + masked mean pooling + L2 normalization (the sentence-transformers recipe)."""

    def __init__(self, bert: torch.nn.Module, seq_len: int = SEQ_LEN):
        super().__init__()
        self.bert = bert
        self.register_buffer("token_type_ids", torch.zeros(1, seq_len, dtype=torch.long), persistent=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        token_type_ids = self.token_type_ids.expand(input_ids.shape[0], -1)
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                           token_type_ids=token_type_ids).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        summed = (hidden * mask).sum(dim=1)
        count = mask.sum(dim=1).clamp(min=1e-9)
        return F.normalize(summed / count, p=2, dim=1)


class ImageClassifier(torch.nn.Module):
    """``ViTForImageClassification`` returning its logits tensor only."""

    def __init__(self, vit: torch.nn.Module):
        super().__init__()
        self.vit = vit

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.vit(pixel_values=pixel_values).logits


def build_bert() -> torch.nn.Module:
    """The BERT sentence encoder in eval mode, random weights from ``torch.manual_seed(SEED)``."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(SEED)
    config = BertConfig(num_hidden_layers=6, hidden_size=HIDDEN, num_attention_heads=12, intermediate_size=1536,
                        vocab_size=VOCAB_SIZE, max_position_embeddings=512, attn_implementation="eager")
    bert = BertModel(config, add_pooling_layer=False)
    return SentenceEncoder(bert).eval()


def build_vit() -> torch.nn.Module:
    """The DeiT-tiny-size ViT classifier in eval mode, random weights from ``torch.manual_seed(SEED)``."""
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(SEED)
    config = ViTConfig(hidden_size=192, num_hidden_layers=12, num_attention_heads=3, intermediate_size=768,
                       image_size=IMAGE_SIZE, patch_size=16, num_labels=NUM_CLASSES, attn_implementation="eager")
    return ImageClassifier(ViTForImageClassification(config)).eval()


def bert_inputs(samples: int = 64, seed: int = 0, seq_len: int = SEQ_LEN) -> dict[str, np.ndarray]:
    """``samples`` BERT inputs with mixed padding, sample-major (the layout ``qcompiler.compile`` accepts).

    Each sample has a random length in ``[MIN_LENGTH, seq_len]`` (the first and last samples are the
    extremes, so both a fully padded-out and an unpadded input are always present): ``input_ids`` starts
    with [CLS] (101), holds random token ids, ends with [SEP] (102), then [PAD] (0); ``attention_mask`` is 1
    on the tokens, then 0. Both int64 ``[samples, seq_len]``.
    """
    rng = np.random.default_rng(seed)
    lengths = rng.integers(MIN_LENGTH, seq_len, samples, endpoint=True)
    lengths[0], lengths[-1] = MIN_LENGTH, seq_len
    positions = np.arange(seq_len)
    mask = (positions[None, :] < lengths[:, None]).astype(np.int64)
    ids = rng.integers(1000, VOCAB_SIZE, (samples, seq_len), dtype=np.int64)
    ids[:, 0] = 101
    ids[np.arange(samples), lengths - 1] = 102
    ids = np.where(mask == 1, ids, 0)
    return {"input_ids": ids, "attention_mask": mask}


def vit_images(samples: int = 8, seed: int = 0) -> np.ndarray:
    """Random images normalized like ViT's preprocessing (``(x - 0.5) / 0.5``, so in [-1, 1]), NCHW float32."""
    rng = np.random.default_rng(seed)
    return rng.uniform(-1.0, 1.0, (samples, 3, IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32)


def write_bert_data(path: str | Path, samples: int = 64, seed: int = 0) -> Path:
    """Write :func:`bert_inputs` as an uncompressed ``.npz`` keyed by input name (``--calib`` format)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **bert_inputs(samples, seed))
    return path


def _check_feeds(name: str) -> list[dict[str, np.ndarray]]:
    if name == "bert":
        data = bert_inputs(3, seed=123)
        return [{k: v[i:i + 1] for k, v in data.items()} for i in range(3)]
    return [{"pixel_values": vit_images(1, seed=123)}]


def check_export(name: str, model: torch.nn.Module, path: Path) -> float:
    """Return max |ONNX - torch| over a few inputs; raise if it reaches ``MAX_ABS_DIFF``."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for feed in _check_feeds(name):
        with torch.no_grad():
            expected = model(*(torch.from_numpy(v) for v in feed.values())).numpy()
        got = session.run(None, feed)[0]
        worst = max(worst, float(np.max(np.abs(got - expected))))
    if not worst < MAX_ABS_DIFF:
        raise RuntimeError(f"ONNX export of {name} differs from torch by {worst:.3g} (> {MAX_ABS_DIFF})")
    return worst


def export_onnx(name: str, path: str | Path) -> Path:
    """Export model ``name`` (``"bert"`` or ``"vit"``) to ``path`` with batch 1, checked against torch."""
    if name not in SIGNATURES:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(SIGNATURES)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = build_bert() if name == "bert" else build_vit()
    inputs, output = SIGNATURES[name]
    dummy = tuple(torch.from_numpy(v) for v in _check_feeds(name)[0].values())
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(model, dummy, str(path), input_names=inputs, output_names=[output],
                          opset_version=OPSET, dynamo=False)
    onnx.checker.check_model(onnx.load(str(path)))
    diff = check_export(name, model, path)
    print(f"exported {name} to {path} ({path.stat().st_size / 1e6:.1f} MB); max |onnx - torch| = {diff:.3g}")
    return path


def ensure_model(name: str, cache_dir: str | Path | None = None) -> Path:
    """Return the cached ONNX export of ``name`` (``<cache_dir>/transformers/{name}.onnx``), exporting once.

    The export goes to a temporary file first and is renamed into place, so concurrent callers never see a
    half-written model.
    """
    folder = Path(cache_dir if cache_dir is not None else default_cache_dir()) / "transformers"
    target = folder / f"{name}_seq{SEQ_LEN}.onnx" if name == "bert" else folder / f"{name}.onnx"
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        staged = export_onnx(name, Path(tmp) / target.name)
        os.replace(staged, target)
    return target


def main(argv: list[str] | None = None) -> None:
    """CLI entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["bert", "vit", "bert-data"])
    parser.add_argument("out", type=Path)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.what == "bert-data":
        write_bert_data(args.out, args.samples, args.seed)
    else:
        export_onnx(args.what, args.out)


if __name__ == "__main__":
    main()
