"""fit(): the one training loop every model family uses.

It writes no files and imports no MLflow: logging, pruning and progress reach it through
the `on_epoch_end` callback, so the core trains anywhere torch runs.

Fast by design: the data lives as tensors on the device, batches are slices of a shuffled
index (no per-sample collation), and metrics accumulate on the device and are read back
once per epoch.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from modelyard.config import Hyperparams, Problem, TaskSettings
from modelyard.evaluation import lower_is_better
from modelyard.features.augment import ImageAugmenter

EpochCallback = Callable[[int, dict[str, float]], None]
EVAL_BATCH = 8192


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass(frozen=True)
class FitOptions:
    """How to train, apart from the hyperparameters being tuned."""

    problem: Problem
    monitor: str
    max_epochs: int
    patience: int
    grad_clip: float | None = 1.0
    loss: str = "auto"
    seed: int = 0
    device: str = "auto"
    target_scale: float = 1.0  # regression: multiplies val_rmse / val_mae back to target units

    @classmethod
    def for_task(
        cls, task: TaskSettings, *, max_epochs: int, patience: int, seed: int, device: str, target_scale: float = 1.0
    ) -> FitOptions:
        """The options a task's settings imply (tuning and training differ only in the epochs)."""
        return cls(
            problem=task.problem,
            monitor=task.monitor,
            max_epochs=max_epochs,
            patience=patience,
            grad_clip=task.train.grad_clip,
            loss=task.loss,
            seed=seed,
            device=device,
            target_scale=target_scale,
        )


@dataclass
class FitResult:
    """The best epoch (its weights are loaded back into the model) and every epoch's metrics."""

    best_epoch: int
    best_metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)


