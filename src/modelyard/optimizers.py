"""Adam, AdamW and SGD with momentum, stepped by PyTorch's fused kernels called directly.

`FusedOptimizer` keeps the state `torch.optim.Adam(fused=True)`, `AdamW(fused=True)` and
`SGD(fused=True)` keep and calls the same kernels (`torch._fused_adam_`, `_fused_adamw_`,
`_fused_sgd_`) with the same arguments, so a network trains to the same weights, to the
bit (tests/unit/test_optimizers.py). What it leaves out is `torch.optim.Optimizer`'s
wrapping, which a small network pays on every step and every process pays once:

- on a CPU, `Optimizer.step` spent 128-190 us a step of Python around a kernel of about
  60-100 us (hooks, the profiler's record, dynamo's guards, the grouping of tensors by
  device and dtype), and `LambdaLR` wrapped it once more;
- constructing any `torch.optim` optimizer imports `torch._dynamo`: 0.65 s on the Intel
  2-core machine, 1.14-1.18 s on the AMD one, in every tune and train process
  (bench/README.md "The optimizer without its wrapping").

The learning rate is an argument of `step`: `training.fit` passes the schedule's value,
which is what `LambdaLR` would have set. `param_groups` is there for `torch.amp.GradScaler`
(float16 training on a GPU without bfloat16): it unscales the gradients listed there,
skips the step when one is not finite, and passes its arguments on to `step`. Linear
models solved exactly still use `torch.optim.LBFGS` (`training.solve_convex`): a
line-search solver is not a kernel call, and its per-round cost is not per step.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch
from torch import nn

BETAS = (0.9, 0.999)  # torch.optim.Adam's defaults
EPS = 1e-8


class FusedOptimizer:
    """One network's Adam, AdamW or SGD (with momentum): its state and its fused step."""

    def __init__(
        self,
        parameters: Iterable[nn.Parameter],
        kind: Literal["adam", "adamw", "sgd"],
        weight_decay: float = 0.0,
        momentum: float = 0.0,
    ) -> None:
        self.params = [p for p in parameters if p.requires_grad]
        self.kind, self.weight_decay, self.momentum = kind, weight_decay, momentum
        self.param_groups = [{"params": self.params}]  # what GradScaler.unscale_ reads
        self.exp_avg: list[torch.Tensor] = []
        self.exp_avg_sq: list[torch.Tensor] = []
        self.momentum_buffers: list[torch.Tensor] = []
        # Adam's step counts: one float32 scalar per tensor, as torch keeps them for its fused kernels
        self.steps: list[torch.Tensor] = []
        if kind != "sgd":
            self.exp_avg = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
            self.exp_avg_sq = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
            self.steps = [torch.zeros((), dtype=torch.float32, device=p.device) for p in self.params]
        elif momentum != 0:
            self.momentum_buffers = [torch.empty_like(p) for p in self.params]
        self.first_step = True

    @torch.no_grad()
    def step(self, lr: float) -> None:
        """One step at learning rate `lr`, over the parameters that have a gradient."""
        with_grad = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not with_grad:
            return
        params = [self.params[i] for i in with_grad]
        grads = [p.grad for p in params]
        if self.kind == "sgd":
            buffers = [self.momentum_buffers[i] for i in with_grad] if self.momentum != 0 else []
            torch._fused_sgd_(
                params,
                grads,
                buffers,
                weight_decay=self.weight_decay,
                momentum=self.momentum,
                lr=lr,
                dampening=0.0,
                nesterov=False,
                maximize=False,
                is_first_step=self.first_step and self.momentum != 0,
            )
        else:
            steps = [self.steps[i] for i in with_grad]
            torch._foreach_add_(steps, 1)  # one launch on a GPU, as torch counts them
            kernel = torch._fused_adamw_ if self.kind == "adamw" else torch._fused_adam_
            kernel(
                params,
                grads,
                [self.exp_avg[i] for i in with_grad],
                [self.exp_avg_sq[i] for i in with_grad],
                [],
                steps,
                lr=lr,
                beta1=BETAS[0],
                beta2=BETAS[1],
                weight_decay=self.weight_decay,
                eps=EPS,
                amsgrad=False,
                maximize=False,
            )
        self.first_step = False
