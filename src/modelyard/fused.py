"""Trial fusion: several trials of one network shape trained as one stacked model.

A small network leaves most of a GPU, and on a CPU much of each step's time, to per-step
overhead. `fit_fused` trains K networks of the same shape at once, as PyTorch's "model
ensembling" recipe does (`torch.func.stack_module_state` + `vmap`; HFTA, MLSys 2021, fuses
tuning trials this way): every weight is stacked along a leading member axis, one batched
forward and backward step serves all K, and AdamW updates each member with its own
learning rate and weight decay. What may differ between members (`MEMBER_HPARAMS`): the
learning rate, the weight decay, the dropout rate and the initial weights. What they share:
the batch size, the epoch budget and schedule, and the order of the batches; every trial
of a study shuffles with the study's seed anyway, so each member sees the batches it would
have seen alone.

Each member keeps its own recipe of `training.fit`: its gradient clipped by its own norm,
early stopping on its own validation loss, its best epoch's weights restored, and its own
callback (the trial's pruning and MLflow logging). A member that stops (converged, pruned,
diverged, or its callback raised) leaves the stack and costs no more compute; the others
go on. A fused member's numbers are not bit-identical to the same trial trained alone
(batched kernels sum in another order; dropout draws other masks), but are as
reproducible: the same study runs the same way twice.

`fusion_key` says which networks may fuse: the same layers and shapes, trained by AdamW
without an L1 penalty, not solved exactly (a linear model is solved by L-BFGS), and layers
whose batched form is known to be exact under `vmap` (`FUSABLE`). Anything else trains
alone with `fit`. Mixed precision is not used in a fused step.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Hashable

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from modelyard.config import Hyperparams
from modelyard.features.augment import ImageAugmenter
from modelyard.models.cnn import CNN
from modelyard.models.dropout import Dropout
from modelyard.models.mlp import MLP, PeriodicEmbedding, PiecewiseLinearEmbedding
from modelyard.optimizers import BETAS, EPS
from modelyard.training import (
    EarlyStopping,
    EpochCallback,
    EpochPlan,
    FitOptions,
    FitResult,
    TrainingDiverged,
    _output,
    as_target,
    criterion,
    eval_batch,
    keep_freed_memory,
    lr_factor,
    output_metrics,
    resolve_device,
    solves_exactly,
    start_at_prior,
    take_batch,
)

# Hyperparameters that may differ between the members of one fused model.
MEMBER_HPARAMS = ("lr", "weight_decay", "dropout", "frequency_scale")
# Layers whose batched (vmap) form is exact. Batch norm is: with its running statistics
# stacked like the weights, each member updates its own in place.
FUSABLE: tuple[type[nn.Module], ...] = (
    MLP,
    PeriodicEmbedding,
    PiecewiseLinearEmbedding,
    CNN,
    nn.Sequential,
    nn.Linear,
    nn.Conv2d,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.MaxPool2d,
    nn.AdaptiveAvgPool2d,
    nn.Flatten,
    Dropout,
    nn.Dropout2d,
    nn.ReLU,
    nn.LeakyReLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.GELU,
    nn.ELU,
)


def fusion_key(model: nn.Module, hparams: Hyperparams) -> Hashable | None:
    """What networks must share to train fused (their layers and every weight's shape, and
    the training settings that are not per member), or None when this one trains alone."""
    if hparams.optimizer != "adamw" or hparams.l1 > 0 or solves_exactly(model, hparams):
        return None
    if not all(type(module) in FUSABLE for module in model.modules()):
        return None
    layers = tuple((name, type(module).__name__) for name, module in model.named_modules())
    shapes = tuple((name, tuple(tensor.shape)) for name, tensor in model.state_dict().items())
    settings = hparams.model_dump(exclude=set(MEMBER_HPARAMS))
    return layers, shapes, tuple(sorted((k, repr(v)) for k, v in settings.items()))


class MemberDropout(nn.Module):
    """Dropout whose rate is a buffer, so each member of a stacked model has its own;
    `channels` drops whole channels of an image, as nn.Dropout2d does."""

    def __init__(self, p: float, channels: bool = False) -> None:
        super().__init__()
        self.register_buffer("p", torch.tensor(float(p)))
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        draw = x[(slice(None), slice(None), *([slice(0, 1)] * (x.dim() - 2)))] if self.channels else x
        keep = (torch.rand_like(draw) >= self.p).to(x.dtype)
        return x * keep / (1.0 - self.p)


def _with_member_dropout(model: nn.Module) -> nn.Module:
    """A copy of `model` with each nn.Dropout (nn.Dropout2d) replaced by a MemberDropout of
    the same rate."""
    model = copy.deepcopy(model)
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, (nn.Dropout, nn.Dropout2d)):
                setattr(module, name, MemberDropout(child.p, channels=type(child) is nn.Dropout2d))
    return model


class _Stack:
    """K networks' weights stacked along a leading member axis, with AdamW's state."""

    def __init__(self, models: list[nn.Module], hparams: list[Hyperparams], device: torch.device) -> None:
        converted = [_with_member_dropout(model) for model in models]
        self.params, self.buffers = stack_module_state(converted)
        self.kept_names = set(models[0].state_dict())  # what goes back into a member's own network
        self.base = copy.deepcopy(converted[0]).to("meta")
        self.members = list(range(len(models)))  # which of the original networks each row holds
        self.lr = torch.tensor([h.lr for h in hparams], device=device)
        self.decay = torch.tensor([h.weight_decay for h in hparams], device=device)
        self.exp_avg = {name: torch.zeros_like(p) for name, p in self.params.items()}
        self.exp_avg_sq = {name: torch.zeros_like(p) for name, p in self.params.items()}
        self.steps = 0

        def call(params: dict, buffers: dict, x: torch.Tensor) -> torch.Tensor:
            return functional_call(self.base, (params, buffers), (x,))

        self.forward = vmap(call, in_dims=(0, 0, None), randomness="different")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Every member's output for the same inputs: (members, rows, ...)."""
        return self.forward(self.params, self.buffers, x)

    def train(self, mode: bool = True) -> None:
        self.base.train(mode)

    @torch.no_grad()
    def step(self, factor: float, clip: float | None) -> None:
        """One AdamW step of every member (as `training.fit`'s, after clipping each
        member's gradient to norm `clip` as nn.utils.clip_grad_norm_ does)."""
        grads = {name: p.grad for name, p in self.params.items()}
        if clip:
            norms = torch.stack([g.pow(2).flatten(1).sum(1) for g in grads.values()]).sum(0).sqrt()
            scale = (clip / (norms + 1e-6)).clamp(max=1.0)
            for g in grads.values():
                g.mul_(scale.view(-1, *([1] * (g.dim() - 1))))
        self.steps += 1
        beta1, beta2 = BETAS
        correction1, correction2 = 1 - beta1**self.steps, 1 - beta2**self.steps
        for name, p in self.params.items():
            g, shape = grads[name], (-1, *([1] * (p.dim() - 1)))
            lr = (self.lr * factor).view(shape)
            p.mul_(1 - lr * self.decay.view(shape))
            self.exp_avg[name].lerp_(g, 1 - beta1)
            self.exp_avg_sq[name].mul_(beta2).addcmul_(g, g, value=1 - beta2)
            denom = (self.exp_avg_sq[name].sqrt() / math.sqrt(correction2)).add_(EPS)
            p.sub_(lr / correction1 * self.exp_avg[name] / denom)
            p.grad = None

    def state_of(self, row: int) -> dict[str, torch.Tensor]:
        """A copy of one member's weights, as its own network's state dict."""
        tensors = {**self.params, **self.buffers}
        return {name: tensors[name][row].detach().clone() for name in self.kept_names}

    def keep(self, rows: list[int]) -> None:
        """Drop every member but those at `rows`."""
        index = torch.tensor(rows, dtype=torch.long, device=self.lr.device)
        self.params = {n: p.detach()[index].requires_grad_() for n, p in self.params.items()}
        self.buffers = {n: b[index] for n, b in self.buffers.items()}
        self.exp_avg = {n: t[index] for n, t in self.exp_avg.items()}
        self.exp_avg_sq = {n: t[index] for n, t in self.exp_avg_sq.items()}
        self.lr, self.decay = self.lr[index], self.decay[index]
        self.members = [self.members[row] for row in rows]


