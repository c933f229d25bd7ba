"""What every preprocessor answers for the model bundle: the raw columns it reads, and how
its predictions become a frame. Each data kind's preprocessor owns these, so the bundle
never asks which kind it holds."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

Predict = Callable[[np.ndarray], np.ndarray]  # network inputs -> network outputs
Decode = Callable[[np.ndarray], pd.DataFrame]  # network outputs -> labels, probabilities or values


class OnePredictionPerRow:
    """A preprocessor whose every input row (or image) gets one prediction: tables, texts, images."""

    def predictions(self, rows: Any, predict: Predict, decode: Decode) -> pd.DataFrame:
        """The decoded network outputs, a row per input row, in input order."""
        return decode(predict(self.transform(rows)))  # type: ignore[attr-defined]
