"""A ResNet-18-shaped CNN (random weights, re-estimated BatchNorm statistics) exported to ONNX
(see ``export.py``)."""