def fit_fused(
    models: list[nn.Module],
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    hparams: list[Hyperparams],
    options: FitOptions,
    callbacks: list[EpochCallback | None],
) -> list[FitResult | Exception]:
    """Train `models` (one `fusion_key`) together; per model, its FitResult (its best
    weights loaded back into it) or the exception that stopped it (`TrainingDiverged`, or
    what its callback raised, such as optuna.TrialPruned). An exception that is not an
    Exception (KeyboardInterrupt) stops them all."""
    keep_freed_memory()
    device = resolve_device(options.device)
    torch.manual_seed(options.seed)
    x_train = torch.as_tensor(train[0], dtype=torch.float32, device=device)
    y_train = as_target(train[1], options.problem, device)
    x_val = torch.as_tensor(val[0], dtype=torch.float32, device=device)
    y_val = as_target(val[1], options.problem, device)
    for model in models:
        model.to(device)
        if hasattr(model, "prepare"):
            model.prepare(x_train)
        start_at_prior(model, train[1], options.problem)
    first = hparams[0]
    augment = None
    if x_train.dim() == 4 and (first.max_shift or first.max_degrees or first.flip):
        augment = ImageAugmenter(first.max_shift, first.max_degrees, first.flip)
    stack = _Stack(models, hparams, device)
    loss_fn = criterion(first, options)
    generator = torch.Generator(device=device).manual_seed(options.seed)
    batch_size = first.batch_size
    plan = EpochPlan.of(len(x_train), batch_size, options)
    factor = lr_factor(plan.max_epochs * plan.steps, options.schedule, options.warmup)
    eval_step = eval_batch(tuple(x_val.shape))
    members = [EarlyStopping(options.selection(val[1])) for _ in models]
    outcome: list[FitResult | Exception | None] = [None] * len(models)

    for epoch in range(plan.max_epochs):
        stack.train()
        order = torch.randperm(len(x_train), device=device, generator=generator)
        loss_sums = torch.zeros(len(stack.members), device=device)
        for start in range(0, plan.rows, batch_size):
            index = order[start : start + batch_size]
            inputs, target = take_batch(x_train, y_train, index, augment, generator)
            losses = torch.stack([loss_fn(_output(out, options.problem), target) for out in stack(inputs)])
            losses.sum().backward()
            stack.step(factor(stack.steps), options.grad_clip)
            loss_sums += losses.detach() * len(index)
        train_losses = (loss_sums / plan.rows).tolist()
        stack.train(False)
        with torch.no_grad():
            outputs = torch.cat([stack(x_val[s : s + eval_step]) for s in range(0, len(x_val), eval_step)], dim=1)
        rows = []
        for row, number in enumerate(stack.members):
            member = members[number]
            if not math.isfinite(train_losses[row]):
                outcome[number] = TrainingDiverged(
                    f"training loss became {train_losses[row]} at epoch {epoch + 1}; lower the learning rate"
                )
                continue
            metrics = {"train_loss": train_losses[row]}
            metrics.update(
                output_metrics(
                    lambda s, out=outputs[row]: out[s : s + eval_step], len(x_val), eval_step, y_val, loss_fn, options
                )
            )
            member.record(epoch, metrics, lambda row=row: stack.state_of(row))
            try:
                if callbacks[number] is not None:
                    callbacks[number](epoch + 1, metrics)
            except Exception as exc:  # the trial's own end (pruned, or an error of its logging)
                outcome[number] = exc
                continue
            if member.done(epoch, plan, options.min_epochs):
                outcome[number] = member.result(models[number])
                continue
            rows.append(row)
        if not rows:
            break
        if len(rows) < len(stack.members):
            stack.keep(rows)
    for number in stack.members:
        if outcome[number] is None:
            outcome[number] = members[number].result(models[number])
    return [result for result in outcome if result is not None]


def fusable_groups(keys: list[Hashable | None]) -> list[list[int]]:
    """Positions grouped by equal fusion key, in first-seen order; a None key stands alone."""
    groups: dict[Hashable, list[int]] = {}
    alone: list[list[int]] = []
    for position, key in enumerate(keys):
        if key is None:
            alone.append([position])
        else:
            groups.setdefault(key, []).append(position)
    return [*groups.values(), *alone]