def resolve_device(name: str) -> torch.device:
    """`auto` is CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but no CUDA GPU is available; use device: auto")
    return torch.device(name)


def loss_function(problem: Problem, loss: str = "auto") -> nn.Module:
    """The training loss that matches the output layer: logits for classification."""
    if problem == "binary":
        return nn.BCEWithLogitsLoss()
    if problem == "multiclass":
        return nn.CrossEntropyLoss()
    return {"auto": nn.MSELoss, "mse": nn.MSELoss, "mae": nn.L1Loss, "huber": nn.HuberLoss}[loss]()


def make_optimizer(model: nn.Module, hparams: Hyperparams) -> torch.optim.Optimizer:
    params = model.parameters()
    if hparams.optimizer == "sgd":
        return torch.optim.SGD(params, lr=hparams.lr, momentum=hparams.momentum, weight_decay=hparams.weight_decay)
    optimizer = torch.optim.AdamW if hparams.optimizer == "adamw" else torch.optim.Adam
    return optimizer(params, lr=hparams.lr, weight_decay=hparams.weight_decay)


def as_target(y: np.ndarray, problem: Problem, device: torch.device) -> torch.Tensor:
    dtype = torch.long if problem == "multiclass" else torch.float32
    return torch.as_tensor(np.asarray(y), dtype=dtype, device=device)


def _autocast(device: torch.device) -> tuple[contextlib.AbstractContextManager, torch.amp.GradScaler | None]:
    """Mixed precision on CUDA (bf16 where supported, else fp16 with a grad scaler)."""
    if device.type != "cuda":
        return contextlib.nullcontext(), None
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return torch.autocast("cuda", dtype=dtype), scaler


def _output(logits: torch.Tensor, problem: Problem) -> torch.Tensor:
    return logits if problem == "multiclass" else logits.squeeze(-1)


def fit(
    model: nn.Module,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    hparams: Hyperparams,
    options: FitOptions,
    on_epoch_end: EpochCallback | None = None,
) -> FitResult:
    """Train with early stopping on `options.monitor`; the best epoch's weights are kept.

    `on_epoch_end(epoch, metrics)` runs after each epoch; an exception it raises (such as
    optuna.TrialPruned) stops training and propagates.
    """
    device = resolve_device(options.device)
    torch.manual_seed(options.seed)
    model.to(device)
    if device.type == "cuda" and np.ndim(train[0]) == 4:
        model.to(memory_format=torch.channels_last)  # faster convolutions on tensor cores
    x_train = torch.as_tensor(train[0], dtype=torch.float32, device=device)
    augment = None  # image batches only; validation images are never augmented
    if x_train.dim() == 4 and (hparams.max_shift or hparams.max_degrees or hparams.flip):
        augment = ImageAugmenter(hparams.max_shift, hparams.max_degrees, hparams.flip)
    y_train = as_target(train[1], options.problem, device)
    x_val = torch.as_tensor(val[0], dtype=torch.float32, device=device)
    y_val = as_target(val[1], options.problem, device)
    criterion = loss_function(options.problem, options.loss)
    optimizer = make_optimizer(model, hparams)
    autocast, scaler = _autocast(device)
    generator = torch.Generator(device=device).manual_seed(options.seed)
    linear_weights = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
    n_rows, batch_size = len(x_train), hparams.batch_size
    # A trailing batch of one row would break batch norm; it is left out of that epoch.
    stop = n_rows - 1 if n_rows % batch_size == 1 and n_rows > 1 else n_rows

    minimize = lower_is_better(options.monitor)
    best_value, best_epoch, best_state = math.inf, -1, None
    history: list[dict[str, float]] = []
    for epoch in range(options.max_epochs):
        model.train()
        order = torch.randperm(n_rows, device=device, generator=generator)
        loss_sum = torch.zeros((), device=device)
        for start in range(0, stop, batch_size):
            index = order[start : start + batch_size]
            inputs = x_train[index] if augment is None else augment(x_train[index], generator)
            with autocast:
                loss = criterion(_output(model(inputs), options.problem), y_train[index])
                if hparams.l1 > 0:
                    loss = loss + hparams.l1 * sum(w.abs().sum() for w in linear_weights)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            if options.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), options.grad_clip)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            loss_sum += loss.detach().float() * len(index)
        metrics = {"train_loss": loss_sum.item() / stop}
        if not math.isfinite(metrics["train_loss"]):
            raise TrainingDiverged(
                f"training loss became {metrics['train_loss']} at epoch {epoch}; lower the learning rate"
            )
        metrics.update(validation_metrics(model, x_val, y_val, criterion, options))
        history.append(metrics)
        value = metrics[options.monitor] if minimize else -metrics[options.monitor]
        if value < best_value:
            best_value, best_epoch = value, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if on_epoch_end is not None:
            on_epoch_end(epoch, metrics)
        if epoch - best_epoch >= options.patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return FitResult(best_epoch=best_epoch, best_metrics=history[best_epoch], history=history)


def eval_batch(shape: tuple[int, ...]) -> int:
    """Rows per evaluation batch: EVAL_BATCH for feature vectors, fewer for images and
    sequences, whose activations are far larger per row."""
    return EVAL_BATCH if len(shape) <= 2 else 512


@torch.no_grad()
def validation_metrics(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, criterion: nn.Module, options: FitOptions
) -> dict[str, float]:
    """val_loss plus val_accuracy (classification) or val_rmse / val_mae (regression)."""
    model.eval()
    loss_sum = torch.zeros((), device=x.device)
    hits = torch.zeros((), device=x.device)
    abs_sum = torch.zeros((), device=x.device)
    sq_sum = torch.zeros((), device=x.device)
    step = eval_batch(x.shape)
    for start in range(0, len(x), step):
        out = _output(model(x[start : start + step]).float(), options.problem)
        target = y[start : start + step]
        loss_sum += criterion(out, target) * len(target)
        if options.problem == "binary":
            hits += ((out > 0).float() == target).sum()
        elif options.problem == "multiclass":
            hits += (out.argmax(dim=1) == target).sum()
        else:
            abs_sum += (out - target).abs().sum()
            sq_sum += ((out - target) ** 2).sum()
    n_rows = len(x)
    if options.problem == "regression":
        loss, abs_total, sq_total = torch.stack([loss_sum, abs_sum, sq_sum]).tolist()
        scale = options.target_scale
        return {
            "val_loss": loss / n_rows,
            "val_rmse": math.sqrt(sq_total / n_rows) * scale,
            "val_mae": abs_total / n_rows * scale,
        }
    loss, hit_total = torch.stack([loss_sum, hits]).tolist()
    return {"val_loss": loss / n_rows, "val_accuracy": hit_total / n_rows}


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray, problem: Problem) -> np.ndarray:
    """Probabilities (positive class for binary, one column per class for multiclass) or values."""
    model.eval()
    device = next(model.parameters()).device
    outputs = []
    step = eval_batch(np.shape(x))
    for start in range(0, max(len(x), 1), step):  # one pass even for no rows keeps the shape
        batch = torch.as_tensor(x[start : start + step], dtype=torch.float32, device=device)
        out = _output(model(batch).float(), problem)
        if problem == "binary":
            out = torch.sigmoid(out)
        elif problem == "multiclass":
            out = torch.softmax(out, dim=1)
        outputs.append(out.cpu().numpy())
    return np.concatenate(outputs)
