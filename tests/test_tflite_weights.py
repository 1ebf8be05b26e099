"""The ImageNet MobileNetV2 of ../shared/weights, read from its int8 TFLite file into timm, against
Google's own interpreter (ai-edge-litert) on the same inputs."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import ROOT

pytestmark = pytest.mark.slow  # a training-side reader; the fast tier keeps to its 90 s

WEIGHTS = ROOT.parent / "shared" / "weights" / "mobilenet_v2_1.0_224_imagenet" / "tf2_mobilenet_v2_1.0_224_ptq.tflite"
EGYPTIAN_CAT = 285  # ImageNet-1k class of scikit-image's "chelsea"


@pytest.fixture(scope="module")
def inputs(film) -> np.ndarray:
    """Three photos and a chest film, 224 x 224 RGB, scaled to [-1, 1] as the file expects (N, H, W, C)."""
    import skimage.data

    if not WEIGHTS.is_file():
        pytest.skip(f"the TFLite weights were not found at {WEIGHTS} (they sit in ../shared beside the checkout)")
    images = [Image.fromarray(getattr(skimage.data, name)()) for name in ("chelsea", "coffee", "astronaut")]
    images.append(Image.open(film("NORMAL")).convert("RGB"))
    return np.stack([np.asarray(image.resize((224, 224), Image.BILINEAR), np.float32) / 127.5 - 1 for image in images])


def interpreter_logits(x: np.ndarray) -> tuple[np.ndarray, float]:
    """The int8 file's logits (before its softmax, background class dropped) from ai-edge-litert's
    reference kernels (XNNPACK does not keep intermediate tensors), and the logits' int8 step."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(model_path=str(WEIGHTS), experimental_preserve_all_tensors=True,
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    source = interpreter.get_input_details()[0]
    softmax = next(op for op in interpreter._get_ops_details() if op["op_name"] == "SOFTMAX")
    logits = next(t for t in interpreter.get_tensor_details() if t["index"] == softmax["inputs"][0])
    (in_scale, in_zero), (step, zero) = source["quantization"], logits["quantization"]
    found = []
    for image in x:
        interpreter.set_tensor(source["index"], np.clip(np.round(image / in_scale + in_zero), 0, 255).astype(np.uint8)[None])
        interpreter.invoke()
        found.append((interpreter.get_tensor(logits["index"]).astype(np.float32)[0] - zero) * step)
    return np.stack(found)[:, 1:], step


def agreement(model: torch.nn.Module, x: np.ndarray) -> dict:
    reference, step = interpreter_logits(x)
    with torch.no_grad():
        ours = model(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    return {"correlation": min(np.corrcoef(a, b)[0, 1] for a, b in zip(ours, reference)),
            "mean_abs_steps": float(np.abs(ours - reference).mean() / step),
            "same_top1": bool((ours.argmax(1) == reference.argmax(1)).all()), "top1": ours.argmax(1).tolist()}


def within_int8_rounding(found: dict) -> bool:
    """Measured: logits correlate at 0.989 or more per image, differ by 1.6 of the logits' int8 steps
    on average (the rounding of 53 quantized layers), and every image gets the same class."""
    return found["correlation"] >= 0.98 and found["mean_abs_steps"] <= 3 and found["same_top1"]


def test_the_tflite_weights_read_into_timm_give_the_interpreters_logits(inputs):
    import timm

    from train.tflite_weights import TIMM_ARGS, TIMM_NAME, imagenet_mobilenetv2, mobilenetv2_state_dict

    model = imagenet_mobilenetv2(WEIGHTS)
    found = agreement(model, inputs)
    assert within_int8_rounding(found), found
    assert found["top1"][0] == EGYPTIAN_CAT
    fresh = timm.create_model(TIMM_NAME, pretrained=False, **TIMM_ARGS)
    norms = {name for name, module in fresh.named_modules() if isinstance(module, torch.nn.BatchNorm2d)}
    from_file = [name for name in fresh.state_dict()  # every weight and bias (a norm's bias: its folded bias)
                 if name.endswith(("weight", "bias")) and not (name.endswith(".weight") and name[:-7] in norms)]
    mapped = mobilenetv2_state_dict(WEIGHTS, fresh)
    assert len(from_file) == 2 * 52 + 2 and not [name for name in from_file if torch.equal(mapped[name], fresh.state_dict()[name])]


def test_one_tensor_on_the_wrong_layer_breaks_the_agreement(inputs, monkeypatch):
    from train import tflite_weights

    read = tflite_weights.read_convolutions

    def swapped(path):  # the first two convolutions of the same shape, each given the other's weights
        found = read(path)
        shapes = [weight.shape for weight, _ in found]
        i, j = next((i, j) for i in range(len(found)) for j in range(i + 1, len(found)) if shapes[i] == shapes[j])
        found[i], found[j] = (found[j][0], found[i][1]), (found[i][0], found[j][1])
        return found

    monkeypatch.setattr(tflite_weights, "read_convolutions", swapped)
    assert not within_int8_rounding(agreement(tflite_weights.imagenet_mobilenetv2(WEIGHTS), inputs))


def test_training_from_the_tflite_file_records_where_its_weights_came_from(data_dir, tmp_path, capsys):
    """``--pretrained-file`` with the .tflite file: the run starts from the file's backbone (a zero
    head for the two classes), fed [-1, 1] pixels as the file was trained; its folder and card say
    what the weights are, where they came from and their licence. Another preset is refused."""
    from tests.conftest import call_cli, run_cli, run_initial_weights
    from tests.test_train_cli import BARE, TINY, _ok
    from train.run import main
    from train.tflite_weights import imagenet_mobilenetv2

    if not WEIGHTS.is_file():
        pytest.skip(f"the TFLite weights were not found at {WEIGHTS} (they sit in ../shared beside the checkout)")
    out = tmp_path / "mobilenetv2"
    _ok(run_cli("--model", "mobilenetv2", "--pretrained-file", str(WEIGHTS), "--dataset", str(data_dir),
                "--output-dir", str(out), *TINY, "--image-size", "96", *BARE))
    start, imagenet = run_initial_weights(out).state_dict(), imagenet_mobilenetv2(WEIGHTS).state_dict()
    assert all(torch.equal(start[name], imagenet[name]) for name in start if not name.startswith("classifier"))
    assert not start["classifier.weight"].any() and not start["classifier.bias"].any()
    config = json.loads((out / "config.json").read_text())
    assert config["pretrained_cfg"]["mean"] == config["pretrained_cfg"]["std"] == [0.5, 0.5, 0.5]
    assert config["base_model"] is None and config["initial_weights"]["license"] == "apache-2.0"
    assert json.loads((out / "training_config.json").read_text())["freeze_bn"] is True
    card = (out / "README.md").read_text()
    assert "fine-tuned from ImageNet-1k weights: Google's TensorFlow MobileNetV2 1.0/224" in card and "apache-2.0" in card

    refused = call_cli(main, capsys, "--model", "resnet18_half", "--pretrained-file", str(WEIGHTS), "--dataset",
                       str(data_dir), "--output-dir", str(tmp_path / "refused"), *TINY)
    assert refused.returncode == 2 and "use --model mobilenetv2" in refused.stderr, refused.stderr
