"""fit(): the one training loop every model family uses.

It writes no files and imports no MLflow: logging, pruning and progress reach it through
the `on_epoch_end` callback, so the core trains anywhere torch runs.

The recipe, chosen to converge on 30 rows and on 30,000 alike:
- the epoch budget, when not given, is sized from the data: enough epochs for about
  `AUTO_STEPS` optimizer steps at the run's batch size (small data gets more epochs);
- the learning rate warms up linearly over the first `warmup` share of the steps, then
  follows a cosine down to zero at the end of the budget;
- early stopping waits for `patience` epochs, and at least `min_patience_steps` optimizer
  steps (but no more than a tenth of the epoch budget), without an improvement of either
  the monitored metric or the validation loss, counted from the end of the warm-up and
  never before `min_epochs`: a flat validation accuracy (a majority-class start) does not
  stop a run whose loss still falls, nor does the flat start of a small-data run whose
  learning rate is still warming up;
- a classifier's output layer starts at the training classes' shares (`start_at_prior`);
- the best epoch is the best monitored value, ties broken by the lower validation loss
  (a classifier validated on fewer than 100 samples outside its most common class: the
  lowest validation loss); its weights are restored;
- a linear model with a smooth convex loss has no epochs, schedule or early stopping:
  `solve_convex` solves its L2-penalised loss exactly, as scikit-learn's
  LogisticRegression and Ridge do.

Fast by design: the data lives as tensors on the device, batches are slices of a shuffled
index (no per-sample collation), and metrics accumulate on the device and are read back
once per epoch.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from modelyard.config import Hyperparams, Problem, TaskSettings, metric_samples, selection_metric
from modelyard.errors import ModelyardError
from modelyard.evaluation import lower_is_better
from modelyard.features.augment import ImageAugmenter
from modelyard.losses import loss_function
from modelyard.optimizers import FusedOptimizer

EpochCallback = Callable[[int, dict[str, float]], None]
EVAL_BATCH = 8192
# Auto budgets, in optimizer steps: (steps, fewest epochs, most epochs).
AUTO_TRAIN = (3000, 20, 500)
AUTO_TUNE = (1500, 10, 250)
PATIENCE_STEPS = 300  # early stopping waits at least this many optimizer steps


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass(frozen=True)
class FitOptions:
    """How to train, apart from the hyperparameters being tuned."""

    problem: Problem
    monitor: str
    max_epochs: int | None  # None: sized from the data (`auto_budget`)
    patience: int
    grad_clip: float | None = 1.0
    seed: int = 0
    device: str = "auto"
    target_scale: float = 1.0  # regression: multiplies val_rmse / val_mae back to target units
    target_offset: float = 0.0  # regression: added after the scale to give target units
    min_epochs: int = 0
    min_patience_steps: int = 0
    schedule: str = "cosine"  # cosine (after a linear warm-up) | constant
    warmup: float = 0.05  # share of the steps spent warming up
    auto_budget: tuple[int, int, int] = AUTO_TRAIN

    @classmethod
    def for_task(
        cls,
        task: TaskSettings,
        *,
        max_epochs: int | None,
        patience: int,
        seed: int,
        device: str,
        target_scale: float = 1.0,
        target_offset: float = 0.0,
        tuning: bool = False,
    ) -> FitOptions:
        """The options a task's settings imply; a tuning trial differs in its budget."""
        train = task.train
        return cls(
            problem=task.problem,
            monitor=task.monitor,
            max_epochs=max_epochs,
            patience=patience,
            grad_clip=train.grad_clip,
            seed=seed,
            device=device,
            target_scale=target_scale,
            target_offset=target_offset,
            min_epochs=train.min_epochs,
            min_patience_steps=PATIENCE_STEPS,
            schedule=train.schedule,
            warmup=train.warmup,
            auto_budget=AUTO_TUNE if tuning else AUTO_TRAIN,
        )

    def selection(self, y_val: np.ndarray) -> str:
        """What the best epoch, and the final model against the best trial, are chosen on:
        the monitored metric (ties broken by the lower loss), or the validation loss for a
        classifier with fewer than MIN_METRIC_SAMPLES samples that can tell models apart."""
        return selection_metric(self.problem, self.monitor, metric_samples(self.problem, y_val))

    def epochs_for(self, n_rows: int, batch_size: int) -> int:
        """The epoch budget: `max_epochs`, or enough epochs for the auto budget's steps."""
        return epoch_budget(self.max_epochs, self.auto_budget, n_rows, batch_size)


