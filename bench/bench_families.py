"""Epoch throughput of each model family, on the CPU and (when present) on CUDA.

Trains each family's network with `modelyard.training.fit` on random data shaped like the
built-in tasks (digits 8x8 and MNIST 28x28 images for the CNN, 52-week windows for the
forecasting LSTM, 200-token texts for the text LSTM) and reports samples per second per
device; on a machine with a GPU the GPU/CPU ratio is printed as well. The figures measure
the loop (data on the device, AMP on CUDA, channels-last convolutions), not accuracy.

    python bench/bench_families.py [--epochs 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from modelyard.config import Hyperparams
from modelyard.models import build_model
from modelyard.training import FitOptions, fit

CASES = {
    # name: (family, sample shape, n_outputs, vocab size, problem, rows)
    "cnn_digits_8x8": ("cnn", (1, 8, 8), 10, None, "multiclass", 2048),
    "cnn_mnist_28x28": ("cnn", (1, 28, 28), 10, None, "multiclass", 2048),
    "lstm_series_52x1": ("lstm", (52, 1), 4, None, "regression", 2048),
    "lstm_text_200": ("lstm", (200,), 2, 20000, "multiclass", 1024),
}
HPARAMS = Hyperparams(batch_size=64, n_blocks=2, filters=32, dense_units=128, hidden_size=64, embed_dim=64, lr=1e-3)


def data(shape: tuple[int, ...], n_outputs: int, vocab: int | None, problem: str, rows: int):
    rng = np.random.default_rng(0)
    x = rng.integers(1, vocab, (rows, *shape)).astype(np.float32) if vocab else rng.random((rows, *shape), np.float32)
    if problem == "regression":
        y = rng.normal(size=(rows, n_outputs)).astype(np.float32)
    else:
        y = rng.integers(0, n_outputs, rows)
    return x, y


def throughput(case: str, device: str, epochs: int) -> float:
    family, shape, n_outputs, vocab, problem, rows = CASES[case]
    x, y = data(shape, n_outputs, vocab, problem, rows)
    monitor = "val_rmse" if problem == "regression" else "val_accuracy"
    options = FitOptions(problem=problem, monitor=monitor, max_epochs=1, patience=1, device=device)
    fit(build_model(family, shape, n_outputs, HPARAMS, vocab), (x, y), (x[:64], y[:64]), HPARAMS, options)  # warm-up
    model = build_model(family, shape, n_outputs, HPARAMS, vocab)
    options = FitOptions(problem=problem, monitor=monitor, max_epochs=epochs, patience=epochs, device=device)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fit(model, (x, y), (x[:64], y[:64]), HPARAMS, options)
    if device == "cuda":
        torch.cuda.synchronize()
    return rows * epochs / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    results = {}
    for case in CASES:
        rates = {device: throughput(case, device, args.epochs) for device in devices}
        line = "  ".join(f"{device} {rate:10.0f} samples/s" for device, rate in rates.items())
        if "cuda" in rates:
            line += f"  gpu/cpu {rates['cuda'] / rates['cpu']:.1f}x"
        print(f"{case:18s} {line}", flush=True)
        results[case] = rates
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    print(json.dumps({"torch_threads": torch.get_num_threads(), "gpu": gpu, "samples_per_s": results}))


if __name__ == "__main__":
    main()
