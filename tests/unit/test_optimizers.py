"""FusedOptimizer steps a network exactly as torch.optim's fused optimizers do, without
their per-step wrapping and without importing torch._dynamo."""

import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from modelyard.optimizers import FusedOptimizer

TORCH_OPTIMIZERS = {
    "adam": lambda params, decay, momentum: torch.optim.Adam(params, lr=1.0, weight_decay=decay, fused=True),
    "adamw": lambda params, decay, momentum: torch.optim.AdamW(params, lr=1.0, weight_decay=decay, fused=True),
    "sgd": lambda params, decay, momentum: torch.optim.SGD(
        params, lr=1.0, momentum=momentum, weight_decay=decay, fused=True
    ),
}


def network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 1))


def backward(model: nn.Module, step: int) -> None:
    generator = torch.Generator().manual_seed(step)
    x, y = torch.randn(32, 5, generator=generator), torch.randn(32, 1, generator=generator)
    for p in model.parameters():
        p.grad = None
    nn.functional.mse_loss(model(x), y).backward()


@pytest.mark.parametrize(
    ("kind", "decay", "momentum"),
    [("adam", 0.01, 0.0), ("adamw", 0.05, 0.0), ("sgd", 0.01, 0.9), ("sgd", 0.0, 0.0)],
)
def test_same_weights_as_torch_to_the_bit(kind: str, decay: float, momentum: float) -> None:
    ours, theirs = network(), network()
    optimizer = FusedOptimizer(ours.parameters(), kind, decay, momentum)
    reference = TORCH_OPTIMIZERS[kind](theirs.parameters(), decay, momentum)
    for step in range(25):
        lr = 0.01 * (1 + step % 7) / 7  # a changing rate, as a schedule sets it
        for group in reference.param_groups:
            group["lr"] = lr
        backward(ours, step)
        backward(theirs, step)
        optimizer.step(lr)
        reference.step()
    for mine, torch_s in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.equal(mine, torch_s)
    assert not torch.equal(ours[0].weight, network()[0].weight)  # it did train


def test_a_parameter_without_a_gradient_is_left_alone() -> None:
    model = network()
    frozen_before = model[2].weight.detach().clone()
    optimizer = FusedOptimizer(model.parameters(), "adamw", weight_decay=0.1)
    backward(model, 0)
    model[2].weight.grad = None
    optimizer.step(0.01)
    assert torch.equal(model[2].weight, frozen_before)
    assert float(optimizer.steps[2]) == 0.0 and float(optimizer.steps[0]) == 1.0


def test_grad_scaler_skips_a_step_with_infinite_gradients_and_unscales_the_others() -> None:
    scaled, plain = network(), network()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    optimizer = FusedOptimizer(scaled.parameters(), "adamw")
    reference = FusedOptimizer(plain.parameters(), "adamw")
    before = [p.detach().clone() for p in scaled.parameters()]
    scaler.scale(scaled(torch.ones(1, 5)).sum()).backward()
    scaled[0].bias.grad[0] = float("inf")
    scaler.step(optimizer, 0.01)
    scaler.update()
    assert all(torch.equal(p, b) for p, b in zip(scaled.parameters(), before, strict=True))
    assert scaler.get_scale() == 512.0  # halved after the overflow

    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 5, generator=generator), torch.randn(32, 1, generator=generator)
    for model in (scaled, plain):
        for p in model.parameters():
            p.grad = None
    scaler.scale(nn.functional.mse_loss(scaled(x), y)).backward()
    nn.functional.mse_loss(plain(x), y).backward()
    scaler.step(optimizer, 0.01)
    reference.step(0.01)
    for mine, other in zip(scaled.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(mine, other)


def test_training_imports_no_dynamo() -> None:
    """Any torch.optim optimizer imports torch._dynamo, about a second of every tune and
    train process; `fit` of a network does not."""
    script = textwrap.dedent(
        """
        import sys
        import numpy as np
        from modelyard.config import Hyperparams
        from modelyard.models import build_model
        from modelyard.training import FitOptions, fit

        rng = np.random.default_rng(0)
        x = rng.normal(size=(64, 4)).astype("float32")
        y = (x[:, 0] > 0).astype("float32")
        hparams = Hyperparams(n_layers=1, units=8, batch_size=16)
        options = FitOptions(problem="binary", monitor="val_accuracy", max_epochs=2, patience=5, device="cpu")
        fit(build_model("ann", 4, 1, hparams), (x, y), (x, y), hparams, options)
        print("torch._dynamo" in sys.modules)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