def epoch_budget(max_epochs: int | None, auto: tuple[int, int, int], n_rows: int, batch_size: int) -> int:
    """`max_epochs`, or the epochs that give the `auto` budget's (steps, fewest, most) steps."""
    if max_epochs is not None:
        return max_epochs
    steps, fewest, most = auto
    return min(most, max(fewest, math.ceil(steps / steps_per_epoch(n_rows, batch_size))))


def steps_per_epoch(n_rows: int, batch_size: int) -> int:
    """Optimizer steps in one epoch (a trailing batch of one row is skipped, see `fit`)."""
    usable = n_rows - 1 if n_rows % batch_size == 1 and n_rows > 1 else n_rows
    return max(1, math.ceil(usable / batch_size))


def improves(metrics: dict[str, float], best: dict[str, float] | None, monitor: str) -> bool:
    """Whether `metrics` beat `best` on the monitored value, ties broken by the lower val_loss."""
    if best is None:
        return True
    sign = 1.0 if lower_is_better(monitor) else -1.0
    value, best_value = sign * metrics[monitor], sign * best[monitor]
    if value != best_value:
        return value < best_value
    return metrics.get("val_loss", math.inf) < best.get("val_loss", math.inf)


def lr_factor(total_steps: int, schedule: str, warmup: float) -> Callable[[int], float]:
    """The learning rate's factor at each optimizer step (from 0): a linear warm-up, then a
    cosine to zero (or constant)."""
    warmup_steps = math.floor(total_steps * warmup) if schedule == "cosine" else 0

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        if schedule != "cosine":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


@dataclass
class FitResult:
    """The best epoch (its weights are loaded back into the model) and every epoch's metrics.

    Epochs are numbered from 1, as the console, MLflow's steps and train.json show them:
    `history[best_epoch - 1]` holds the best epoch's metrics."""

    best_epoch: int
    best_metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass(frozen=True)
