"""The test model zoo: small models built in code, the example CNN, and the onnx wheel's light models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

REPO = Path(__file__).resolve().parents[2]
LIGHT_DIR = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
LIGHT_MODELS = ("light_resnet50", "light_squeezenet", "light_shufflenet", "light_densenet121")


def data_input(model: onnx.ModelProto) -> onnx.ValueInfoProto:
    """The graph input that is not an initializer (old models list weights as inputs too)."""
    inits = {t.name for t in model.graph.initializer}
    return next(i for i in model.graph.input if i.name not in inits)


def random_calibration(model: onnx.ModelProto, samples: int, seed: int = 0, batch: int | None = None) -> dict:
    """Explicitly random calibration data (only for architecture-only models whose weights are synthetic)."""
    value = data_input(model)
    shape = [d.dim_value or 1 for d in value.type.tensor_type.shape.dim]
    rng = np.random.default_rng(seed)
    return {value.name: rng.standard_normal((samples, *shape[1:])).astype(np.float32)}


def build_tiny_cnn(path: Path) -> Path:
    """A 16x16 CNN exercising every CNN op family qc supports (exported from torch once per session)."""
    import torch
    from torch import nn

    torch.manual_seed(0)

    class SqueezeExcite(nn.Module):
        def __init__(self, channels):
            super().__init__()
            self.reduce, self.expand = nn.Conv2d(channels, 4, 1), nn.Conv2d(4, channels, 1)

        def forward(self, x):
            gate = nn.functional.hardsigmoid(self.expand(torch.relu(self.reduce(nn.functional.adaptive_avg_pool2d(x, 1)))))
            return x * gate

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.stem_bn = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
            self.body, self.body_bn = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
            self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8, stride=2)
            self.se = SqueezeExcite(8)
            self.project = nn.Conv2d(8, 16, 1)
            self.prelu = nn.PReLU(16)
            self.up = nn.Upsample(scale_factor=2, mode="nearest")
            self.fc = nn.Linear(32, 10)

        def forward(self, x):
            x = torch.relu(self.stem_bn(self.stem(x)))
            x = torch.relu(x + self.body_bn(self.body(x)))
            x = nn.functional.max_pool2d(x, 2)
            x = nn.functional.relu6(self.depthwise(x))
            x = self.se(x)
            x = self.prelu(nn.functional.hardswish(self.project(x)))
            x = x * torch.sigmoid(x)
            x = nn.functional.avg_pool2d(x, 2, padding=1, count_include_pad=False)
            x = torch.cat([x, nn.functional.leaky_relu(self.up(x)[:, :, ::2, ::2], 0.1)], dim=1)
            x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
            return torch.softmax(self.fc(x) * 0.5 + 0.1, dim=1)

    model = Tiny().eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
    torch.onnx.export(model, torch.randn(1, 1, 16, 16), str(path), opset_version=17, dynamo=False,
                      input_names=["input"], output_names=["probs"], dynamic_axes={"input": {0: "batch"}})
    return path
