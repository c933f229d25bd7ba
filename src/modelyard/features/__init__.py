"""Features: turn a task's raw frame into the arrays a network trains on.

One preprocessor per kind of task, each fitted on the training rows only and saved with
the model: `TabularPreprocessor` (encoders, imputation, scaling), `ImagePreprocessor`,
`TextPreprocessor` (tokenizer and vocabulary) and `SeriesPreprocessor` (forecasting
windows). `TargetCodec` turns labels or values into training targets and back.
"""

from __future__ import annotations

from modelyard.features.images import ImagePreprocessor
from modelyard.features.preprocessing import TabularPreprocessor, tabular_preprocessor
from modelyard.features.sequences import SequencePreprocessor, sequence_labels
from modelyard.features.target import TargetCodec
from modelyard.features.text import TextPreprocessor
from modelyard.features.windows import SeriesPreprocessor

Preprocessor = TabularPreprocessor | ImagePreprocessor | TextPreprocessor | SeriesPreprocessor | SequencePreprocessor

__all__ = [
    "ImagePreprocessor",
    "Preprocessor",
    "SequencePreprocessor",
    "SeriesPreprocessor",
    "TabularPreprocessor",
    "TargetCodec",
    "TextPreprocessor",
    "sequence_labels",
    "tabular_preprocessor",
]
