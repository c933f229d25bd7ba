"""The family preprocessors: fitted on training data only, saved with the model (a pickle
round trip transforms identically), and clear about input they cannot take."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest

from modelyard.data.images import image_frame
from modelyard.errors import ModelyardError
from modelyard.features import (
    ImagePreprocessor,
    SequencePreprocessor,
    SeriesPreprocessor,
    TextPreprocessor,
    sequence_labels,
)

RNG = np.random.default_rng(0)


def round_trip(preprocessor):
    return pickle.loads(pickle.dumps(preprocessor))


def test_images_scale_to_unit_range_and_survive_a_round_trip() -> None:
    frame = image_frame(RNG.integers(0, 256, (6, 8, 8)).astype(np.uint8), np.arange(6) % 2, "label")
    fitted = ImagePreprocessor().fit(frame)
    x = fitted.transform(frame)
    assert x.shape == (6, 1, 8, 8) and fitted.input_shape_ == (1, 8, 8)
    assert x.min() >= 0.0 and x.max() <= 1.0 and x.max() > 0.5
    np.testing.assert_array_equal(round_trip(fitted).transform(frame), x)
    np.testing.assert_array_equal(fitted.transform(RNG.integers(0, 256, (2, 8, 8, 1))).shape, (2, 1, 8, 8))
    with pytest.raises(ModelyardError, match=r"the model takes \(8, 8, 1\)"):
        fitted.transform(np.zeros((2, 28, 28, 1), np.float32))


def test_text_vocabulary_comes_from_training_rows_only() -> None:
    train = pd.DataFrame({"text": ["good film", "bad film"]})
    fitted = TextPreprocessor("text", max_vocab=100, max_length=4, min_freq=1, lowercase=True).fit(train)
    assert fitted.vocab_size_ == 5  # <pad>, <unk>, film, bad, good
    unseen = fitted.transform(pd.DataFrame({"text": ["superb film"]}))
    assert unseen.tolist() == [[1.0, fitted.vectorizer.vocabulary_["film"], 0.0, 0.0]]
    np.testing.assert_array_equal(round_trip(fitted).transform(train), fitted.transform(train))
    with pytest.raises(ModelyardError, match="no text column 'text'"):
        fitted.transform(pd.DataFrame({"review": ["good"]}))


def series(n_weeks: int) -> pd.DataFrame:
    weeks = pd.date_range("2001-01-06", periods=n_weeks, freq="W-SAT")
    return pd.DataFrame({"week": weeks, "level": 100 + np.arange(n_weeks, dtype=float)})


def test_series_windows_are_relative_to_their_last_step() -> None:
    history = series(30)
    fitted = SeriesPreprocessor("week", ["level"], ["level"], window=4, horizon=2, season=3).fit(history[:20])
    x, y = fitted.windows(history, history["week"][10], history["week"][19])
    # Targets steps 10..19 -> origins 9..17; each input window ends at 0 (relative to its last step).
    assert x.shape == (9, 4, 1) and y.shape == (9, 2)
    np.testing.assert_allclose(x[0, :, 0] * fitted.scale_[0], [-3, -2, -1, 0])
    np.testing.assert_allclose(y * fitted.scale_[0], np.tile([1.0, 2.0], (9, 1)))
    np.testing.assert_array_equal(round_trip(fitted).windows(history, history["week"][10], history["week"][19])[0], x)


def test_series_forecasts_from_every_origin_and_the_naive_baseline_repeats_a_season() -> None:
    history = series(10)
    fitted = SeriesPreprocessor("week", ["level"], ["level"], window=4, horizon=2, season=3).fit(history)
    naive = fitted.forecast(history, None)
    assert len(naive) == (10 - 4 + 1) * 2 and list(naive.columns) == ["origin", "time", "step", "level"]
    last = naive[naive["origin"] == history["week"].iloc[-1]]
    assert last["level"].tolist() == [107.0, 108.0]  # one season (3 weeks) before each target week
    assert last["time"].tolist() == [history["week"].iloc[-1] + pd.Timedelta(weeks=k) for k in (1, 2)]
    perfect = fitted.forecast(history, lambda x: np.tile([1.0, 2.0], (len(x), 1)) / fitted.scale_[0])
    assert perfect[perfect["origin"] == history["week"].iloc[-1]]["level"].tolist() == pytest.approx([110.0, 111.0])


def test_series_gaps_are_filled_for_inputs_but_never_used_as_targets() -> None:
    history = series(30).drop(index=[12])  # a missing week
    fitted = SeriesPreprocessor("week", ["level"], ["level"], window=4, horizon=1).fit(history)
    x, y = fitted.windows(history, history["week"].min(), history["week"].max())
    assert len(x) == 30 - 4 - 1  # 26 windows on the regular grid, less the one whose target was missing
    assert np.isfinite(x).all() and np.isfinite(y).all()


def test_sequences_pad_mask_and_keep_their_last_steps() -> None:
    rows = pd.DataFrame({"id": ["b", "b", "a", "a", "a"], "t": [1, 0, 0, 1, 2], "v": [20.0, 10.0, 1.0, 2.0, 3.0]})
    fitted = SequencePreprocessor("id", "t", ["v"], normalize="global").fit(rows)
    x = fitted.transform(rows)
    assert fitted.input_shape_ == (3, 2) and x.shape == (2, 3, 2)
    assert fitted.ids(rows).tolist() == ["a", "b"]  # samples in sorted id order
    assert x[:, :, 1].tolist() == [[1, 1, 1], [1, 1, 0]]  # the step mask: b has 2 steps
    values = x[:, :, 0] * fitted.scale_[0] + fitted.mean_[0]
    np.testing.assert_allclose(values[1, :2], [10.0, 20.0])  # ordered by step
    long = pd.DataFrame({"id": ["c"] * 5, "t": range(5), "v": [1.0, 2.0, 3.0, 4.0, 5.0]})
    kept = fitted.transform(long)[0, :, 0] * fitted.scale_[0] + fitted.mean_[0]
    np.testing.assert_allclose(kept, [3.0, 4.0, 5.0])  # longer than trained: the last 3 steps
    np.testing.assert_array_equal(round_trip(fitted).transform(rows), x)
    with pytest.raises(ModelyardError, match="sequence 'a' has step 1 more than once"):
        fitted.transform(pd.concat([rows, rows.iloc[[3]]]))


def test_sequence_labels_are_one_per_sequence() -> None:
    rows = pd.DataFrame({"id": [1, 1, 2], "y": ["up", "up", "down"]})
    assert sequence_labels(rows, "id", "y").to_dict() == {1: "up", 2: "down"}
    with pytest.raises(ModelyardError, match="sequence 1 has 2 different labels"):
        sequence_labels(rows.assign(y=["up", "down", "down"]), "id", "y")
