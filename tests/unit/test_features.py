"""Feature preprocessing and target coding, on tiny frames made in memory."""

from __future__ import annotations

import pickle
import typing
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.exceptions import NotFittedError

from modelyard.config import EncoderName, FeatureSettings, parse_settings
from modelyard.errors import ModelyardError
from modelyard.features import TabularPreprocessor, TargetCodec
from modelyard.kinds import kind_of

CATEGORICAL = ["color", "size"]
NUMERIC = ["x", "z"]
ENCODERS = typing.get_args(EncoderName)


def make_frame(n: int = 120, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Two categorical columns with some NaN, two numeric columns with a NaN, a 0/1 target."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "color": rng.choice(["red", "green", "blue"], n).astype(object),
            "size": rng.choice(["S", "M", "L", "XL"], n).astype(object),
            "x": rng.normal(50.0, 10.0, n),
            "z": rng.exponential(3.0, n),
        }
    )
    frame.loc[::7, "color"] = np.nan
    frame.loc[3, "x"] = np.nan
    frame.loc[5, "z"] = np.nan
    y = ((frame["color"] == "red") | (frame["x"] > 55)).to_numpy(dtype=np.int64)
    return frame, y


def unseen_frame() -> pd.DataFrame:
    """Rows a model meets after training: new categories, missing values, extreme numbers."""
    return pd.DataFrame(
        {
            "color": ["purple", None, "red"],
            "size": ["XXL", "S", None],
            "x": [np.nan, 1.0e6, 50.0],
            "z": [np.nan, -5.0, 1.0],
        }
    )


def fit(settings: FeatureSettings, frame: pd.DataFrame, y: np.ndarray, seed: int = 0) -> TabularPreprocessor:
    return TabularPreprocessor(settings, CATEGORICAL, NUMERIC, seed=seed).fit(frame, y)


@pytest.mark.parametrize("encoder", ENCODERS)
def test_every_encoder_gives_finite_float32_of_one_width(encoder: str) -> None:
    frame, y = make_frame()
    pre = fit(FeatureSettings(default_encoder=encoder), frame, y)
    train, unseen = pre.transform(frame), pre.transform(unseen_frame())
    assert train.dtype == np.float32 and unseen.dtype == np.float32
    assert train.shape == (len(frame), pre.n_features_out_)
    assert unseen.shape == (3, pre.n_features_out_)
    assert len(pre.feature_names_out_) == pre.n_features_out_
    assert np.isfinite(train).all() and np.isfinite(unseen).all()


def test_each_column_gets_its_own_encoder() -> None:
    frame, y = make_frame()
    settings = FeatureSettings(default_encoder="onehot", encoders={"size": "ordinal"})
    pre = fit(settings, frame, y)
    assert pre.feature_names_out_ == ["color___missing__", "color_blue", "color_green", "color_red", "size", "x", "z"]


def test_onehot_drop_first_gives_one_column_fewer_per_feature() -> None:
    frame, y = make_frame()
    full = fit(FeatureSettings(onehot_drop="none"), frame, y)
    dropped = fit(FeatureSettings(onehot_drop="first"), frame, y)
    assert full.n_features_out_ - dropped.n_features_out_ == len(CATEGORICAL)


