"""int8 weights with float activations (``train.export.onnx.quantize_int8_weights``): the file the
export falls back to when static int8 misses the parity bar."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from train.export.onnx import quantize_int8_weights


def _small_network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(),  # depthwise, as in MobileNetV2
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2),
    ).eval()


def _rounded_per_output_channel(network: nn.Module) -> nn.Module:
    """What int8 weights should compute: each weight rounded to 1/127 of its output channel's largest."""
    rounded = _small_network()
    rounded.load_state_dict(network.state_dict())
    with torch.no_grad():
        for layer in rounded:
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                w = layer.weight
                scale = w.abs().amax(dim=tuple(range(1, w.ndim)), keepdim=True) / 127
                w.copy_(torch.round(w / scale) * scale)
    return rounded


def test_int8_weights_compute_the_rounded_network_in_float(tmp_path):
    network = _small_network()
    x = torch.randn(4, 3, 16, 16)
    torch.onnx.export(network, (x,), str(tmp_path / "fp32.onnx"), input_names=["pixel_values"],
                      dynamo=True, external_data=False, verbose=False)
    quantize_int8_weights(tmp_path / "fp32.onnx", tmp_path / "int8.onnx")

    graph = onnx.load(str(tmp_path / "int8.onnx")).graph
    int8 = [init for init in graph.initializer if init.data_type == onnx.TensorProto.INT8 and init.dims and len(init.dims) > 1]
    assert len(int8) == 3 and sum(node.op_type == "DequantizeLinear" for node in graph.node) == 3
    assert not [init for init in graph.initializer if init.data_type == onnx.TensorProto.FLOAT and len(init.dims) > 1]

    got = ort.InferenceSession(str(tmp_path / "int8.onnx")).run(None, {"pixel_values": x.numpy()})[0]
    with torch.no_grad():
        rounded, exact = _rounded_per_output_channel(network)(x).numpy(), network(x).numpy()
    assert np.abs(got - rounded).max() < 1e-5  # one scale per output channel, activations untouched
    assert np.abs(got - exact).max() > 1e-6  # and the weights really were rounded
