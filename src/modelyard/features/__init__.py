"""Features: turn a task's raw frame into the arrays a network trains on.

One preprocessor per kind of task, each fitted on the training rows only and saved with
the model: `TabularPreprocessor` (encoders, imputation, scaling), `ImagePreprocessor`,
`TextPreprocessor` (tokenizer and vocabulary) and `SeriesPreprocessor` (forecasting
windows). `TargetCodec` turns labels or values into training targets and back.
"""

from __future__ import annotations

from modelyard.config import TaskSettings
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
    "build_preprocessor",
    "sequence_labels",
]


def build_preprocessor(task: TaskSettings, seed: int = 0) -> Preprocessor:
    """The unfitted preprocessor for a task's kind."""
    if task.kind == "images":
        return ImagePreprocessor()
    if task.kind == "text":
        text = task.features.text
        return TextPreprocessor(text.column, text.max_vocab, text.max_length, text.min_freq, text.lowercase)
    if task.kind == "series":
        series, schema = task.features.series, task.schema_
        return SeriesPreprocessor(
            schema.time,
            schema.names("numeric"),
            task.forecast_targets,
            series.window,
            series.horizon,
            series.season,
            schema.frequency,
        )
    if task.kind == "sequence":
        sequence = task.features.sequence
        columns = [c for c in task.schema_.names("numeric") if c not in (sequence.id, sequence.step)]
        return SequencePreprocessor(
            sequence.id, sequence.step, columns, sequence.max_length, normalize=sequence.normalize
        )
    return tabular_preprocessor(task, seed)
