"""Fine-tune one preset on chest X-rays with accelerate and write a Hub-ready model folder.

    accelerate launch -m train --model vgg16 --dataset ../shared/data/chest_xray --output-dir runs/vgg16
    python -m train --model cnn --dataset ../shared/data/chest_xray --output-dir runs/cnn

The best epoch, the temperature and the operating threshold are chosen on validation
(patients held out of train); the test split is evaluated once, at the end.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from pneumonia.modeling import probabilities
from pneumonia.presets import UsageError, create_model
from pneumonia.preprocessing import Augment, data_config_of
from train import checkpoints, data, optim
from train.config import TrainConfig, parse_config
from train.card import write_card
from train.export import write_model_folder, write_predictions
from train.hub import require_token
from train.metrics import binary_metrics, choose_threshold, fit_temperature
from train.publish import publish

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
    set_seed(config.seed)
    model = create_model(
        config.model, pretrained=config.pretrained, pretrained_file=config.pretrained_file,
        image_size=config.image_size, cnn_width=config.cnn_width,
    )
    data_config = data_config_of(model)
    with accelerator.main_process_first():  # the main process builds the datasets cache first
        splits = data.load_data(
            config.dataset, config.val_fraction, config.seed, config.max_train_samples, config.max_eval_samples
        )
    loaders = data.make_loaders(
        splits, data_config, Augment(config.shear, config.zoom, config.hflip),
        config.batch_size, config.balance, config.num_workers,
    )
    output_dir = checkpoints.prepare_output_dir(config, accelerator)
    loss_fn = optim.WeightedCrossEntropy(optim.class_weights(splits["train"], config.balance))
    optimizer = optim.make_optimizer(model, config, config.lr)
    model, optimizer, train_loader, val_loader, test_loader = accelerator.prepare(
        model, optimizer, loaders["train"], loaders["validation"], loaders["test"]
    )
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
        val_logits, val_labels, _ = predict(model, val_loader, accelerator)
        val = epoch_metrics(val_logits, val_labels)
        state.end_epoch(epoch, {**train_stats, **{f"val_{k}": v for k, v in val.items()}}, time.time() - started)
        if state.improved(val[config.select_metric], lower_is_better=config.select_metric == "loss"):
            checkpoints.save_best_weights(accelerator, model, output_dir, state)
        checkpoints.save(accelerator, output_dir, config, state)
        log_epoch(accelerator, output_dir, state.history[-1])
        if time_box_reached(config, state):
            accelerator.print(f"stopped after epoch {state.epoch}; continue with --resume")
            return

    finish(model, val_loader, test_loader, splits, accelerator, output_dir, config, state)


def train_one_epoch(model, loader, optimizer, scheduler, loss_fn, accelerator, state, epoch, config) -> dict:
    model.train()
    totals = torch.zeros(3, device=accelerator.device)  # loss sum, readable images, unreadable images
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not accelerator.is_local_main_process)
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


@torch.no_grad()
def predict(model, loader, accelerator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(logits, labels, dataset row indices) for every readable image, from all processes."""
    model.eval()
    parts = []
    for batch in loader:
        logits = model(batch["pixel_values"])
        parts.append(accelerator.gather_for_metrics((logits.float(), batch["labels"], batch["index"], batch["readable"])))
    logits, labels, index, readable = (torch.cat(column).cpu().numpy() for column in zip(*parts))
    return logits[readable], labels[readable], index[readable]


def epoch_metrics(logits: np.ndarray, labels: np.ndarray) -> dict:
    """Per-epoch validation numbers (uncalibrated, threshold 0.5) for choosing the best epoch."""
    probs = probabilities(torch.from_numpy(logits)).numpy()
    nll = float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean())
    found = binary_metrics(labels, probs[:, 1], threshold=0.5)
    return {"loss": nll, "roc_auc": found["roc_auc"], "f1": found["f1"], "accuracy": found["accuracy"]}


def finish(model, val_loader, test_loader, splits, accelerator, output_dir, config, state) -> None:
    """Best epoch's weights -> temperature and threshold on validation -> test once -> model folder."""
    checkpoints.load_best_weights(accelerator, model, output_dir, state)
    checkpoints.check_replicas_agree(accelerator, model)
    val_logits, val_labels, val_index = predict(model, val_loader, accelerator)
    temperature = fit_temperature(val_logits, val_labels)
    val_p = probabilities(torch.from_numpy(val_logits), temperature).numpy()[:, 1]
    threshold = choose_threshold(val_labels, val_p, config.threshold_rule)
    test_logits, test_labels, test_index = predict(model, test_loader, accelerator)  # the one look at test
    test_p = probabilities(torch.from_numpy(test_logits), temperature).numpy()[:, 1]
    if not accelerator.is_main_process:
        return
    operating_point = {"threshold": threshold, "temperature": temperature, "threshold_rule": config.threshold_rule}
    metrics = {
        "validation": binary_metrics(val_labels, val_p, threshold),
        "test": binary_metrics(test_labels, test_p, threshold),
        **operating_point,
        "best_epoch": state.best_epoch + 1,
        "epochs": config.epochs,
        "steps": state.step,
        "train_images": len(splits["train"]),
        "train_seconds": round(sum(h["seconds"] for h in state.history), 1),
        "history": state.history,
    }
    write_model_folder(accelerator.unwrap_model(model), output_dir, config, operating_point, metrics)
    write_predictions(output_dir / "predictions.csv", {
        "validation": (data.file_names(splits["validation"], val_index), val_labels, val_p),
        "test": (data.file_names(splits["test"], test_index), test_labels, test_p),
    })
    test = metrics["test"]
    accelerator.print(
        f"test: F1 {test['f1']:.3f}  precision {test['precision']:.3f}  recall {test['recall']:.3f}  "
        f"specificity {test['specificity']:.3f}  ROC-AUC {test['roc_auc']:.3f}  accuracy {test['accuracy']:.3f}  "
        f"(threshold {threshold:.3f}, temperature {temperature:.2f}) -> {output_dir}"
    )
    if config.push_to_hub:  # renders the card for that repo, then uploads
        publish(output_dir, config.push_to_hub, private=config.hub_private)
    else:
        write_card(output_dir)


def log_epoch(accelerator, output_dir: Path, entry: dict) -> None:
    if accelerator.is_main_process:
        with (output_dir / "train_log.jsonl").open("a") as f:
            f.write(json.dumps(entry) + "\n")
    accelerator.print(
        f"epoch {entry['epoch']}: train loss {entry['train_loss']:.4f}  val loss {entry['val_loss']:.4f}  "
        f"val ROC-AUC {entry['val_roc_auc']:.4f}  val F1@0.5 {entry['val_f1']:.4f}  ({entry['seconds']:.0f}s)"
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
