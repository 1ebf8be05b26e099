"""ONNX files of a trained model: fp32, and static int8 checked for parity with PyTorch.

``model.onnx`` (fp32) and ``model.int8.onnx`` (static int8: QDQ, per-channel int8 weights, uint8
activations, calibrated on training films through the model's own preprocessing) output the
logits and the gate's features. Their parity with the PyTorch model is measured on the test
split (and the scope images' gate outcomes) and recorded in ``metrics.json`` ("onnx"). An int8
model that misses the parity bar (decisions identical on at least 99% of films, mean
|ΔP(PNEUMONIA)| at most 0.01, and the same outcome of the out-of-distribution gate on at least
98%) is not kept. The next candidate is int8 weights alone (``quantize_int8_weights``: per-channel
int8 weights, float activations): the same file size, fp32's speed, and none of the activation
rounding. If it misses the bar too, ``model.fp16.onnx`` stores the weights in fp16 (half fp32's
size; a folder saved with ``--weights-dtype float16`` holds exactly these weights) and computes in
fp32, checked against the same bar. The folder serves the int8 file, else the fp16 one, else fp32.
``train.post_training`` runs these steps; ``python -m train.export`` (re)exports a folder.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from pneumonia import folder_json
from pneumonia.modeling import calibrated_probabilities
from pneumonia.ood import INT8_GATE_FILE, OodGate
from pneumonia.torch_model import WithGateFeatures, gate_layers

PARITY_BAR = {"decision_agreement": 0.99, "mean_abs_dp": 0.01, "outcome_agreement": 0.98}
CALIBRATION_IMAGES = 256  # training films int8 is calibrated on
INPUT_NAME = "pixel_values"


def store_int8_gate(folder: Path, gate: OodGate | None) -> None:
    """Save int8's own gate calibration beside the folder's gate, or remove a stale one."""
    (folder / INT8_GATE_FILE).unlink(missing_ok=True)
    if gate is not None:
        gate.save(folder, INT8_GATE_FILE)

    def with_int8_gate(config: dict) -> None:
        backends = config.get("ood", {}).pop("backends", {})
        backends.pop("onnx-int8", None)
        if gate is not None:
            backends["onnx-int8"] = {**gate.to_config(), "file": INT8_GATE_FILE}
        if backends:
            config["ood"]["backends"] = backends

    folder_json.rewrite(folder / "config.json", with_int8_gate)


def within_bar(found: dict) -> bool:
    return (found["decision_agreement"] >= PARITY_BAR["decision_agreement"]
            and found["mean_abs_dp"] <= PARITY_BAR["mean_abs_dp"]
            and found.get("outcome_agreement", 1.0) >= PARITY_BAR["outcome_agreement"])


def export_fp32(model: torch.nn.Module, input_size: tuple[int, int, int], path: Path, gate: OodGate | None = None) -> None:
    """The eval-mode model as one self-contained ONNX file with a dynamic batch axis; its
    outputs are the logits and the features of ``gate`` (by default, of the current gate layout)."""
    example = torch.zeros(2, *input_size)
    layers, halves = (gate.layers, gate.halves) if gate else (gate_layers(model)[0], True)
    with_features = WithGateFeatures(model, layers, halves).eval()
    try:
        with warnings.catch_warnings():
            # The hooks hand the feature maps over in a dict; torch.export traces them into the graph (the
            # parity check compares the features) but warns that the dict's tensors are not buffers.
            warnings.filterwarnings("ignore", message="The tensor attributes .* were assigned during export")
            torch.onnx.export(
                with_features, (example,), str(path), input_names=[INPUT_NAME], output_names=["logits", "ood_features"],
                dynamic_shapes={"pixels": {0: torch.export.Dim("batch", min=1, max=1024)}},
                dynamo=True, external_data=False, verbose=False,
            )
    finally:
        with_features.remove()


def quantize_int8(fp32_file: Path, out: Path, calibration_batches, workdir: Path, **options) -> None:
    """Static int8 (QDQ, per-channel), as onnxruntime.quantization recommends for CNNs on x86;
    ``options`` go to ``quantize_static`` (``benchmarks/int8_variants.py`` compares some)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calibration_batches)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {INPUT_NAME: batch.numpy()}

    prepared = workdir / "prepared.onnx"
    quant_pre_process(str(fp32_file), str(prepared))  # shape inference and graph fusions first
    quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, **options)


