"""Fine-tune one preset on chest X-rays with accelerate and write a Hub-ready model folder.

    accelerate launch -m train --model vgg16 --dataset ../shared/data/chest_xray --output-dir runs/vgg16
    python -m train --model cnn --dataset ../shared/data/chest_xray --output-dir runs/cnn

The best epoch, the temperature and the operating threshold are chosen on validation
(patients held out of train); the test split is evaluated once, at the end.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from train.augment import Augment
from pneumonia.presets import UsageError, create_model
from pneumonia.training_transform import XrayPreprocessing, data_config_of
from train import checkpoints, data, optim, tflite_weights
from train.config import TrainConfig, parse_config
from train.export.card import write_card
from train.export.folder import write_model_folder, write_predictions
from train.evaluate.uncertain import write_answer_cutoffs
from train.post_training import Clock, complete_folder
from train.publish.hub import require_token
from train.predict import choose_operating_point, epoch_metrics, gathered_logits, gradcam_central_share, p_positive
from train.metrics import binary_metrics
from pneumonia.gradcam import DESCRIPTION as HEATMAP
from train.publish.model import publish

VALIDATION_SPLITS = ("validation", "shifted_validation")


def main(argv: list[str] | None = None) -> None:
    config = parse_config(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("train").setLevel(logging.INFO)  # our warnings, e.g. skipped images
    try:
        train(config)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def train(config: TrainConfig) -> None:
    accelerator = Accelerator(
        cpu=launched_without_gpus(), gradient_accumulation_steps=config.grad_accum, mixed_precision=mixed_precision(config)
    )
    checkpoints.check_output_dir(config)
    if config.push_to_hub:
        require_token()  # now, not after hours of training
    model = initial_model(config)
    data_config = data_config_of(model)
    preprocessing = XrayPreprocessing(config.intensity, config.crop_borders)
    with accelerator.main_process_first():  # the main process builds the datasets cache first
        splits = data.load_data(
            config.dataset, config.val_fraction, config.split_seed, config.max_train_samples, config.max_eval_samples
        )
    loaders = data.make_loaders(
        splits, data_config, preprocessing, Augment(config.shear, config.zoom, config.hflip, config.augment),
        config.batch_size, config.balance, config.num_workers, config.shift_seed,
    )
    output_dir = checkpoints.prepare_output_dir(config, accelerator)
    loss_fn = optim.WeightedCrossEntropy(optim.class_weights(splits["train"], config.balance), config.label_smoothing)
    optimizer = optim.make_optimizer(model, config, config.lr)
    validation_images = loaders["validation"].dataset  # for the Grad-CAM measure, unsharded
    model, optimizer, train_loader, *eval_loaders = accelerator.prepare(
        model, optimizer, loaders["train"], loaders["validation"], loaders["shifted_validation"], loaders["test"]
    )
    eval_loaders = dict(zip(("validation", "shifted_validation", "test"), eval_loaders))
    # Stepped by hand once per optimizer step, on the per-process loader length.
    scheduler = optim.make_scheduler(optimizer, config, steps_per_epoch=-(-len(train_loader) // config.grad_accum))
    state = checkpoints.TrainState()
    accelerator.register_for_checkpointing(scheduler, state)
    if config.resume:
        checkpoints.load_latest(accelerator, output_dir)
    log_start(accelerator, config, splits, state)

    for epoch in range(state.epoch, config.epochs):
        set_seed(config.seed + epoch)  # same order and augmentation whether resumed or not
        started = time.time()
        train_stats = train_one_epoch(model, train_loader, optimizer, scheduler, loss_fn, accelerator, state, epoch, config)
        val = epoch_metrics(*(gathered_logits(model, eval_loaders[name], accelerator)[:2] for name in VALIDATION_SPLITS))
        state.end_epoch(epoch, {**train_stats, **{f"val_{k}": v for k, v in val.items()}}, time.time() - started)
        if state.improved(val[config.select_metric], lower_is_better=config.select_metric == "loss"):
            checkpoints.save_best_weights(accelerator, model, output_dir, state)
        checkpoints.save(accelerator, output_dir, config, state)
        log_epoch(accelerator, output_dir, state.history[-1])
        if time_box_reached(config, state):
            accelerator.print(f"stopped after epoch {state.epoch}; continue with --resume")
            break
    else:  # every epoch done
        finish(model, eval_loaders, validation_images, splits, accelerator, output_dir, config, state, preprocessing)
    # All ranks leave together and tear the process group down while Python is still alive: a
    # rank that exits with gloo's threads running can abort (SIGABRT, pytorch/pytorch#190489).
    accelerator.wait_for_everyone()
    accelerator.end_training()


def initial_model(config: TrainConfig) -> torch.nn.Module:
    """The run's model before its first step. Seeded, so the saved training_config.json rebuilds
    it exactly: tests compare the trained weights with it."""
    set_seed(config.seed)
    if tflite_weights.is_tflite(config.pretrained_file):
        return tflite_model(config)
    return create_model(
        config.model, pretrained=config.pretrained, pretrained_file=config.pretrained_file,
        image_size=config.image_size, cnn_width=config.cnn_width,
    )


def tflite_model(config: TrainConfig) -> torch.nn.Module:
    """The mobilenetv2 preset with Google's ImageNet weights read from their TFLite file, fed as
    they were trained: pixels scaled to [-1, 1]."""
    if config.model != tflite_weights.PRESET:
        raise UsageError(f"--pretrained-file {config.pretrained_file}: a .tflite file holds MobileNetV2 weights; "
                         f"use --model {tflite_weights.PRESET}")
    if not Path(config.pretrained_file).is_file():
        raise UsageError(f"--pretrained-file {config.pretrained_file}: no such file; give the path of a weights file")
    model = create_model(config.model, image_size=config.image_size, normalization=tflite_weights.NORMALIZATION)
    tflite_weights.load_backbone(model, config.pretrained_file)
    return model


def train_one_epoch(model, loader, optimizer, scheduler, loss_fn, accelerator, state, epoch, config) -> dict:
    optim.train_mode(model, config.freeze_bn)
    totals = torch.zeros(3, device=accelerator.device)  # loss sum, readable images, unreadable images
    bar = tqdm(data.logged_batches(loader), total=len(loader), desc=f"epoch {epoch + 1}/{config.epochs}", disable=not accelerator.is_local_main_process)
    for batch in bar:
        with accelerator.accumulate(model):
            logits = model(batch["pixel_values"])
            loss = loss_fn(logits, batch["labels"], batch["readable"])
            accelerator.backward(loss)
            optimizer.step()
            if accelerator.sync_gradients:
                scheduler.step()
                state.step += 1
            optimizer.zero_grad()
        readable = batch["readable"].sum()
        totals += torch.stack([loss.detach().float() * readable, readable, (~batch["readable"]).sum()])
        bar.set_postfix(loss=f"{loss.item():.4f}")
    loss_sum, seen, skipped = accelerator.reduce(totals, reduction="sum").tolist()
    return {"train_loss": loss_sum / max(seen, 1), "lr": scheduler.get_last_lr()[-1], "skipped_unreadable": int(skipped)}


def finish(model, eval_loaders, validation_images, splits, accelerator, output_dir, config, state, preprocessing) -> None:
    """Best epoch's weights -> temperature and threshold on clean + shifted validation -> test
    once -> model folder, its gate and ONNX files (``train.post_training``), each step timed."""
    clock = Clock(accelerator.print)
    with clock.step("evaluate the best epoch"):
        checkpoints.load_best_weights(accelerator, model, output_dir, state)
        if config.weights_dtype == "float16":
            round_to_float16(accelerator.unwrap_model(model))  # evaluate the weights that will be shipped
        checkpoints.check_replicas_agree(accelerator, model)
        outputs = {name: gathered_logits(model, eval_loaders[name], accelerator) for name in VALIDATION_SPLITS}
        operating_point = choose_operating_point(outputs["validation"], outputs["shifted_validation"], config.threshold_rule)
        outputs["test"] = gathered_logits(model, eval_loaders["test"], accelerator)  # the one look at test
    if not accelerator.is_main_process:
        return
    threshold, temperature = operating_point["threshold"], operating_point["temperature"]
    p = {name: p_positive(logits, temperature) for name, (logits, _, _) in outputs.items()}
    with clock.step("Grad-CAM's central share on validation"):
        shares = gradcam_shares(accelerator.unwrap_model(model), validation_images)
    metrics = {
        **{name: binary_metrics(outputs[name][1], p[name], threshold) for name in outputs},
        **operating_point,
        "gradcam_central_share": shares,
        "best_epoch": state.best_epoch + 1,
        "epochs": config.epochs,
        "steps": state.step,
        "train_images": len(splits["train"]),
        "train_seconds": round(sum(h["seconds"] for h in state.history), 1),
        "history": state.history,
    }
    with clock.step("model folder, predictions, answer cut-offs"):
        model_config = {**operating_point, **preprocessing.to_config()}
        write_model_folder(accelerator.unwrap_model(model), output_dir, config, model_config, metrics)
        rows_of = {"validation": splits["validation"], "shifted_validation": splits["validation"], "test": splits["test"]}
        write_predictions(output_dir / "predictions.csv", {
            name: (data.file_names(rows_of[name], index), labels, p[name]) for name, (_, labels, index) in outputs.items()
        })
        write_answer_cutoffs(output_dir)  # from predictions.csv: rule 7 on shifted validation
    if config.ood_gate or config.export_onnx:  # ONNX calibrated on training films, parity on test: nothing chosen on it
        complete_folder(output_dir, splits, dataclasses.asdict(config), gate=config.ood_gate, onnx=config.export_onnx,
                        batch_size=config.batch_size, num_workers=config.num_workers, clock=clock)
    accelerator.print(summary_line("shifted validation", metrics["shifted_validation"]))
    accelerator.print(f"{summary_line('test', metrics['test'])} (threshold {threshold:.3f}, T {temperature:.2f}) -> {output_dir}")
    with clock.step("model card" + (" and push" if config.push_to_hub else "")):
        if config.push_to_hub:  # renders the card for that repo, then uploads
            publish(output_dir, config.push_to_hub, private=config.hub_private)
        else:
            write_card(output_dir)
    accelerator.print(f"after training: {sum(clock.seconds.values()):.0f} s in all")


def gradcam_shares(model, validation_images) -> dict:
    """{"validation": all films, "validation_NORMAL": ..., "validation_PNEUMONIA": ...}"""
    shares = gradcam_central_share(model, validation_images)
    return {"validation" if key == "all" else f"validation_{key}": value for key, value in shares.items()} | {"method": HEATMAP}


def summary_line(name: str, found: dict) -> str:
    return (f"{name}: F1 {found['f1']:.3f}  precision {found['precision']:.3f}  recall {found['recall']:.3f}  "
            f"specificity {found['specificity']:.3f}  ROC-AUC {found['roc_auc']:.3f}  accuracy {found['accuracy']:.3f}")


@torch.no_grad()
def round_to_float16(model) -> None:
    for tensor in model.state_dict().values():
        if tensor.is_floating_point():
            tensor.copy_(tensor.half().float())


def log_epoch(accelerator, output_dir: Path, entry: dict) -> None:
    if accelerator.is_main_process:
        with (output_dir / "train_log.jsonl").open("a") as f:
            f.write(json.dumps(entry) + "\n")
    accelerator.print(
        f"epoch {entry['epoch']}: train loss {entry['train_loss']:.4f}  val loss {entry['val_loss']:.4f}  "
        f"val ROC-AUC {entry['val_roc_auc']:.4f} (shifted {entry['val_shifted_roc_auc']:.4f})  "
        f"val F1@0.5 {entry['val_f1']:.4f}  ({entry['seconds']:.0f}s)"
    )


def time_box_reached(config: TrainConfig, state: checkpoints.TrainState) -> bool:
    ran_this_job = state.epoch - state.first_epoch_this_job
    return bool(config.stop_after_epochs) and ran_this_job >= config.stop_after_epochs and state.epoch < config.epochs


def launched_without_gpus() -> bool:
    """Several processes on a machine with no GPU: DDP over gloo on the CPU. Without this,
    accelerate would run N unaware single-process copies writing the same folder."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


def mixed_precision(config: TrainConfig) -> str:
    if config.mixed_precision != "auto":
        return config.mixed_precision
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def log_start(accelerator, config: TrainConfig, splits, state) -> None:
    counts = {
        name: f"{len(rows)} images, {len(set(rows['patient_id']))} patients, "
        f"{sum(rows['label'])} PNEUMONIA"
        for name, rows in splits.items()
    }
    accelerator.print(f"{config.model}: {counts}")
    accelerator.print(
        f"{accelerator.num_processes} process(es) on {accelerator.device}, mixed precision "
        f"{accelerator.mixed_precision}, epochs {state.epoch + 1}..{config.epochs}"
    )