class EpochPlan:
    """How one network's training run is laid out, from its data size and batch size."""

    rows: int  # rows an epoch trains on: a trailing batch of one row is left out (it breaks batch norm)
    steps: int  # optimizer steps an epoch
    max_epochs: int
    patience: int  # epochs without a gain before training stops
    warm_up_end: int  # the epoch the learning rate's warm-up ends

    @classmethod
    def of(cls, n_rows: int, batch_size: int, options: FitOptions) -> EpochPlan:
        n_steps = steps_per_epoch(n_rows, batch_size)
        max_epochs = options.epochs_for(n_rows, batch_size)
        return cls(
            rows=n_rows - 1 if n_rows % batch_size == 1 and n_rows > 1 else n_rows,
            steps=n_steps,
            max_epochs=max_epochs,
            # The steps floor gives small data (a few steps an epoch) time to move, within a
            # tenth of the budget: 300 steps at 2 steps an epoch would otherwise wait 150 epochs.
            patience=max(options.patience, min(math.ceil(options.min_patience_steps / n_steps), max_epochs // 10)),
            # Patience counts from the end of the warm-up at the latest: its tiny learning
            # rates barely move a network, so a flat start there is no sign of convergence.
            warm_up_end=math.ceil(max_epochs * options.warmup) if options.schedule == "cosine" else 0,
        )


@dataclass
class EarlyStopping:
    """A network's epochs so far, its best one (on `selection`, ties to the lower val_loss)
    with its weights, and when to stop: `patience` epochs with neither the monitored value
    nor the validation loss improving, after at least `min_epochs`."""

    selection: str
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    last_gain: int = 0  # the last epoch that improved the monitored value or the validation loss
    best_loss: float = math.inf
    best_state: dict[str, torch.Tensor] | None = None

    def record(self, epoch: int, metrics: dict[str, float], state: Callable[[], dict]) -> None:
        """Add an epoch's metrics (epochs from 0); keep the weights (`state()`) when it is the best so far."""
        self.history.append(metrics)
        if improves(metrics, self.history[self.best_epoch] if self.best_epoch >= 0 else None, self.selection):
            self.best_epoch = self.last_gain = epoch
            self.best_state = state()
        if metrics["val_loss"] < self.best_loss:
            self.best_loss, self.last_gain = metrics["val_loss"], epoch

    def done(self, epoch: int, plan: EpochPlan, min_epochs: int) -> bool:
        return epoch - max(self.last_gain, plan.warm_up_end) >= plan.patience and epoch + 1 >= min_epochs

    def result(self, model: nn.Module) -> FitResult:
        """The best epoch's weights loaded into `model`, and the history."""
        if self.best_state is not None:
            model.load_state_dict(self.best_state)
        model.eval()
        return FitResult(self.best_epoch + 1, self.history[self.best_epoch], self.history)


# glibc's mallopt options, and what `keep_freed_memory` sets them to.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 << 20  # glibc's own ceiling for the threshold it adapts by itself
TRIM_THRESHOLD = 256 << 20


@functools.cache
def keep_freed_memory() -> bool:
    """Have glibc's malloc keep the memory a training step frees, for the next step to reuse;
    whether it could (False off glibc). Called by `fit` and `fused.fit_fused`, once a process.

    A CPU step allocates its activations and gradients anew, blocks of 0.1-10 MB. By default
    glibc maps a block that large straight from the kernel and unmaps it when freed, and it
    returns the top of its heap once more than twice that lies free, so the next step's
    block arrives as fresh pages: one page fault each, 1.4 us here, 293 of them for a
    1.2 MB tensor (an allocation and fill took 430-480 us, against 16 us for reused
    memory). A tune of Adult's 12 trials faulted 61,000-299,000 times, 19,000-24,000 with
    this, and paired fits of its trials ran 3-7 % faster (bench/README.md "Freed memory
    kept for the next step"). With blocks of up to MMAP_THRESHOLD taken from the heap,
    and up to TRIM_THRESHOLD of freed memory kept at the heap's top, the pages stay mapped:
    the price is that much memory held while the process lives (what PyTorch's own CPU
    tuning guide gets by preloading jemalloc or tcmalloc)."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def resolve_device(name: str) -> torch.device:
    """`auto` is CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but no CUDA GPU is available; use device: auto")
    return torch.device(name)


def criterion(hparams: Hyperparams, options: FitOptions) -> nn.Module:
    """The run's loss (`hparams.loss`, see `modelyard.losses`)."""
    return loss_function(
        options.problem, hparams.loss, hparams.label_smoothing, options.target_offset, options.target_scale
    )


def start_at_prior(model: nn.Module, y_train: np.ndarray, problem: Problem) -> None:
    """Set the output layer's bias so the untrained network predicts the training classes'
    shares rather than equal odds: their log-odds (binary) or log shares (multiclass), with
    one pseudo-count per class (Karpathy, "A recipe for training neural networks", 2019;
    Lin et al., "Focal loss", 2017). On balanced classes this changes nothing; with 3 %
    positives a network no longer spends its first hundreds of steps learning the base rate,
    which a linear model at a small learning rate may not finish within its budget. A
    regression's target is already centred (`target_offset`).

    Every network ends in an nn.Linear: the last one registered is the output layer."""
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if problem == "regression" or not layers or layers[-1].bias is None or len(y_train) == 0:
        return
    head, labels = layers[-1], np.asarray(y_train)
    if problem == "binary":
        share = (float(labels.sum()) + 1.0) / (len(labels) + 2.0)
        prior = np.array([math.log(share / (1.0 - share))])
    else:
        counts = np.bincount(labels.astype(int), minlength=head.out_features)[: head.out_features] + 1.0
        prior = np.log(counts / counts.sum())
    with torch.no_grad():
        head.bias.copy_(torch.as_tensor(prior, dtype=head.bias.dtype))


def make_optimizer(model: nn.Module, hparams: Hyperparams) -> FusedOptimizer:
    """The optimizer, stepped by PyTorch's fused kernels (`optimizers.FusedOptimizer`: one
    kernel over all the weights, on the CPU as on a GPU): torch's default form's per-tensor
    loop cost 6-20 % of a small MLP's training step on the CPU (scratch timing; 4 x 293
    units at batch 256: 3.2 ms a step against 3.7 ms)."""
    return FusedOptimizer(model.parameters(), hparams.optimizer, hparams.weight_decay, hparams.momentum)


def clip_gradients(parameters: list[nn.Parameter], max_norm: float) -> None:
    """Scale the gradients so that their joint L2 norm is at most `max_norm`: what
    `nn.utils.clip_grad_norm_` does, with the same result to the bit. On a CPU the same
    kernels are called directly, and the gradients are scaled only when the norm is over
    the limit (torch multiplies every gradient by at most 1.0 on each step, so as not to
    wait for a GPU, and groups the tensors by device and dtype in Python): 310 us a step
    against 110-145 us for a 4 x 293 MLP, where torch's took 7-12 % of a small network's
    step; calling the kernels without the grouping saved 7-17 us more (scratch timing)."""
    if parameters[0].device.type != "cpu":
        nn.utils.clip_grad_norm_(parameters, max_norm)
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    coefficient = max_norm / (torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))) + 1e-6)
    if coefficient < 1.0:
        torch._foreach_mul_(grads, coefficient)


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


