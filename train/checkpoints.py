"""The output folder's life: refuse to clobber, checkpoint every epoch, resume, keep the best."""
from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file

from pneumonia.presets import UsageError
from train.config import TrainConfig, save_config

# Settings that may change between a run and its --resume without changing the result.
RUN_CONTROL = {"resume", "overwrite", "stop_after_epochs", "num_workers", "push_to_hub", "hub_private", "export_onnx"}


@dataclass
class TrainState:
    """What a resumed run needs beyond model, optimizer and scheduler (saved by save_state)."""

    epoch: int = 0                 # the next epoch to run
    step: int = 0                  # optimizer steps taken
    best_epoch: int = -1
    best_value: float | None = None
    history: list[dict] = field(default_factory=list)
    first_epoch_this_job: int = 0  # not saved: where this process started

    def state_dict(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "first_epoch_this_job"}

    def load_state_dict(self, saved: dict) -> None:
        for key, value in saved.items():
            setattr(self, key, value)
        self.first_epoch_this_job = self.epoch

    def end_epoch(self, epoch: int, stats: dict, seconds: float) -> None:
        self.history.append({"epoch": epoch + 1, "step": self.step, **stats, "seconds": round(seconds, 1)})
        self.epoch = epoch + 1

    def improved(self, value: float, lower_is_better: bool) -> bool:
        """Record the epoch just ended as best if ``value`` beats the best so far."""
        better = self.best_value is None or (value < self.best_value if lower_is_better else value > self.best_value)
        if better:
            self.best_value, self.best_epoch = value, self.epoch - 1
        return better


def _checkpoint_dirs(output_dir: Path) -> list[Path]:
    return sorted((output_dir / "checkpoints").glob("epoch_*"))


def _best_file(output_dir: Path, epoch: int) -> Path:
    return output_dir / "checkpoints" / f"best_epoch_{epoch + 1:03d}.safetensors"


def check_output_dir(config: TrainConfig) -> None:
    """Refuse, before any work, to start a run that would clobber or misread another."""
    output_dir = Path(config.output_dir)
    if config.resume and config.overwrite:
        raise UsageError("--resume and --overwrite contradict each other: choose one")
    if output_dir.exists() and not output_dir.is_dir():
        raise UsageError(f"--output-dir {output_dir} is a file: give a folder")
    if config.resume:
        if not _checkpoint_dirs(output_dir):
            raise UsageError(f"nothing to resume in {output_dir}: it has no checkpoints/epoch_*; run without --resume")
        _check_same_run(config, output_dir)
    elif output_dir.exists() and any(output_dir.iterdir()) and not config.overwrite:
        raise UsageError(
            f"output folder {output_dir} holds another run: pass --resume to continue it, "
            "--overwrite to replace it, or choose another --output-dir"
        )


def prepare_output_dir(config: TrainConfig, accelerator: Accelerator) -> Path:
    """Empty (with --overwrite) and create the output folder once the run is known to start."""
    output_dir = Path(config.output_dir)
    if not config.resume:
        accelerator.wait_for_everyone()  # every process has checked before the main one deletes
        if accelerator.is_main_process:
            shutil.rmtree(output_dir, ignore_errors=True)
            output_dir.mkdir(parents=True)
            save_config(config, output_dir / "training_config.json")
    accelerator.wait_for_everyone()
    return output_dir


def _check_same_run(config: TrainConfig, output_dir: Path) -> None:
    saved = json.loads((output_dir / "training_config.json").read_text())
    changed = [
        f"{key}: {saved.get(key)!r} -> {value!r}"
        for key, value in dataclasses.asdict(config).items()
        if key not in RUN_CONTROL and saved.get(key) != value
    ]
    if changed:
        raise UsageError(
            f"--resume with settings that differ from the run in {config.output_dir} ({'; '.join(changed)}): "
            "resume with the same settings, or start a new run in another --output-dir"
        )


def save(accelerator: Accelerator, output_dir: Path, config: TrainConfig, state: TrainState) -> None:
    """Checkpoint after an epoch: written under a temporary name, then renamed, so a job
    killed mid-save leaves the previous checkpoint intact. Only the newest is kept."""
    root = output_dir / "checkpoints"
    final, partial = root / f"epoch_{state.epoch:03d}", root / f".partial_epoch_{state.epoch:03d}"
    if accelerator.is_main_process:
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))  # every rank writes its own RNG state into it...
    accelerator.wait_for_everyone()  # ...before the main process renames it
    if accelerator.is_main_process:
        save_config(config, partial / "training_config.json")
        if final.exists():
            shutil.rmtree(final)
        partial.rename(final)
        for old in _checkpoint_dirs(output_dir)[:-1]:
            shutil.rmtree(old)
        for stale in root.glob("best_epoch_*.safetensors"):
            if stale != _best_file(output_dir, state.best_epoch):
                stale.unlink()
    accelerator.wait_for_everyone()


def load_latest(accelerator: Accelerator, output_dir: Path) -> None:
    latest = _checkpoint_dirs(output_dir)[-1]
    accelerator.load_state(str(latest))
    accelerator.print(f"resumed from {latest}")


def save_best_weights(accelerator: Accelerator, model, output_dir: Path, state: TrainState) -> None:
    if accelerator.is_main_process:
        weights = {k: v.contiguous() for k, v in accelerator.unwrap_model(model).state_dict().items()}
        (output_dir / "checkpoints").mkdir(exist_ok=True)
        save_file(weights, _best_file(output_dir, state.best_epoch))
    accelerator.wait_for_everyone()


def load_best_weights(accelerator: Accelerator, model, output_dir: Path, state: TrainState) -> None:
    accelerator.wait_for_everyone()
    weights = load_file(_best_file(output_dir, state.best_epoch))  # load_state_dict copies to the device
    accelerator.unwrap_model(model).load_state_dict(weights)


def check_replicas_agree(accelerator: Accelerator, model) -> None:
    """Under DDP every process must end with the same weights; catch it if they do not."""
    if accelerator.num_processes == 1:
        return
    checksum = torch.stack([p.detach().double().sum() for p in accelerator.unwrap_model(model).parameters()]).sum()
    sums = accelerator.gather(checksum.reshape(1))
    if not torch.equal(sums, sums[:1].expand_as(sums)):
        raise RuntimeError(f"model replicas disagree after training (checksums {sums.tolist()})")
