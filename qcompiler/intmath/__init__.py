"""Pure numpy references of qc's integer approximations (square root, exponentials, Softmax, GELU, ...).

Each function takes and returns integer arrays and is the executable definition that the integerize
pass emitting the same arithmetic as ONNX ops is tested against, bit for bit.
"""
