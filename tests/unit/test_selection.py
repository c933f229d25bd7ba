"""The one-standard-error rule that picks the trial train builds on, on small validation splits."""

from __future__ import annotations

import numpy as np

from modelyard.config import MIN_METRIC_SAMPLES, Hyperparams
from modelyard.selection import Candidate, applies, simplest_within, standard_error


def candidate(number: int, value: float, units: int) -> Candidate:
    return Candidate(number, value, Hyperparams(units=units))


def size(hparams: Hyperparams) -> int:
    return hparams.units


def test_the_smallest_network_within_one_standard_error_of_the_best_is_chosen() -> None:
    best = candidate(0, 0.030, 512)
    trials = [best, candidate(1, 0.035, 64), candidate(2, 0.030, 128), candidate(3, 0.090, 8)]
    # trial 3 is smaller still, but its loss is far outside the best's standard error
    assert simplest_within(trials, best, 0.01, True, size).number == 1
    # a standard error too small to cover trial 1's loss keeps an equally good smaller one
    assert simplest_within(trials, best, 0.001, True, size).number == 2
    assert simplest_within(trials, best, 0.0, True, size).number == 2  # equal values: the smaller network


def test_a_maximised_metric_counts_lower_values_as_worse() -> None:
    best = candidate(0, 0.90, 512)
    trials = [best, candidate(1, 0.88, 64), candidate(2, 0.95, 16)]  # 2: better and smaller
    assert simplest_within(trials, best, 0.03, False, size).number == 2
    assert simplest_within([best, candidate(1, 0.80, 64)], best, 0.03, False, size).number == 0


def test_among_equally_small_networks_the_baseline_beats_a_tuned_one_within_the_noise() -> None:
    best = candidate(0, 0.030, 512)
    tuned = candidate(1, 0.032, 16)
    baseline = Candidate(2, 0.036, Hyperparams(units=16), baseline=True)
    assert simplest_within([best, tuned, baseline], best, 0.01, True, size).number == 2
    # outside the standard error the baseline is not taken, however small
    assert simplest_within([best, tuned, baseline], best, 0.004, True, size).number == 1


def test_the_standard_error_shrinks_with_more_validation_samples() -> None:
    rng = np.random.default_rng(0)

    def error_of(n: int) -> float:
        x = rng.normal(size=(n, 1))
        return standard_error(lambda samples: float(np.mean(samples[0] ** 2)), (x, np.zeros(n)), seed=0)

    small, large = error_of(40), error_of(4000)
    assert 0 < large < small
    assert standard_error(lambda samples: 1.0, (np.zeros((1, 1)), np.zeros(1)), seed=0) == 0.0  # one sample: none


def test_only_small_validation_splits_use_the_rule() -> None:
    assert applies("regression", np.zeros(MIN_METRIC_SAMPLES - 1))
    assert not applies("regression", np.zeros(MIN_METRIC_SAMPLES))


def test_a_rare_class_makes_a_large_validation_split_small() -> None:
    """1,600 rows with 3 % positives: about 50 rows decide accuracy, so the rule applies."""
    rare = np.r_[np.ones(50), np.zeros(1550)]
    assert applies("binary", rare) and not applies("regression", rare)
    balanced = np.arange(1600) % 2
    assert not applies("binary", balanced)
    assert not applies("multiclass", np.arange(300) % 10)  # 270 outside the most common class
