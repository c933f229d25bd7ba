"""Binary decision thresholds chosen on validation, and used wherever classes are decided."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modelyard.config import RegistrySettings, parse_settings
from modelyard.evaluation import best_threshold, compute_metrics
from modelyard.promotion import compare
from tests.conftest import toy_params


def shifted_scores(n_rows: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities that rank well but sit too low: every positive scores under 0.5."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n_rows) < 0.4).astype(int)
    p = np.clip(0.15 + 0.25 * y + rng.normal(0, 0.05, n_rows), 0.01, 0.99)
    return y, p


@pytest.mark.parametrize("metric", ["accuracy", "f1"])
def test_best_threshold_beats_one_half_on_shifted_probabilities(metric: str) -> None:
    y, p = shifted_scores()
    threshold = best_threshold(y, p, metric)
    assert 0.2 < threshold < 0.4
    at_half = compute_metrics("binary", y, p)[f"test_{metric}"]
    chosen = compute_metrics("binary", y, p, threshold=threshold)[f"test_{metric}"]
    assert chosen > at_half + 0.2


def test_well_placed_probabilities_keep_one_half() -> None:
    y = np.array([0, 0, 1, 1])
    assert best_threshold(y, np.array([0.1, 0.2, 0.8, 0.9]), "accuracy") == 0.5


def test_promotion_judges_each_model_at_its_own_threshold() -> None:
    y, p = shifted_scores()
    settings = RegistrySettings(test="mcnemar")
    at_half = compare("binary", "test_accuracy", y, p, p, settings)
    assert at_half.improvement == 0
    tuned = compare("binary", "test_accuracy", y, p, p, settings, thresholds=(best_threshold(y, p, "accuracy"), 0.5))
    assert tuned.improvement > 0.2 and tuned.promote


def test_train_chooses_a_threshold_only_for_accuracy_or_f1() -> None:
    from modelyard.stages import _decision_threshold

    y, p = shifted_scores()
    logits = torch.logit(torch.tensor(p, dtype=torch.float32)).unsqueeze(1)

    class Fixed(torch.nn.Module):  # returns the precomputed logits for the rows asked
        def __init__(self) -> None:
            super().__init__()
            self.anchor = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return logits[x[:, 0].long()]

    rows = (np.arange(len(y), dtype=np.float32)[:, None], y.astype(np.float32))
    on_accuracy = parse_settings(toy_params(registry={"metric": "accuracy"})).task("toy")
    chosen = _decision_threshold(on_accuracy, [(Fixed(), rows)])
    assert 0.2 < chosen < 0.4
    # cross-fitted members, each scoring its own held-out rows, pool them into one search
    halves = [tuple(part[half] for part in rows) for half in (slice(None, 150), slice(150, None))]
    assert _decision_threshold(on_accuracy, [(Fixed(), half) for half in halves]) == chosen
    on_auc = parse_settings(toy_params()).task("toy")
    assert _decision_threshold(on_auc, [(Fixed(), rows)]) == 0.5


@pytest.mark.parametrize("metric", ["accuracy", "f1"])
def test_the_threshold_search_scores_every_candidate_as_metric_value_does(metric: str) -> None:
    rng = np.random.default_rng(5)
    y = (rng.random(300) < 0.3).astype(int)
    p = np.round(np.clip(0.3 * y + rng.random(300) * 0.7, 0, 1), 2)  # ties among probabilities
    values = np.unique(p)
    candidates = np.unique(np.concatenate([[0.5], (values[1:] + values[:-1]) / 2]))
    scores = np.array([compute_metrics("binary", y, p, threshold=t)[f"test_{metric}"] for t in candidates])
    best = candidates[np.flatnonzero(scores >= scores.max() - 1e-12)]
    assert best_threshold(y, p, metric) == best[np.argmin(np.abs(best - 0.5))]
