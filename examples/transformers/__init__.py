"""Transformer encoders built from ``transformers`` configs (random init, offline): a BERT sentence encoder
and a DeiT-tiny-size ViT, exported to ONNX with static shapes (see ``export.py``)."""