def take_batch(
    x: torch.Tensor, y: torch.Tensor, index: torch.Tensor, augment: ImageAugmenter | None, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The inputs and targets of rows `index`, images augmented. `index_select` takes a
    quarter of the time `x[index]` takes for a batch of 256 rows on a CPU (7 us against 25)."""
    inputs = x.index_select(0, index)
    return (inputs if augment is None else augment(inputs, generator)), y.index_select(0, index)


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
    """Train with the recipe in the module docstring; the best epoch's weights are kept.

    `on_epoch_end(epoch, metrics)` runs after each epoch; an exception it raises (such as
    optuna.TrialPruned) stops training and propagates.
    """
    keep_freed_memory()
    device = resolve_device(options.device)
    torch.manual_seed(options.seed)
    model.to(device)
    if device.type == "cuda" and np.ndim(train[0]) == 4:
        model.to(memory_format=torch.channels_last)  # faster convolutions on tensor cores
    x_train = torch.as_tensor(train[0], dtype=torch.float32, device=device)
    if hasattr(model, "prepare"):  # what a network learns from the data before training
        model.prepare(x_train)
    start_at_prior(model, train[1], options.problem)
    augment = None  # image batches only; validation images are never augmented
    if x_train.dim() == 4 and (hparams.max_shift or hparams.max_degrees or hparams.flip):
        augment = ImageAugmenter(hparams.max_shift, hparams.max_degrees, hparams.flip)
    y_train = as_target(train[1], options.problem, device)
    x_val = torch.as_tensor(val[0], dtype=torch.float32, device=device)
    y_val = as_target(val[1], options.problem, device)
    loss_fn = criterion(hparams, options)
    if solves_exactly(model, hparams):
        return solve_convex(model, (x_train, y_train), (x_val, y_val), loss_fn, hparams, options, on_epoch_end)
    optimizer = make_optimizer(model, hparams)
    autocast, scaler = _autocast(device)
    generator = torch.Generator(device=device).manual_seed(options.seed)
    linear_weights = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
    parameters = list(model.parameters())
    batch_size = hparams.batch_size
    plan = EpochPlan.of(len(x_train), batch_size, options)
    factor = lr_factor(plan.max_epochs * plan.steps, options.schedule, options.warmup)
    step = 0
    tracker = EarlyStopping(options.selection(val[1]))
    for epoch in range(plan.max_epochs):
        model.train()
        order = torch.randperm(len(x_train), device=device, generator=generator)
        loss_sum = torch.zeros((), device=device)
        for start in range(0, plan.rows, batch_size):
            index = order[start : start + batch_size]
            inputs, target = take_batch(x_train, y_train, index, augment, generator)
            with autocast:
                loss = loss_fn(_output(model(inputs), options.problem), target)
                if hparams.l1 > 0:
                    loss = loss + hparams.l1 * sum(w.abs().sum() for w in linear_weights)
            for parameter in parameters:  # optimizer.zero_grad(set_to_none=True), without its 40 us of wrapping
                parameter.grad = None
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            if options.grad_clip:
                clip_gradients(parameters, options.grad_clip)
            lr = hparams.lr * factor(step)  # what LambdaLR would set: the base rate times the factor
            if scaler is not None:
                scaler.step(optimizer, lr)
                scaler.update()
            else:
                optimizer.step(lr)
            step += 1
            loss_sum.add_(loss.detach(), alpha=len(index))
        metrics = {"train_loss": loss_sum.item() / plan.rows}
        if not math.isfinite(metrics["train_loss"]):
            raise TrainingDiverged(
                f"training loss became {metrics['train_loss']} at epoch {epoch + 1}; lower the learning rate"
            )
        metrics.update(validation_metrics(model, x_val, y_val, loss_fn, options))
        tracker.record(epoch, metrics, lambda: {k: v.detach().clone() for k, v in model.state_dict().items()})
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, metrics)  # epochs are numbered from 1 wherever a user sees them
        if tracker.done(epoch, plan, options.min_epochs):
            break
    return tracker.result(model)


# Smooth convex losses: with them, a linear model's training is a convex problem.
CONVEX_LOSSES = ("auto", "mse", "huber", "logistic", "cross_entropy", "kl")
LBFGS_ROUND = 20  # L-BFGS iterations per round; a round is one "epoch" of the history
LBFGS_ROUNDS = 50
LBFGS_TOLERANCE = 1e-7  # converged when a round lowers the objective by less than this share


def solves_exactly(model: nn.Module, hparams: Hyperparams) -> bool:
    """Whether `fit` solves this model's training exactly (`solve_convex`): a linear model
    with a smooth convex loss and no L1 penalty."""
    return bool(getattr(model, "linear", False)) and hparams.loss in CONVEX_LOSSES and hparams.l1 == 0


def solve_convex(
    model: nn.Module,
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    loss_fn: nn.Module,
    hparams: Hyperparams,
    options: FitOptions,
    on_epoch_end: EpochCallback | None = None,
) -> FitResult:
    """Fit a linear model to the optimum of its penalised training loss, as scikit-learn's
    LogisticRegression and Ridge do: full-batch L-BFGS on the mean loss plus
    weight_decay / 2 * ||W||^2 (the bias is not penalised).

    Mini-batch AdamW with early stopping is a poor solver for a convex problem: its noise
    and a stop on a few dozen noisy validation rows leave the model short of the optimum
    (on Carseats, 1-3 % above ridge's error in a scratch comparison). Here the weight decay alone regularises, and
    the study tunes it as it would a ridge's alpha; learning rate, batch size and schedule
    play no part. Each round of LBFGS_ROUND iterations is one entry of the history (logged
    and offered to the pruner as an epoch); the last round, the optimum, is kept.
    """
    x_train, y_train = train
    weights = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
    optimizer = torch.optim.LBFGS(
        model.parameters(), lr=1.0, max_iter=LBFGS_ROUND, history_size=20, line_search_fn="strong_wolfe"
    )

    def objective() -> tuple[torch.Tensor, torch.Tensor]:
        loss = loss_fn(_output(model(x_train).float(), options.problem), y_train)
        return loss, loss + 0.5 * hparams.weight_decay * sum((w**2).sum() for w in weights)

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        penalised = objective()[1]
        penalised.backward()
        return penalised

    history: list[dict[str, float]] = []
    previous = math.inf
    for round_ in range(LBFGS_ROUNDS):
        optimizer.step(closure)
        with torch.no_grad():
            loss, penalised = (value.item() for value in objective())
        if not math.isfinite(penalised):
            raise TrainingDiverged(f"the linear model's loss became {penalised}; check the features for extreme values")
        metrics = {"train_loss": loss, **validation_metrics(model, *val, loss_fn, options)}
        history.append(metrics)
        if on_epoch_end is not None:
            on_epoch_end(round_ + 1, metrics)
        if previous - penalised <= LBFGS_TOLERANCE * max(1.0, abs(penalised)):
            break
        previous = penalised
    model.eval()
    return FitResult(best_epoch=len(history), best_metrics=history[-1], history=history)


CROSS_FIT_FOLDS = 5  # folds of train + validation when the final model cross-fits (at least)

Split = tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def assign_folds(labels: np.ndarray, n_folds: int, problem: Problem, seed: int) -> np.ndarray:
    """Each sample's fold, 0 to `n_folds` - 1: samples dealt round-robin in a seeded random
    order, each class spread evenly over the folds for classification."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(labels), dtype=np.int64)
    if problem == "regression":
        groups = [np.arange(len(labels))]
    else:
        groups = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    start = 0
    for rows in groups:  # round-robin over the folds, continuing where the last class ended
        rows = rng.permutation(rows)
        fold[rows] = (start + np.arange(len(rows))) % n_folds
        start += len(rows)
    return fold


def cross_fit_splits(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    n_members: int,
    problem: Problem,
    seed: int,
) -> list[Split]:
    """(training rows, held-out rows) for each member of a cross-fitted ensemble.

    Train + validation form max(CROSS_FIT_FOLDS, n_members) folds: the validation split is
    fold 0, the training rows are dealt into the others (each class spread evenly over them
    for classification). Member i holds out fold i and trains on all the rest, so every
    member learns from about (k-1)/k of the labelled samples and is early-stopped on
    samples it never saw.
    """
    n_folds = max(CROSS_FIT_FOLDS, n_members)
    fold = 1 + assign_folds(np.asarray(train[1]), n_folds - 1, problem, seed)
    splits = [(train, val)]
    for member in range(1, n_members):
        held = fold == member
        rest = tuple(np.concatenate([part[~held], extra]) for part, extra in zip(train, val, strict=True))
        splits.append((rest, (train[0][held], train[1][held])))
    return splits


def pooled_metrics(parts: list[tuple[dict[str, float], int]]) -> dict[str, float]:
    """Validation metrics over several held-out sets, from each set's metrics and size: as
    if computed on their union (means weighted by size, RMSE through the mean square)."""
    total = sum(n for _, n in parts)
    pooled = {}
    for name in parts[0][0]:
        if name.endswith("rmse"):
            pooled[name] = math.sqrt(sum(m[name] ** 2 * n for m, n in parts) / total)
        else:
            pooled[name] = sum(m[name] * n for m, n in parts) / total
    return pooled


def score(
    model: nn.Module, val: tuple[np.ndarray, np.ndarray], hparams: Hyperparams, options: FitOptions
) -> dict[str, float]:
    """A trained model's validation metrics, as `fit` computes them each epoch."""
    device = resolve_device(options.device)
    model.to(device)
    x = torch.as_tensor(val[0], dtype=torch.float32, device=device)
    y = as_target(val[1], options.problem, device)
    return validation_metrics(model, x, y, criterion(hparams, options), options)


def save_checkpoint(
    path: Path, model: nn.Module | None, metrics: dict[str, float] | None, epoch: int, trial: int
) -> None:
    """A trial's best-epoch weights and validation metrics, written whole or not at all;
    `model` None records that the trial's weights are not on this machine."""
    from modelyard.files import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    state = None if model is None else {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as temporary:
        torch.save({"state_dict": state, "val": metrics, "best_epoch": epoch, "trial": trial}, temporary)


def load_checkpoint(path: Path) -> dict | None:
    """What `save_checkpoint` wrote, or None when there are no weights (or no file)."""
    if not path.is_file():
        return None
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several kinds for a damaged file
        raise ModelyardError(
            f"cannot read the best trial's weights {path}: {type(exc).__name__}: {exc}",
            "run the tune stage again (dvc repro --force tune@<task>)",
        ) from None
    return checkpoint if checkpoint.get("state_dict") is not None else None


def eval_batch(shape: tuple[int, ...]) -> int:
    """Rows per evaluation batch: EVAL_BATCH for feature vectors, fewer for images and
    sequences, whose activations are far larger per row."""
    return EVAL_BATCH if len(shape) <= 2 else 512


@torch.no_grad()
def validation_metrics(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: nn.Module, options: FitOptions
) -> dict[str, float]:
    """val_loss plus val_accuracy (classification) or val_rmse / val_mae (regression)."""
    model.eval()
    step = eval_batch(x.shape)
    return output_metrics(lambda start: model(x[start : start + step]), len(x), step, y, loss_fn, options)


@torch.no_grad()
def output_metrics(
    outputs: Callable[[int], torch.Tensor],
    n_rows: int,
    step: int,
    y: torch.Tensor,
    loss_fn: nn.Module,
    options: FitOptions,
) -> dict[str, float]:
    """`validation_metrics` from a model's outputs on the rows from `start` on, `step` at a
    time (`outputs(start)`); the sums stay on the device until the end."""
    device = y.device
    loss_sum = torch.zeros((), device=device)
    hits = torch.zeros((), device=device)
    abs_sum = torch.zeros((), device=device)
    sq_sum = torch.zeros((), device=device)
    for start in range(0, n_rows, step):
        out = _output(outputs(start).float(), options.problem)
        target = y[start : start + step]
        loss_sum += loss_fn(out, target) * len(target)
        if options.problem == "binary":
            hits += ((out > 0).float() == target).sum()
        elif options.problem == "multiclass":
            hits += (out.argmax(dim=1) == target).sum()
        else:
            abs_sum += (out - target).abs().sum()
            sq_sum += ((out - target) ** 2).sum()
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