def quantize_int8_weights(fp32_file: Path, out: Path) -> None:
    """int8 weights, float activations: every Conv and Gemm weight stored as int8 (symmetric, one
    scale per output channel) behind a DequantizeLinear node, everything else as in fp32.
    onnxruntime.quantization offers weight-only int8 for MatMul alone (MatMulNBits), not for
    convolutions; this is the QDQ form of the same idea, which any ONNX runtime runs."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(fp32_file))
    graph = model.graph
    weights = {init.name: init for init in graph.initializer}
    dequantize = []
    for node in graph.node:
        if node.op_type not in ("Conv", "Gemm") or node.input[1] not in weights:
            continue
        name = node.input[1]
        w = numpy_helper.to_array(weights[name]).astype(np.float32)
        transposed = node.op_type == "Conv" or any(a.name == "transB" and a.i == 1 for a in node.attribute)
        axis = 0 if transposed else 1  # the output channels' axis
        reduce = tuple(i for i in range(w.ndim) if i != axis)
        scale = np.abs(w).max(axis=reduce) / 127.0
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        shape = [-1 if i == axis else 1 for i in range(w.ndim)]
        q = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
        graph.initializer.remove(weights.pop(name))
        graph.initializer.extend([numpy_helper.from_array(q, f"{name}_int8"),
                                  numpy_helper.from_array(scale, f"{name}_scale"),
                                  numpy_helper.from_array(np.zeros_like(scale, dtype=np.int8), f"{name}_zero")])
        dequantize.append(helper.make_node("DequantizeLinear", [f"{name}_int8", f"{name}_scale", f"{name}_zero"],
                                           [f"{name}_dequantized"], axis=axis, name=f"{name}_DequantizeLinear"))
        node.input[1] = f"{name}_dequantized"
    for position, node in enumerate(dequantize):  # before every node: they read initializers alone
        graph.node.insert(position, node)
    onnx.checker.check_model(model)
    onnx.save(model, str(out))


def store_fp16_weights(fp32_file: Path, out: Path) -> None:
    """Every float initializer stored in fp16 behind a Cast to fp32: half the file, fp32's arithmetic
    (onnxruntime folds the casts when the session starts)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(fp32_file))
    graph = model.graph
    casts = []
    for init in [init for init in graph.initializer if init.data_type == TensorProto.FLOAT]:
        name = init.name
        half = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), f"{name}_fp16")
        graph.initializer.remove(init)
        graph.initializer.append(half)
        casts.append(helper.make_node("Cast", [half.name], [name], to=TensorProto.FLOAT, name=f"{name}_Cast"))
    for position, node in enumerate(casts):  # the readers keep the old names, now the casts' outputs
        graph.node.insert(position, node)
    onnx.checker.check_model(model)
    onnx.save(model, str(out))


def parity(reference: tuple[dict, OodGate | None], candidates: dict[str, tuple[dict, OodGate | None]],
           threshold: float, temperature: float) -> dict:
    """Per ONNX model (its outputs on "test" and "scope_clean", as ``train.sweep`` reads them, and
    the gate it is served with) against PyTorch's: on the test films, the share with PyTorch's
    decision and the mean / max |ΔP(PNEUMONIA)|; over the test films and the scope images, the
    share given the same outcome (answer, caution, refuse) as PyTorch with its gate."""
    def p_and_outcomes(found: dict, gate: OodGate | None) -> tuple[np.ndarray, np.ndarray]:
        p = calibrated_probabilities(found["test"].logits, temperature)[:, 1]
        outcomes = [[v.outcome for v in gate.verdicts(found[name].features)] if gate else ["answer"] * len(found[name].logits)
                    for name in ("test", "scope_clean") if name in found]
        return p, np.concatenate(outcomes)

    p_ref, outcomes_ref = p_and_outcomes(*reference)
    result = {}
    for name, (found, gate) in candidates.items():
        p, outcomes = p_and_outcomes(found, gate)
        gap = np.abs(p - p_ref)
        agree = (p >= threshold) == (p_ref >= threshold)
        result[name] = {"decision_agreement": float(np.mean(agree)), "mean_abs_dp": float(gap.mean()),
                        "max_abs_dp": float(gap.max()), "n": int(len(p))}
        if reference[1] is not None:
            result[name] |= {"outcome_agreement": float(np.mean(outcomes == outcomes_ref)), "outcome_n": int(len(outcomes))}
    return result


def parity_summary(found: dict) -> str:
    lines = [f"{name}: decisions agree on {found[name]['decision_agreement']:.2%} of {found[name]['n']} test films, "
             f"mean |dP| {found[name]['mean_abs_dp']:.4f}, max {found[name]['max_abs_dp']:.4f}"
             + (f", the same outcome for {found[name]['outcome_agreement']:.2%} of {found[name]['outcome_n']} test films "
                "and scope images" if "outcome_agreement" in found[name] else "")
             for name in ("fp32", "int8")]
    scheme = found["int8"].get("scheme", "static")
    kept = f"kept ({scheme})" if found["int8"]["kept"] else "NOT kept (static and weights-only both miss the parity bar)"
    tried = [f"static int8 first: {_figures(found['int8_static'])}, misses the bar"] if "int8_static" in found else []
    fp16 = []
    if "fp16" in found:
        fp16 = [f"fp16 weights: {_figures(found['fp16'])}: " + ("kept: the folder serves it" if found["fp16"]["kept"] else
                                                               "NOT kept: the folder serves fp32 ONNX")]
    return "\n".join(lines + tried + [f"int8: {kept}"] + fp16)


def _figures(found: dict) -> str:
    return (f"decisions {found['decision_agreement']:.2%}, mean |dP| {found['mean_abs_dp']:.4f}"
            + (f", outcomes {found['outcome_agreement']:.2%}" if "outcome_agreement" in found else ""))

