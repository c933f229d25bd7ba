"""The target column: raw labels or values to what the network trains on, and back."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.exceptions import NotFittedError

from modelyard.config import Problem
from modelyard.errors import ModelyardError


class TargetCodec:
    """Maps raw target values to what the network trains on, and back.

    Classification: labels -> int64 codes 0..k-1 in the order of `classes_` (for a binary task
    the positive label is code 1). Regression: values -> float32 standardised with the
    training mean and standard deviation.
    """

    def __init__(self, problem: Problem, classes: list[str] | None = None, positive_label: str | None = None) -> None:
        self.problem = problem
        self.classes = classes
        self.positive_label = positive_label

    def fit(self, y: pd.Series) -> TargetCodec:
        """Learn the classes (declared ones win) or the mean and scale, from training rows."""
        if self.problem == "regression":
            values = _numeric(y)
            if np.isnan(values).all():
                raise ModelyardError("the target column has no values", "check the target column of the training data")
            self.mean_ = float(np.nanmean(values))
            std = float(np.nanstd(values))
            self.scale_ = std if std > 0 else 1.0
            return self
        if self.classes is not None:
            classes = [str(c) for c in self.classes]
        else:
            classes = sorted(y.dropna().astype(str).unique())
        if self.positive_label is not None:
            if self.positive_label not in classes:
                raise ModelyardError(
                    f"positive_label {self.positive_label!r} is not one of the target's classes ({', '.join(classes)})",
                    "set positive_label to one of the target's categories",
                )
            classes = [c for c in classes if c != self.positive_label] + [self.positive_label]
        if self.problem == "binary" and len(classes) != 2:
            raise ModelyardError(
                f"a binary task needs exactly 2 target classes, found {len(classes)}: {', '.join(classes)}",
                "declare the 2 categories of the target in the schema, or use problem: multiclass",
            )
        self.classes_ = classes
        return self

    def encode(self, y: pd.Series) -> np.ndarray:
        """Raw target -> int64 class codes, or float32 standardised values."""
        self._check_fitted()
        if y.isna().any():
            raise ModelyardError(
                f"the target column has {int(y.isna().sum())} missing value(s)",
                "drop those rows or fill them before training",
            )
        if self.problem == "regression":
            return ((_numeric(y) - self.mean_) / self.scale_).astype(np.float32)
        labels = y.astype(str)
        codes = pd.Categorical(labels, categories=self.classes_).codes.astype(np.int64)
        if (codes < 0).any():
            unknown = sorted(labels[codes < 0].unique())
            raise ModelyardError(
                f"target value(s) {', '.join(map(repr, unknown[:5]))} not among the classes {self.classes_}",
                "declare them in the target's categories, or remove those rows",
            )
        return codes

    def decode_values(self, values: np.ndarray) -> np.ndarray:
        """Regression: standardised values -> original units. Classification: codes -> labels."""
        self._check_fitted()
        if self.problem == "regression":
            return np.asarray(values, dtype=np.float64) * self.scale_ + self.mean_
        return np.asarray(self.classes_, dtype=object)[np.asarray(values, dtype=np.int64)]

    def _check_fitted(self) -> None:
        if not hasattr(self, "mean_" if self.problem == "regression" else "classes_"):
            raise NotFittedError("TargetCodec is not fitted yet; call fit on the training target first")


def _numeric(y: pd.Series) -> np.ndarray:
    values = pd.to_numeric(y, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = y[np.isnan(values) & y.notna().to_numpy()]
    if len(bad):
        raise ModelyardError(
            f"a regression target must be numeric; found {bad.iloc[0]!r}",
            "use problem: binary or multiclass for a categorical target",
        )
    return values
