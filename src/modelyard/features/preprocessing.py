"""Tabular features: one encoder per categorical column, imputation and scaling for numeric ones.

`TabularPreprocessor` follows the scikit-learn estimator contract and is pickled next to the
network, so inference rebuilds exactly the features training saw. Everything it learns comes
from the rows given to `fit`.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import category_encoders as ce
import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import (
    FunctionTransformer,
    MinMaxScaler,
    OneHotEncoder,
    QuantileTransformer,
    RobustScaler,
    StandardScaler,
)
from sklearn.utils.validation import check_is_fitted

from modelyard.config import TARGET_ENCODERS, FeatureSettings, SchemaSettings, TaskSettings
from modelyard.errors import ModelyardError
from modelyard.features.rows import OnePredictionPerRow

MISSING = "__missing__"
ONEHOT_DROP = {"none": None, "first": "first", "if_binary": "if_binary"}
IMPUTE_STRATEGY = {"mean": "mean", "median": "median", "zero": "constant"}
# category_encoders classes that take the same unknown/missing options; seeded ones get random_state.
CE_ENCODERS = {
    "ordinal": ce.OrdinalEncoder,
    "binary": ce.BinaryEncoder,
    "target": ce.TargetEncoder,
    "leave_one_out": ce.LeaveOneOutEncoder,
    "woe": ce.WOEEncoder,
    "james_stein": ce.JamesSteinEncoder,
    "m_estimate": ce.MEstimateEncoder,
    "helmert": ce.HelmertEncoder,
    "sum": ce.SumEncoder,
    "backward_difference": ce.BackwardDifferenceEncoder,
    "polynomial": ce.PolynomialEncoder,
}
SEEDED = {"leave_one_out", "woe", "james_stein", "m_estimate"}


class TabularPreprocessor(OnePredictionPerRow, BaseEstimator, TransformerMixin):
    """Turn a raw frame into a dense float32 matrix for the network.

    Categorical columns: missing values become the level "__missing__", then the column's
    encoder (`settings.encoder_for(column)`) encodes it. A category unseen in `fit` never
    raises: one-hot gives all zeros (with `onehot_drop` first/if_binary that is the same row
    as the dropped level, scikit-learn's documented behaviour), ordinal gives -1, the target
    encoders give the training prior, binary/base-n and the contrast encoders give zeros,
    and hashing hashes it like any other value.

    Numeric columns: imputed (`settings.numeric_impute`), then scaled (`settings.scaler`).
    Columns not listed in `categorical` or `numeric` (the target, say) are dropped.
    """

    def __init__(self, settings: FeatureSettings, categorical: list[str], numeric: list[str], seed: int = 0) -> None:
        self.settings = settings
        self.categorical = categorical
        self.numeric = numeric
        self.seed = seed

    def fit(self, X: pd.DataFrame, y: np.ndarray | None = None) -> TabularPreprocessor:
        """Learn encoders and scalers from these rows only; `y` is the encoded target."""
        self._check_columns(X)
        used = {self.settings.encoder_for(c) for c in self.categorical}
        if y is None and used & TARGET_ENCODERS:
            raise ModelyardError(
                f"encoders {sorted(used & TARGET_ENCODERS)} learn from the target, but fit got no y",
                "pass the encoded target to fit",
            )
        columns = _build_columns(self.settings, list(self.categorical), list(self.numeric), len(X), self.seed)
        with _quiet():
            out = columns.fit_transform(X, y)
        self.columns_ = columns
        self.feature_names_out_ = self._feature_names(columns)
        self.n_features_out_ = int(out.shape[1])
        return self

    @property
    def input_shape_(self) -> tuple[int]:
        """One row's shape as the network takes it."""
        return (self.n_features_out_,)

    @property
    def n_numeric_(self) -> int:
        """The numeric columns, one output column each, come last in the output."""
        return len(self.numeric)

    def transform(self, X: pd.DataFrame) -> np.ndarray:
        """Encode rows with what `fit` learned: float32, shape (n_rows, n_features_out_)."""
        check_is_fitted(self, "columns_")
        self._check_columns(X)
        with _quiet():
            out = np.asarray(self.columns_.transform(X), dtype=np.float32)
        if not np.isfinite(out).all():
            raise ModelyardError(
                "features hold NaN or infinite values after preprocessing",
                "check numeric columns for infinite values (validation should reject them)",
            )
        return out

    def get_feature_names_out(self, input_features: object = None) -> np.ndarray:
        """Output column names, as scikit-learn estimators report them."""
        check_is_fitted(self, "columns_")
        return np.asarray(self.feature_names_out_, dtype=object)

    def input_columns(self, schema: SchemaSettings) -> list[str]:
        """The encoded columns in the schema's order (a split column is declared, but no feature)."""
        used = {*self.categorical, *self.numeric}
        return [c for c in schema.columns if c in used]

    def _check_columns(self, X: pd.DataFrame) -> None:
        missing = [c for c in [*self.categorical, *self.numeric] if c not in X.columns]
        if missing:
            raise ModelyardError(
                f"feature columns missing from the data: {', '.join(missing)}",
                "give the frame every column the task's schema declares",
            )

    def _feature_names(self, columns: ColumnTransformer) -> list[str]:
        names: list[str] = []
        fitted = {name: step for name, step, _ in columns.transformers_}
        for i, column in enumerate(self.categorical):
            for out in fitted[f"cat{i}"].get_feature_names_out([column]):
                out = str(out)
                names.append(out if out == column or out.startswith(f"{column}_") else f"{column}_{out}")
        return names + list(self.numeric)


def tabular_preprocessor(task: TaskSettings, seed: int = 0) -> TabularPreprocessor:
    """An unfitted preprocessor for a tabular task: every category and numeric schema column
    but the target and the split column (`split.column`) is a feature."""
    categorical = [c for c in task.schema_.names("category") if c not in (task.target, task.split.column)]
    numeric = [c for c in task.schema_.names("numeric") if c != task.target]
    return TabularPreprocessor(task.features, categorical, numeric, seed=seed)


def _build_columns(
    settings: FeatureSettings, categorical: list[str], numeric: list[str], n_rows: int, seed: int
) -> ColumnTransformer:
    """One small pipeline per categorical column (each has its own encoder), one for all numerics."""
    if not categorical and not numeric:
        raise ModelyardError("no feature columns", "declare at least one column besides the target in the schema")
    steps = []
    for i, column in enumerate(categorical):
        text = FunctionTransformer(_as_text, feature_names_out="one-to-one")
        encoder = _make_encoder(settings, settings.encoder_for(column), column, seed)
        steps.append((f"cat{i}", Pipeline([("text", text), ("encode", encoder)]), [column]))
    if numeric:
        scale = _make_scaler(settings, n_rows, seed)
        steps.append(("num", Pipeline([("impute", _make_imputer(settings)), ("scale", scale)]), numeric))
    return ColumnTransformer(steps, remainder="drop", sparse_threshold=0.0)


def _make_encoder(settings: FeatureSettings, name: str, column: str, seed: int) -> object:
    """The library encoder for one column, with unknown and missing handling set explicitly."""
    if name == "onehot":
        return OneHotEncoder(drop=ONEHOT_DROP[settings.onehot_drop], handle_unknown="ignore", sparse_output=False)
    if name == "hashing":
        return ce.HashingEncoder(cols=[column], n_components=settings.hashing_components, max_process=1)
    options: dict[str, object] = {"cols": [column], "handle_unknown": "value", "handle_missing": "value"}
    if name == "basen":
        return ce.BaseNEncoder(base=settings.basen_base, **options)
    if name in SEEDED:
        options["random_state"] = seed
    return CE_ENCODERS[name](**options)


def _make_imputer(settings: FeatureSettings) -> SimpleImputer:
    fill = 0.0 if settings.numeric_impute == "zero" else None
    # keep_empty_features: a column with no values in training still yields one (imputed) column.
    return SimpleImputer(strategy=IMPUTE_STRATEGY[settings.numeric_impute], fill_value=fill, keep_empty_features=True)


def _make_scaler(settings: FeatureSettings, n_rows: int, seed: int) -> object:
    if settings.scaler == "standard":
        return StandardScaler()
    if settings.scaler == "minmax":
        return MinMaxScaler()
    if settings.scaler == "robust":
        return RobustScaler()
    if settings.scaler == "robust_clip":
        return Pipeline(
            [("robust", RobustScaler()), ("clip", FunctionTransformer(smooth_clip, feature_names_out="one-to-one"))]
        )
    if settings.scaler == "quantile":
        return QuantileTransformer(
            output_distribution="normal", n_quantiles=max(1, min(1000, n_rows)), random_state=seed
        )
    if settings.scaler == "quantile_noise":
        return NoisyQuantileTransformer(n_quantiles=max(1, min(1000, n_rows)), random_state=seed)
    return "passthrough"


class NoisyQuantileTransformer(TransformerMixin, BaseEstimator):
    """A quantile transform to a normal distribution whose quantiles are learned from the
    training values plus a little Gaussian noise (`noise` x each column's spread), as
    Gorishniy et al. fit theirs: columns with few distinct values (counts, ratings) then map
    to a spread of values instead of a few repeated ones. `transform` adds no noise."""

    def __init__(self, n_quantiles: int = 1000, noise: float = 1e-3, random_state: int = 0) -> None:
        self.n_quantiles = n_quantiles
        self.noise = noise
        self.random_state = random_state

    def fit(self, X: np.ndarray, y: object = None) -> NoisyQuantileTransformer:
        values = np.asarray(X, dtype=np.float64)
        spread = np.nanstd(values, axis=0, keepdims=True)
        rng = np.random.default_rng(self.random_state)
        noisy = values + rng.normal(size=values.shape) * self.noise * np.where(spread > 0, spread, 1.0)
        self.quantiles_ = QuantileTransformer(
            output_distribution="normal", n_quantiles=self.n_quantiles, random_state=self.random_state
        ).fit(noisy)
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "quantiles_")
        return self.quantiles_.transform(np.asarray(X, dtype=np.float64))

    def get_feature_names_out(self, input_features: object = None) -> np.ndarray:
        return np.asarray(input_features, dtype=object)


def smooth_clip(x: np.ndarray) -> np.ndarray:
    """x / sqrt(1 + (x/3)^2): about x near 0, bounded by +-3 (RealMLP, Holzmüller et al. 2024),
    so a few extreme values cannot dominate a scaled column."""
    return x / np.sqrt(1.0 + (np.asarray(x, dtype=np.float64) / 3.0) ** 2)


def _as_text(frame: pd.DataFrame) -> pd.DataFrame:
    """Categorical values as text; a missing value becomes its own level, "__missing__"."""
    return frame.astype(object).where(frame.notna(), MISSING).astype(str).astype(object)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence two warnings known to be noise here, and nothing else."""
    with warnings.catch_warnings():
        # category_encoders sets a pandas option that pandas 3 deprecates; nothing to act on.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="category_encoders")
        # One-hot with `drop` warns on every unseen category that it encodes it as all zeros (documented above).
        warnings.filterwarnings("ignore", message="Found unknown categories", category=UserWarning)
        yield