def test_onehot_with_drop_encodes_unseen_category_quietly_as_zeros() -> None:
    frame, y = make_frame()
    pre = fit(FeatureSettings(onehot_drop="first"), frame, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = pre.transform(unseen_frame())
    color = [i for i, name in enumerate(pre.feature_names_out_) if name.startswith("color_")]
    assert (out[0, color] == 0).all()


def test_missing_category_is_its_own_level() -> None:
    frame, y = make_frame()
    pre = fit(FeatureSettings(), frame, y)
    out = pre.transform(frame)
    missing = pre.feature_names_out_.index("color___missing__")
    np.testing.assert_array_equal(out[:, missing], frame["color"].isna().to_numpy(dtype=np.float32))


def numeric_block(pre: TabularPreprocessor, frame: pd.DataFrame) -> np.ndarray:
    return pre.transform(frame)[:, [pre.feature_names_out_.index(c) for c in NUMERIC]]


def test_standard_scaler_centres_and_scales_train() -> None:
    frame, y = make_frame()
    values = numeric_block(fit(FeatureSettings(scaler="standard"), frame, y), frame)
    np.testing.assert_allclose(values.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(values.std(axis=0), 1.0, atol=1e-4)


def test_minmax_scaler_maps_train_to_unit_interval() -> None:
    frame, y = make_frame()
    values = numeric_block(fit(FeatureSettings(scaler="minmax"), frame, y), frame)
    np.testing.assert_allclose(values.min(axis=0), 0.0, atol=1e-6)
    np.testing.assert_allclose(values.max(axis=0), 1.0, atol=1e-6)


def test_robust_and_quantile_scalers_centre_the_train_median() -> None:
    frame, y = make_frame()
    for scaler in ("robust", "quantile"):
        values = numeric_block(fit(FeatureSettings(scaler=scaler), frame, y), frame)
        np.testing.assert_allclose(np.median(values, axis=0), 0.0, atol=0.05)


@pytest.mark.parametrize(("impute", "fill"), [("mean", np.nanmean), ("median", np.nanmedian), ("zero", lambda v: 0.0)])
def test_scaler_none_keeps_values_and_imputes(impute: str, fill: typing.Callable) -> None:
    frame, y = make_frame()
    pre = fit(FeatureSettings(scaler="none", numeric_impute=impute), frame, y)
    values = numeric_block(pre, frame)
    expected = frame[NUMERIC].to_numpy(dtype=np.float64).copy()
    for j in range(len(NUMERIC)):
        expected[np.isnan(expected[:, j]), j] = fill(expected[:, j])
    np.testing.assert_allclose(values, expected, rtol=1e-6)


LEAKAGE_SETTINGS = [
    FeatureSettings(default_encoder="onehot", scaler="quantile"),
    FeatureSettings(default_encoder="target", scaler="standard"),
    FeatureSettings(default_encoder="leave_one_out", encoders={"size": "ordinal"}, scaler="minmax"),
    FeatureSettings(default_encoder="woe", encoders={"size": "hashing"}, scaler="robust"),
]


def poisoned(frame: pd.DataFrame, y: np.ndarray) -> tuple[pd.DataFrame, np.ndarray]:
    """Validation/test rows that would shift any statistic they leaked into."""
    bad = frame.copy()
    bad["color"] = "poison"
    bad["size"] = bad["size"].where(bad.index % 2 == 0, "XXL")
    bad[NUMERIC] = 1.0e6
    return bad, 1 - y


@pytest.mark.parametrize("settings", LEAKAGE_SETTINGS)
def test_fit_learns_only_from_the_rows_it_is_given(settings: FeatureSettings) -> None:
    train, y_train = make_frame(100, seed=1)
    val, _ = make_frame(40, seed=2)
    bad, y_bad = poisoned(*make_frame(60, seed=3))

    alone = fit(settings, train, y_train)
    # The same training rows cut out of a bigger, shuffled frame that also holds poisoned rows.
    whole = pd.concat([bad, train, val], ignore_index=True).set_axis(np.arange(200)[::-1])
    labels = np.concatenate([y_bad, y_train, np.zeros(len(val), dtype=np.int64)])
    rows = slice(len(bad), len(bad) + len(train))
    among = fit(settings, whole.iloc[rows], labels[rows])

    before = alone.transform(val)
    alone.transform(bad)  # transforming other rows must teach it nothing
    np.testing.assert_array_equal(alone.transform(val), before)
    np.testing.assert_array_equal(among.transform(train), alone.transform(train))
    np.testing.assert_array_equal(among.transform(val), before)


def test_target_encoding_follows_train_labels_only() -> None:
    train, _ = make_frame(150, seed=4)
    y = (train["color"] == "red").to_numpy(dtype=np.int64)
    pre = TabularPreprocessor(FeatureSettings(default_encoder="target"), ["color"], [], seed=0).fit(train, y)
    probe = pd.DataFrame({"color": ["red", "blue", "green"]})
    red, blue, green = pre.transform(probe)[:, 0]
    assert red > 0.9 and blue < 0.1 and green < 0.1

    flipped = TabularPreprocessor(FeatureSettings(default_encoder="target"), ["color"], [], seed=0).fit(train, 1 - y)
    np.testing.assert_allclose(flipped.transform(probe)[:, 0], 1.0 - np.array([red, blue, green]), atol=1e-6)


@pytest.mark.parametrize("encoder", ["onehot", "target", "hashing", "james_stein"])
def test_pickle_round_trip_gives_identical_output(encoder: str) -> None:
    frame, y = make_frame()
    pre = fit(FeatureSettings(default_encoder=encoder, scaler="quantile"), frame, y)
    loaded = pickle.loads(pickle.dumps(pre))
    for rows in (frame, unseen_frame()):
        np.testing.assert_array_equal(loaded.transform(rows), pre.transform(rows))
    assert loaded.feature_names_out_ == pre.feature_names_out_


def test_same_seed_same_features() -> None:
    frame, y = make_frame()
    settings = FeatureSettings(default_encoder="james_stein", scaler="quantile")
    np.testing.assert_array_equal(fit(settings, frame, y).transform(frame), fit(settings, frame, y).transform(frame))


def test_transform_before_fit_raises() -> None:
    frame, _ = make_frame()
    with pytest.raises(NotFittedError):
        TabularPreprocessor(FeatureSettings(), CATEGORICAL, NUMERIC).transform(frame)


def test_missing_column_is_named() -> None:
    frame, y = make_frame()
    pre = fit(FeatureSettings(), frame, y)
    with pytest.raises(ModelyardError, match="size"):
        pre.transform(frame.drop(columns=["size"]))


def test_target_encoder_without_labels_is_a_clear_error() -> None:
    frame, _ = make_frame()
    with pytest.raises(ModelyardError, match="target"):
        TabularPreprocessor(FeatureSettings(default_encoder="target"), CATEGORICAL, NUMERIC).fit(frame, None)


def test_the_tabular_preprocessor_uses_schema_columns_except_target() -> None:
    raw = {
        "tasks": {
            "tiny": {
                "source": {"path": "data/tiny.csv"},
                "target": "label",
                "problem": "binary",
                "schema": {
                    "columns": {
                        "color": {"type": "category"},
                        "x": {"type": "number"},
                        "n": {"type": "integer"},
                        "label": {"type": "category", "categories": ["no", "yes"]},
                    }
                },
                "features": {"scaler": "minmax"},
            }
        }
    }
    task = parse_settings(raw).task("tiny")
    pre = kind_of(task).preprocessor(task, seed=3)
    assert (pre.categorical, pre.numeric, pre.seed) == (["color"], ["x", "n"], 3)
    assert pre.settings.scaler == "minmax"
    frame = pd.DataFrame(
        {"color": ["a", "b"] * 5, "x": np.arange(10.0), "n": np.arange(10), "label": ["no", "yes"] * 5}
    )
    assert pre.fit(frame, np.tile([0, 1], 5)).feature_names_out_ == ["color_a", "color_b", "x", "n"]


def test_codec_puts_positive_label_at_code_one() -> None:
    y = pd.Series([">50K", "<=50K", ">50K"])
    codec = TargetCodec("binary", classes=[">50K", "<=50K"], positive_label=">50K").fit(y)
    assert codec.classes_ == ["<=50K", ">50K"]
    np.testing.assert_array_equal(codec.encode(y), [1, 0, 1])
    assert codec.encode(y).dtype == np.int64


def test_codec_without_declared_classes_sorts_them() -> None:
    codec = TargetCodec("multiclass").fit(pd.Series(["c", "a", "b", "a"]))
    assert codec.classes_ == ["a", "b", "c"]
    np.testing.assert_array_equal(codec.decode_values(np.array([2, 0])), ["c", "a"])


def test_codec_keeps_declared_class_order() -> None:
    codec = TargetCodec("multiclass", classes=["low", "mid", "high"]).fit(pd.Series(["high", "low"]))
    np.testing.assert_array_equal(codec.encode(pd.Series(["low", "mid", "high"])), [0, 1, 2])


def test_codec_unknown_label_names_it() -> None:
    codec = TargetCodec("binary", classes=["no", "yes"]).fit(pd.Series(["no", "yes"]))
    with pytest.raises(ModelyardError, match="maybe"):
        codec.encode(pd.Series(["yes", "maybe"]))


def test_codec_missing_label_is_an_error() -> None:
    codec = TargetCodec("binary", classes=["no", "yes"]).fit(pd.Series(["no", "yes"]))
    with pytest.raises(ModelyardError, match="missing"):
        codec.encode(pd.Series(["yes", None]))


def test_codec_regression_round_trip() -> None:
    y = pd.Series([10.0, 12.0, 15.0, 30.0, 7.5])
    codec = TargetCodec("regression").fit(y)
    encoded = codec.encode(y)
    assert encoded.dtype == np.float32
    np.testing.assert_allclose([encoded.mean(), encoded.std()], [0.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(codec.decode_values(encoded), y.to_numpy(), rtol=1e-6)


def test_codec_constant_regression_target_has_unit_scale() -> None:
    codec = TargetCodec("regression").fit(pd.Series([3.0, 3.0, 3.0]))
    assert (codec.mean_, codec.scale_) == (3.0, 1.0)
