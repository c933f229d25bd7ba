"""One object per data kind: what tabular rows, images, series, sequences and texts each
decide in the pipeline. Stages and `predict` ask the task's kind (`kind_of(task)`)
instead of branching on its name, and hand it to the splitter; the fitted preprocessors
(`modelyard.features`) own what a trained model does with each kind's raw input. Features
are imported where they are used, so the split stage does not depend on them."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from modelyard.config import TaskSettings

if TYPE_CHECKING:
    from modelyard.features import Preprocessor

Parts = tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]
ReadSplit = Callable[[str], pd.DataFrame]  # "train" | "val" | "test" -> that split's rows


class Kind:
    """Tabular rows, one sample each: the default the other kinds depart from."""

    name = "tabular"
    forecasts = False  # samples are windows over one history, not rows (a series)
    cross_fits = True  # a small validation split cross-fits (a series' folds would look ahead)
    takes_arrays = False  # raw input may be an array of images (a .npy / .npz file to `predict`)
    keeps_rows = True  # predictions line up with the input rows and are written beside them

    def preprocessor(self, task: TaskSettings, seed: int) -> Preprocessor:
        """The unfitted preprocessor."""
        from modelyard.features import tabular_preprocessor

        return tabular_preprocessor(task, seed)

    def group(self, task: TaskSettings) -> str | None:
        """The column whose rows make one sample and go to one split together (none: each row)."""
        return None

    def split(self, frame: pd.DataFrame, task: TaskSettings, seed: int) -> Parts:
        """Train, validation and test rows when no column marks them: at random (stratified for a classifier)."""
        from modelyard.data.splitting import split_frame

        return split_frame(frame, task.target, task.split, classification=task.problem != "regression", seed=seed)

    def targets(self, task: TaskSettings, frame: pd.DataFrame) -> pd.Series:
        """The target of each sample, in the order the preprocessor gives the samples."""
        return frame[task.target]

    def model_input(self, task: TaskSettings, frame: pd.DataFrame) -> pd.DataFrame | np.ndarray:
        """What a model is given for a frame of split rows."""
        return frame

    def input_example(self, task: TaskSettings, read_split: ReadSplit) -> pd.DataFrame | np.ndarray:
        """A few raw inputs for the registered model's signature and example."""
        val = read_split("val")
        return self.model_input(task, val.drop(columns=[task.target]).head(5))


class Images(Kind):
    name = "images"
    takes_arrays = True
    keeps_rows = False  # one row per image, the pixels are not written back

    def preprocessor(self, task: TaskSettings, seed: int) -> Preprocessor:
        from modelyard.features import ImagePreprocessor

        return ImagePreprocessor()

    def model_input(self, task: TaskSettings, frame: pd.DataFrame) -> np.ndarray:
        """The image array: the registered model's input is images, not encoded pixel bytes."""
        from modelyard.data.images import frame_images

        return frame_images(frame)


class Text(Kind):
    name = "text"

    def preprocessor(self, task: TaskSettings, seed: int) -> Preprocessor:
        from modelyard.features import TextPreprocessor

        text = task.features.text
        return TextPreprocessor(text.column, text.max_vocab, text.max_length, text.min_freq, text.lowercase)


class Sequences(Kind):
    """Rows of sequences to classify, one label per sequence."""

    name = "sequence"
    keeps_rows = False  # one prediction per sequence

    def preprocessor(self, task: TaskSettings, seed: int) -> Preprocessor:
        from modelyard.features import SequencePreprocessor

        sequence = task.features.sequence
        columns = [c for c in task.schema_.names("numeric") if c not in (sequence.id, sequence.step)]
        return SequencePreprocessor(
            sequence.id, sequence.step, columns, sequence.max_length, normalize=sequence.normalize
        )

    def group(self, task: TaskSettings) -> str | None:
        return task.features.sequence.id

    def split(self, frame: pd.DataFrame, task: TaskSettings, seed: int) -> Parts:
        """Whole sequences to each split."""
        from modelyard.data.splitting import split_groups

        return split_groups(frame, self.group(task), task.target, task.split, seed=seed)

    def targets(self, task: TaskSettings, frame: pd.DataFrame) -> pd.Series:
        """Each sequence's label, in sorted id order."""
        from modelyard.features import sequence_labels

        return sequence_labels(frame, task.features.sequence.id, task.target)

    def input_example(self, task: TaskSettings, read_split: ReadSplit) -> pd.DataFrame:
        """The rows of two validation sequences."""
        val = read_split("val")
        ids = val[task.features.sequence.id]
        return val.loc[ids.isin(ids.unique()[:2]), [c for c in val.columns if c != task.target]]


class Series(Kind):
    """One time series to forecast: samples are windows over its whole history."""

    name = "series"
    forecasts = True
    cross_fits = False
    keeps_rows = False  # one row per forecast step

    def preprocessor(self, task: TaskSettings, seed: int) -> Preprocessor:
        from modelyard.features import SeriesPreprocessor

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

    def split(self, frame: pd.DataFrame, task: TaskSettings, seed: int) -> Parts:
        """The periods in time order: train, then validation, then test."""
        from modelyard.data.splitting import split_series

        return split_series(frame, task.schema_.time, task.split)

    def history(self, task: TaskSettings, read_split: ReadSplit) -> pd.DataFrame:
        """The whole series again from its split parts, in time order (validation and test
        windows look back into the periods before them)."""
        parts = [read_split(part) for part in ("train", "val", "test")]
        return pd.concat(parts, ignore_index=True).sort_values(task.schema_.time, ignore_index=True)

    def input_example(self, task: TaskSettings, read_split: ReadSplit) -> pd.DataFrame:
        """Two windows of history."""
        return self.history(task, read_split).tail(2 * task.features.series.window)


KINDS: dict[str, Kind] = {kind.name: kind for kind in (Kind(), Images(), Text(), Sequences(), Series())}


def kind_of(task: TaskSettings) -> Kind:
    return KINDS[task.kind]
