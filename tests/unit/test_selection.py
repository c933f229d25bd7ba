"""The one-standard-error rule that picks the trial train builds on, on small validation splits."""

from __future__ import annotations

import numpy as np
import pytest

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


def test_nested_folds_never_stop_a_model_on_the_samples_that_score_it() -> None:
    from modelyard.selection import nested_folds

    fold = np.arange(20) % 5
    x, y = np.arange(20).reshape(-1, 1).astype(float), np.zeros(20)
    parts = nested_folds(x, y, fold)
    assert len(parts) == 5
    scored = np.concatenate([part[2][0][:, 0] for part in parts])
    np.testing.assert_array_equal(np.sort(scored), np.arange(20))  # every sample scored exactly once
    for training, stopping, held in parts:
        sets = [set(training[0][:, 0]), set(stopping[0][:, 0]), set(held[0][:, 0])]
        assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
        assert len(sets[0]) == 12 and len(sets[1]) == len(sets[2]) == 4


def test_a_network_replaces_the_baseline_only_when_cross_validation_says_so_beyond_the_noise() -> None:
    from modelyard.selection import cross_validate

    network = candidate(3, 0.02, 64)
    baseline = Candidate(0, 0.05, Hyperparams(units=8), baseline=True)
    folds = [None] * 5  # value_of below ignores the samples

    def values(network_losses: list[float]):
        def value_of(hparams: Hyperparams, fold: object) -> float:
            return network_losses.pop(0) if hparams.units == 64 else 0.050

        return value_of

    # better on every fold: the network stands
    kept, record = cross_validate(values([0.030, 0.031, 0.029, 0.030, 0.032]), network, baseline, folds, True)
    assert kept is network and record["kept"] == "network" and record["network"] < record["baseline"]
    # better on average but within the spread of the folds: the baseline
    kept, record = cross_validate(values([0.010, 0.090, 0.020, 0.080, 0.040]), network, baseline, folds, True)
    assert kept is baseline and record["kept"] == "baseline" and record["network"] == pytest.approx(0.048)
    assert record["standard_error"] > 0.002
