"""ImageNet weights from a TensorFlow Lite file, read into timm's MobileNetV2.

Google's MobileNetV2 1.0/224 (``../shared/weights/mobilenet_v2_1.0_224_imagenet``, Apache-2.0)
comes as an int8 TFLite flatbuffer with batch norm folded into each convolution. The ``tflite``
package parses it. Each convolution's int8 weights are dequantized per output channel (int8 x its
channel's scale), its int32 bias by its own scales, and laid into timm's ``mobilenetv2_100``
(built with TensorFlow's "SAME" padding) in graph order: the k-th convolution of the file into the
k-th of the model, each checked by shape. The batch norms after them become the identity that adds
the folded bias. The last convolution (1001 logits: a background class, then ImageNet-1k) becomes
the classifier, without the background row.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pneumonia.labels import UsageError

TIMM_NAME = "mobilenetv2_100"
TIMM_ARGS = {"pad_type": "same"}  # TensorFlow's padding, which the weights were trained with
PRESET = "mobilenetv2"  # the project's preset of that architecture
NORMALIZATION = (0.5, 0.5)  # the file's input, x / 127.5 - 1 on 0..255, as timm's mean and std on 0..1
# The one file this project knows, by content (../shared/weights/mobilenet_v2_1.0_224_imagenet/README.md).
KNOWN_FILES = {
    "5d3137241276e79c86d14a74fe43581398ae0e815191d3dba45495b810840e8c": {
        "weights": "ImageNet-1k",
        "from": "Google's TensorFlow MobileNetV2 1.0/224 (Keras), as the int8 TensorFlow Lite file "
                "tf2_mobilenet_v2_1.0_224_ptq.tflite of github.com/google-coral/test_data "
                "(commit 104342d2d3480b3e66203073dac24f4e2dbb4c41)",
        "license": "apache-2.0",
    },
}
_CONVOLUTIONS = ("CONV_2D", "DEPTHWISE_CONV_2D")


def read_convolutions(path: str | Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """(weight in PyTorch's layout, bias) of every convolution of the file, in graph order, as float32."""
    try:
        import tflite
    except ImportError as err:
        raise UsageError(f"reading {path} needs the tflite package ({err}): pip install tflite") from err
    buffer = Path(path).read_bytes()
    model = tflite.Model.GetRootAsModel(buffer, 0)
    graph = model.Subgraphs(0)
    names = {value: key for key, value in vars(tflite.BuiltinOperator).items() if not key.startswith("_")}
    found = []
    for i in range(graph.OperatorsLength()):
        operator = graph.Operators(i)
        code = model.OperatorCodes(operator.OpcodeIndex())
        kind = names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()))
        if kind not in _CONVOLUTIONS:
            continue
        weight = _dequantized(model, graph.Tensors(operator.Inputs(1)))
        bias = _dequantized(model, graph.Tensors(operator.Inputs(2)))
        # TFLite: convolution (out, kh, kw, in), depthwise (1, kh, kw, channels); PyTorch: (out, in/groups, kh, kw)
        found.append((weight.transpose(3, 0, 1, 2) if kind == "DEPTHWISE_CONV_2D" else weight.transpose(0, 3, 1, 2),
                      bias))
    return found


def _dequantized(model, tensor) -> np.ndarray:
    """The tensor's stored integers times their scales, along its quantized dimension."""
    dtype = {9: np.int8, 2: np.int32, 0: np.float32}[tensor.Type()]  # tflite.TensorType INT8, INT32, FLOAT32
    values = model.Buffers(tensor.Buffer()).DataAsNumpy().view(dtype).reshape(tensor.ShapeAsNumpy())
    quantization = tensor.Quantization()
    if dtype == np.float32 or quantization is None or quantization.ScaleLength() == 0:
        return values.astype(np.float32)
    scale, zero = quantization.ScaleAsNumpy(), quantization.ZeroPointAsNumpy()
    shape = [1] * values.ndim
    shape[quantization.QuantizedDimension()] = -1
    return ((values.astype(np.float64) - np.reshape(zero, shape)) * np.reshape(scale, shape)).astype(np.float32)


def mobilenetv2_state_dict(path: str | Path, model: nn.Module, with_classifier: bool = True) -> dict[str, torch.Tensor]:
    """``model``'s state dict (a timm ``mobilenetv2_100``) with the file's weights, every tensor mapped
    (the ImageNet classifier too, unless ``with_classifier`` is false)."""
    convolutions = read_convolutions(path)
    pairs = _convolutions_and_norms(model)
    if len(convolutions) != len(pairs) + 1:
        raise UsageError(f"{path}: {len(convolutions)} convolutions, but {TIMM_NAME} has {len(pairs)} and a classifier; "
                         "is it MobileNetV2 1.0?")
    state = {name: value.clone() for name, value in model.state_dict().items()}
    for (weight, bias), (conv, norm) in zip(convolutions, pairs):
        if tuple(state[f"{conv}.weight"].shape) != weight.shape:
            raise UsageError(f"{path}: a {weight.shape} convolution does not fit {conv} {tuple(state[f'{conv}.weight'].shape)}")
        epsilon = model.get_submodule(norm).eps
        state[f"{conv}.weight"] = torch.from_numpy(weight)
        state |= {f"{norm}.weight": torch.ones(len(bias)), f"{norm}.bias": torch.from_numpy(bias),
                  f"{norm}.running_mean": torch.zeros(len(bias)), f"{norm}.running_var": torch.full((len(bias),), 1 - epsilon)}
    if not with_classifier:
        return state
    weight, bias = convolutions[-1]
    state["classifier.weight"] = torch.from_numpy(weight[1:, :, 0, 0].copy())  # row 0: TensorFlow's background class
    state["classifier.bias"] = torch.from_numpy(bias[1:].copy())
    return state


def _convolutions_and_norms(model: nn.Module) -> list[tuple[str, str]]:
    """(convolution, the batch norm after it) in the order the forward pass meets them."""
    modules = [(name, module) for name, module in model.named_modules() if isinstance(module, (nn.Conv2d, nn.BatchNorm2d))]
    return [(name, modules[i + 1][0]) for i, (name, module) in enumerate(modules) if isinstance(module, nn.Conv2d)]


def is_tflite(path: str | Path | None) -> bool:
    return str(path or "").endswith(".tflite")


def load_backbone(model: nn.Module, path: str | Path) -> None:
    """The file's ImageNet weights into ``model`` (the ``mobilenetv2`` preset), all but its own
    classifier, which keeps its fresh initialisation for the run's classes."""
    state = mobilenetv2_state_dict(path, model, with_classifier=False)
    model.load_state_dict(state)


def provenance(path: str | Path) -> dict:
    """What the initial weights are and where they came from, for config.json and the card."""
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    known = KNOWN_FILES.get(digest, {"weights": "not known to this project", "from": f"the TFLite file {Path(path).name}",
                                     "license": "not known to this project"})
    return {**known, "sha256": digest}


def imagenet_mobilenetv2(path: str | Path) -> nn.Module:
    """timm's ``mobilenetv2_100`` (SAME padding) with the file's ImageNet weights, in eval mode."""
    import timm

    model = timm.create_model(TIMM_NAME, pretrained=False, **TIMM_ARGS)
    model.load_state_dict(mobilenetv2_state_dict(path, model))
    return model.eval()
