"""Evaluation: accuracy over the test-time views a config asks for, and a finished run's
weights scored again with other test-time settings (`labkit eval`)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checkpoint import CheckpointError, evaluated_weights, load_checkpoint
from .config import EXECUTION_FIELDS, ConfigError, TrainConfig
from .data import Dataset
from .model import build_model
from .step import autocast, autocast_dtype, device_name, prep, resolve_device


@torch.no_grad()
def _tta_logits(model: nn.Module, x: Tensor, cfg: TrainConfig) -> Tensor:
    """Logits averaged over the test-time views asked for: the image and its mirror
    (tta_flip); with tta_translate=p, half of it from two copies shifted by p pixels up-left
    and down-right (reflect-padded), each with its mirror too when tta_flip."""

    def views(v: Tensor) -> Tensor:
        out = model(v).float()
        return (out + model(v.flip(3)).float()) / 2 if cfg.tta_flip else out

    out = views(x)
    if cfg.tta_translate:
        p, (h, w) = cfg.tta_translate, x.shape[-2:]
        padded = F.pad(x, (p, p, p, p), mode="reflect")
        shifted = (views(padded[:, :, :h, :w]) + views(padded[:, :, 2 * p : 2 * p + h, 2 * p : 2 * p + w])) / 2
        out = (out + shifted) / 2
    return out


def evaluate(model: nn.Module, x_u8: Tensor, y: Tensor, cfg: TrainConfig, batch_size: int = 1000,
             amp_dtype: torch.dtype | None = None) -> tuple[float, float]:
    """Accuracy and mean cross-entropy (of the model's output) on uint8 images."""
    if len(y) == 0:
        return float("nan"), float("nan")
    was_training = model.training
    model.eval()
    correct = torch.zeros((), device=x_u8.device, dtype=torch.long)
    loss = torch.zeros((), device=x_u8.device, dtype=torch.float32)
    for i in range(0, len(y), batch_size):
        xb, yb = prep(x_u8[i : i + batch_size], cfg), y[i : i + batch_size]
        try:
            with autocast(x_u8.device, amp_dtype):
                out = _tta_logits(model, xb, cfg)
        except torch.cuda.OutOfMemoryError:
            raise torch.cuda.OutOfMemoryError(
                f"CUDA out of memory in evaluation at batch size {batch_size} (lays={list(cfg.lays)}, "
                f"width={cfg.width}); free the GPU or evaluate in smaller batches"
            ) from None
        loss += F.cross_entropy(out, yb, reduction="sum")
        correct += (out.argmax(1) == yb).sum()
    model.train(was_training)
    return correct.item() / len(y), loss.item() / len(y)


# What evaluation alone decides, and the execution settings it uses: a finished run can be
# evaluated again with other values of these.
EVAL_FIELDS = ("tta_flip", "tta_translate")
EVAL_EXECUTION_FIELDS = ("device", "precision", "channels_last")


def reevaluate(run_cfg: TrainConfig, checkpoint: Path, data: Dataset, **changes) -> dict:
    """Validation and test accuracy of a finished run's weights (those its `select` chose),
    evaluated with other EVAL_FIELDS or EVAL_EXECUTION_FIELDS. Choose between settings on the
    validation numbers: choosing by test accuracy selects on the test set."""
    trained = sorted(k for k in changes if k not in EVAL_FIELDS + EXECUTION_FIELDS)
    if trained:
        raise ConfigError(f"{trained} change(s) what was trained, not how it is evaluated; "
                          f"a run can be evaluated again with other {list(EVAL_FIELDS + EVAL_EXECUTION_FIELDS)}")
    unused = sorted(k for k in changes if k not in EVAL_FIELDS + EVAL_EXECUTION_FIELDS)
    if unused:
        raise ConfigError(f"{unused} change(s) only how a run trains (its training step); evaluation does not use them: "
                          f"leave them out (it takes {list(EVAL_FIELDS + EVAL_EXECUTION_FIELDS)})")
    cfg = run_cfg.replace(**changes)
    device = resolve_device(cfg.device)
    state = load_checkpoint(checkpoint, map_location=device)
    if int(state.get("epoch", -1)) + 1 != run_cfg.epochs:
        raise CheckpointError(f"{checkpoint}: from epoch {int(state.get('epoch', -1)) + 1} of {run_cfg.epochs}; the run is not finished")
    model = build_model(cfg).to(device)
    if cfg.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    model.load_state_dict(evaluated_weights(state, run_cfg))
    amp = autocast_dtype(cfg, device)
    d = data.to(device)
    val_acc, val_loss = evaluate(model, d.val_x, d.val_y, cfg, amp_dtype=amp)
    test_acc, test_loss = evaluate(model, d.test_x, d.test_y, cfg, amp_dtype=amp)
    return {"settings": {k: getattr(cfg, k) for k in EVAL_FIELDS}, "val_acc": val_acc, "val_loss": val_loss,
            "test_acc": test_acc, "test_loss": test_loss, "precision": "bf16" if amp else "fp32", "device": device_name(device)}
