"""params.yaml -> typed, frozen settings.

Parsed once at the edge (CLI, stage scripts); code in `src` takes these objects and never
opens params.yaml itself. Unknown keys and bad values are errors that name the key and,
for unknown keys, the allowed ones.
"""

from __future__ import annotations

import codecs
import re
import reprlib
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from modelyard.errors import ModelyardError
from modelyard.redaction import redact

Problem = Literal["binary", "multiclass", "regression"]
# Below this many validation samples that can tell models apart (`metric_samples`), a
# classifier's epochs, trials and final models are compared on the validation loss, and the
# final model follows the one-standard-error rule (`selection.py`): accuracy on a dozen
# samples moves in steps of more than a point, and an early epoch or a trial that happens to
# classify them right would beat a converged model. The final model cross-fits below this
# many validation rows (see `stages.train`).
MIN_METRIC_SAMPLES = 100
Device = Literal["auto", "cpu", "cuda"]
EncoderName = Literal[
    "onehot",
    "ordinal",
    "binary",
    "basen",
    "hashing",
    "target",
    "leave_one_out",
    "woe",
    "james_stein",
    "m_estimate",
    "helmert",
    "sum",
    "backward_difference",
    "polynomial",
]
# Encoders that learn from the target: they need a numeric or binary target.
TARGET_ENCODERS = {"target", "leave_one_out", "woe", "james_stein", "m_estimate"}
TASK_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


class Frozen(BaseModel):
    """Base for every settings object: immutable; unknown keys, NaN and infinity are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class ColumnSchema(Frozen):
    """What one column of the raw data must look like."""

    type: Literal["integer", "number", "category", "text", "datetime"]
    min: float | None = None
    max: float | None = None
    categories: tuple[str, ...] | None = None
    max_null_fraction: float = Field(0.0, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _check(self) -> ColumnSchema:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        if self.type in ("category", "text", "datetime") and (self.min is not None or self.max is not None):
            raise ValueError(f"min/max apply to numeric columns, not to a {self.type} column")
        if self.type != "category" and self.categories is not None:
            raise ValueError("categories apply to category columns only")
        return self


class RowBounds(Frozen):
    min: int = Field(1, ge=1)
    max: int | None = None

    @model_validator(mode="after")
    def _check(self) -> RowBounds:
        if self.max is not None and self.max < self.min:
            raise ValueError(f"max ({self.max}) is less than min ({self.min})")
        return self


class ImageShape(Frozen):
    """The size every image of an image task must have (validate checks it)."""

    height: int | None = Field(None, ge=1)
    width: int | None = Field(None, ge=1)
    channels: int | None = Field(None, ge=1, le=4)


class SchemaSettings(Frozen):
    """The declared shape of a task's raw data; validation checks it, featurize uses it.

    `image` is the image size of an image task; `time` names a series' datetime column
    (values must increase) and `frequency` its step (a pandas alias; default: inferred).
    """

    columns: dict[str, ColumnSchema]
    rows: RowBounds = RowBounds()
    image: ImageShape | None = None
    time: str | None = None
    frequency: str | None = None

    def names(self, kind: str) -> list[str]:
        """Column names of one kind: 'category', 'numeric', 'text' or 'datetime'."""
        if kind == "numeric":
            return [n for n, c in self.columns.items() if c.type in ("integer", "number")]
        return [n for n, c in self.columns.items() if c.type == kind]


TABLE_SUFFIXES = {".csv", ".parquet", ".pq"}
ARRAY_SUFFIXES = {".npz", ".npy"}


class SourceSettings(Frozen):
    """Where a task's data comes from: a built-in dataset, a CSV / Parquet table, or for
    image tasks an image folder (one subfolder per class), a .npz / .npy array file or an
    IDX file (plain or .gz) with its `labels` file."""

    builtin: Literal["adult", "digits", "mnist", "co2"] | None = None
    path: str | None = None
    # A separate file of test rows (same columns as `path`), e.g. a published test split:
    # those rows are the test split exactly, and validation comes from the `path` rows.
    test: str | None = None
    labels: str | None = None  # the labels file of a .npy or IDX images file
    na_values: tuple[str, ...] = ()
    # CSV dialect: the field delimiter and the decimal mark of numbers (`auto`: detected
    # from the first lines), and the text encoding.
    delimiter: Literal["auto", ",", ";", "\t", "|"] = "auto"
    decimal: Literal["auto", ".", ","] = "auto"
    encoding: str = "utf-8"

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown text encoding {value!r}; e.g. utf-8, latin-1, cp1252") from None
        return value

    @field_validator("path", "test", "labels")
    @classmethod
    def _inside_data(cls, value: str | None) -> str | None:
        """Sources lie under the repository's data/ folder, given relative to the repository:
        DVC watches that folder, so a file elsewhere could change without any stage rerunning."""
        if value is None:
            return value
        parts = Path(value).parts
        if Path(value).is_absolute() or ".." in parts or not parts or parts[0] != "data":
            raise ValueError(
                f"{value!r} is not under data/: give a path relative to the repository inside data/, "
                "e.g. data/sources/<file> (copy or link the file there; `modelyard add` does it)"
            )
        return value

    @model_validator(mode="after")
    def _one_of(self) -> SourceSettings:
        if (self.builtin is None) == (self.path is None):
            raise ValueError("give exactly one of 'builtin' (a dataset name) or 'path' (a file or folder)")
        if self.labels is not None and self.path is None:
            raise ValueError("labels goes with path (an IDX or .npy images file)")
        if self.path is not None:
            name = Path(self.path).name.lower()
            known = Path(name).suffix in TABLE_SUFFIXES | ARRAY_SUFFIXES | {"", ".gz"} or "ubyte" in name
            if not known:
                raise ValueError(
                    f"path {self.path!r} must be a .csv or .parquet table, or for an image task a folder, "
                    "a .npz / .npy file or an IDX file"
                )
        return self

    @property
    def csv_options(self) -> dict[str, Any]:
        """How `read_table` reads this source's CSV files."""
        return {
            "na_values": self.na_values,
            "delimiter": self.delimiter,
            "decimal": self.decimal,
            "encoding": self.encoding,
        }

    @property
    def is_table(self) -> bool:
        return self.path is not None and Path(self.path).suffix.lower() in TABLE_SUFFIXES


class SplitSettings(Frozen):
    """How rows are split. `column` names a column holding `train` / `val` / `test` per row
    (a published split): those rows are used as marked, and when no row is marked `val`,
    validation is `val_size` of the `train` rows. The column is never a feature."""

    test_size: float = Field(0.2, gt=0.0, lt=1.0)
    val_size: float = Field(0.2, gt=0.0, lt=1.0)
    stratify: bool = True
    column: str | None = None


class SeriesSettings(Frozen):
    """Forecasting windows: `window` steps of every numeric column predict the next
    `horizon` steps of `targets` (default: the task's target)."""

    targets: tuple[str, ...] = ()
    window: int = Field(52, ge=2)
    horizon: int = Field(1, ge=1)
    season: int = Field(1, ge=1)  # the seasonal-naive baseline repeats the value `season` steps back


class TextSettings(Frozen):
    """Text classification: a tokenizer and vocabulary fitted on the training split."""

    column: str
    max_vocab: int = Field(20000, ge=3)
    max_length: int | None = Field(None, ge=1)  # default: the 95th percentile of the training texts' lengths
    min_freq: int = Field(1, ge=1)
    lowercase: bool = True


class SequenceSettings(Frozen):
    """Sequence classification from long-format rows: `id` names the sequence, `step`
    orders its rows; every other numeric column is a feature. Sequences are padded to
    `max_length` steps (default: the longest training sequence)."""

    id: str
    step: str
    max_length: int | None = Field(None, ge=1)
    # series: z-normalise each sequence's channels by their own mean and spread (the UCR
    # convention: shape matters, not level); global: standardise with the training rows'.
    normalize: Literal["series", "global"] = "series"


class FeatureSettings(Frozen):
    """Tabular tasks: encoders per categorical column, numeric imputation and scaling.
    LSTM tasks: `series` (forecasting windows), `sequence` (sequence classification) or
    `text` (tokenizer)."""

    series: SeriesSettings | None = None
    sequence: SequenceSettings | None = None
    text: TextSettings | None = None

    default_encoder: EncoderName = "onehot"
    encoders: dict[str, EncoderName] = {}
    onehot_drop: Literal["none", "first", "if_binary"] = "none"
    basen_base: int = Field(3, ge=2)
    hashing_components: int = Field(8, ge=1)
    numeric_impute: Literal["mean", "median", "zero"] = "median"
    # robust_clip: median / IQR scaling, then a smooth clip to +-3 (RealMLP's preprocessing);
    # quantile_noise: quantiles learned from slightly noised training values (Gorishniy et al.)
    scaler: Literal["standard", "minmax", "robust", "robust_clip", "quantile", "quantile_noise", "none"] = "standard"

    def encoder_for(self, column: str) -> str:
        return self.encoders.get(column, self.default_encoder)


# The losses each problem trains with, its default first (see `modelyard.losses`).
LOSSES: dict[str, tuple[str, ...]] = {
    "regression": ("mse", "mae", "huber", "msle", "mape"),
    "binary": ("logistic", "hinge", "kl"),
    "multiclass": ("cross_entropy", "kl"),
}
TARGET_UNIT_LOSSES = ("msle", "mape")  # computed on values in target units, not standardised


# The hyperparameters every family trains with, and those each family's network is built
# from (see `models.build_model`). A task sets or searches only its family's: `units` in a
# CNN task is an error that names the family, never a key silently ignored.
TRAINING_HPARAMS = (
    "lr",
    "weight_decay",
    "l1",
    "optimizer",
    "momentum",
    "dropout",
    "batch_size",
    "loss",
    "label_smoothing",
)
FAMILY_HPARAMS: dict[str, tuple[str, ...]] = {
    "ann": (
        *("n_layers", "units", "activation", "batch_norm", "numeric_embedding"),
        *("n_frequencies", "frequency_scale", "n_bins", "numeric_embed_dim"),
    ),
    "cnn": ("n_blocks", "filters", "kernel_size", "dense_units", "max_shift", "max_degrees", "flip"),
    "lstm": ("arch", "hidden_size", "n_layers", "bidirectional", "embed_dim", "filters"),
}


def family_hparams(family: str) -> tuple[str, ...]:
    """Every hyperparameter a task of this family may set or search."""
    return TRAINING_HPARAMS + FAMILY_HPARAMS[family]


class Hyperparams(Frozen):
    """Everything one training run is built from; tuning searches over a subset."""

    lr: float = Field(1.0e-3, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    l1: float = Field(0.0, ge=0.0)
    optimizer: Literal["adam", "adamw", "sgd"] = "adamw"
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    batch_size: int = Field(256, ge=1)
    # MLP: hidden layers, 0 for a linear model (additive, over numeric embeddings); LSTM: >= 1.
    n_layers: int = Field(2, ge=0)
    units: int = Field(128, ge=1)
    activation: Literal["relu", "leaky_relu", "tanh", "sigmoid", "gelu", "elu"] = "relu"
    batch_norm: bool = False
    # MLP: `periodic` embeds each numeric column (PLR: `n_frequencies` trainable frequencies
    # drawn at `frequency_scale`, then Linear -> `numeric_embed_dim` and ReLU) before the
    # layers; `piecewise` encodes it over `n_bins` quantile bins, then the same Linear + ReLU.
    numeric_embedding: Literal["none", "periodic", "piecewise"] = "none"
    n_bins: int = Field(32, ge=2, le=256)
    n_frequencies: int = Field(48, ge=1)
    frequency_scale: float = Field(1.0, gt=0.0)
    numeric_embed_dim: int = Field(16, ge=1)
    # Classification: targets smoothed towards the uniform distribution by this much.
    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5)
    # The training loss (see `modelyard.losses`); `auto` is the problem's default.
    loss: Literal["auto", "mse", "mae", "huber", "msle", "mape", "logistic", "hinge", "cross_entropy", "kl"] = "auto"
    # CNN: conv-conv-pool blocks, filters doubling block by block, then a dense head.
    n_blocks: int = Field(2, ge=1, le=6)
    filters: int = Field(32, ge=1)
    kernel_size: int = Field(3, ge=1)
    dense_units: int = Field(128, ge=1)
    # LSTM: `n_layers` stacked layers of `hidden_size`; text tasks embed tokens first.
    hidden_size: int = Field(64, ge=1)
    bidirectional: bool = False
    embed_dim: int = Field(64, ge=1)
    # Image augmentation of training batches: random shifts (pixels), rotations (degrees),
    # horizontal flips (only where a mirrored image keeps its label).
    max_shift: int = Field(0, ge=0)
    max_degrees: float = Field(0.0, ge=0.0, le=180.0)
    flip: bool = False
    # The network of an `lstm`-family task: `auto` is the kind's default (`fcn` for sequence
    # classification, `bag` for text, `lstm` for forecasting). fcn / resnet: the 1-D
    # convolutional baselines of Wang et al. 2017; bag: a fastText-style bag of word and
    # bigram embeddings.
    arch: Literal["auto", "lstm", "fcn", "resnet", "bag"] = "auto"

    def of_family(self, family: str, problem: str, kind: str) -> dict[str, Any]:
        """The hyperparameters that shape this family's network and training, as logged to
        MLflow: an MLP run shows no CNN filters, a run without SGD no momentum."""
        unused = {"momentum"} if self.optimizer != "sgd" else set()
        unused |= {"label_smoothing"} if problem == "regression" else set()
        if family == "ann":
            embedding = {"periodic": {"n_frequencies", "frequency_scale"}, "piecewise": {"n_bins"}}
            knobs = embedding.get(self.numeric_embedding, set())
            unused |= {"n_frequencies", "frequency_scale", "n_bins"} - knobs
            unused |= set() if knobs else {"numeric_embed_dim"}
        elif family == "lstm":
            recurrent = {"hidden_size", "n_layers", "bidirectional", *["embed_dim"] * (kind == "text")}
            shaping = {"fcn": {"filters"}, "resnet": {"filters"}, "bag": {"embed_dim"}}.get(self.arch, recurrent)
            unused |= set(FAMILY_HPARAMS["lstm"]) - shaping - {"arch"}
        return {name: getattr(self, name) for name in family_hparams(family) if name not in unused}

    @field_validator("kernel_size")
    @classmethod
    def _odd_kernel(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError(f"kernel_size must be odd (3, 5, ...), got {value}")
        return value


class Distribution(Frozen):
    """One search-space entry: a range (`low`, `high`, optional `log`/`step`) or `choices`."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = Field(None, gt=0.0)
    choices: tuple[Any, ...] | None = None

    @model_validator(mode="after")
    def _check(self) -> Distribution:
        if self.choices is not None:
            if self.low is not None or self.high is not None:
                raise ValueError("give either choices or low/high, not both")
            if not self.choices:
                raise ValueError("choices is empty")
            return self
        if self.low is None or self.high is None:
            raise ValueError("give low and high (or choices)")
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) is greater than high ({self.high}); swap them")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scale range needs low > 0, got {self.low}")
        if self.log and self.step is not None:
            raise ValueError("a log-scale range takes no step; drop log or step")
        return self


class TuneSettings(Frozen):
    """The Optuna study. `search_space` entries are searched; with `default_space` (the
    default) the family's default space fills in every hyperparameter that neither
    `search_space` nor the task's `model:` section sets (see `modelyard.search_space`).
    `max_epochs` unset: sized from the data per trial (about 1,500 optimizer steps)."""

    n_trials: int = Field(20, ge=1)
    max_epochs: int | None = Field(None, ge=1)
    pruner: Literal["asha", "median", "hyperband", "none"] = "asha"
    # Trials a worker trains at once as one stacked model (`modelyard.fused`): auto picks
    # from the device (`tuning.workers.fusion_width`), off trains one at a time.
    fuse: Literal["auto", "off"] | Annotated[int, Field(ge=1, le=64)] = "auto"
    storage: str | None = None
    default_space: bool = True
    search_space: dict[str, Distribution] = {}

    @field_validator("fuse", mode="before")
    @classmethod
    def _fuse_off(cls, value: object) -> object:
        """YAML reads a bare `off` as false (and `on` as true)."""
        return {False: "off", True: "auto"}.get(value, value) if isinstance(value, bool) else value

    @field_validator("storage")
    @classmethod
    def _no_password(cls, value: str | None) -> str | None:
        """params.yaml is committed, copied into dvc.lock and shown by `dvc params diff`."""
        if value is not None and redact(value) != value:
            raise ValueError(
                f"{redact(value)} holds a password; leave it out of params.yaml and give it to the "
                "driver instead: the PGPASSWORD environment variable or ~/.pgpass"
            )
        return value

    @model_validator(mode="after")
    def _known_hparams(self) -> TuneSettings:
        fields = Hyperparams.model_fields
        for name, dist in self.search_space.items():
            if name not in fields:
                raise ValueError(f"search_space.{name}: unknown hyperparameter; allowed: {', '.join(fields)}")
            kind = hparam_kind(name)
            if dist.choices is None and kind not in (int, float):
                raise ValueError(f"search_space.{name}: {name} takes choices, not a low/high range")
            if kind is int and dist.step is not None and not dist.step.is_integer():
                raise ValueError(f"search_space.{name}: {name} is an integer; its step must be a whole number")
            values = dist.choices if dist.choices is not None else (dist.low, dist.high)
            for value in values:
                _check_hparam_value(name, value)
        return self


def _check_hparam_value(name: str, value: Any) -> None:
    """A search-space value must be a value the hyperparameter itself accepts."""
    try:
        Hyperparams.model_validate({name: value})
    except ValidationError as exc:
        reason = exc.errors()[0]["msg"]
        raise ValueError(f"search_space.{name}: {_shown(value)} is not allowed: {reason}") from None


class TrainSettings(Frozen):
    """The final training run (see `training` for the recipe). `max_epochs` unset: sized
    from the data, about 3,000 optimizer steps (20 to 500 epochs)."""

    max_epochs: int | None = Field(None, ge=1)
    patience: int = Field(10, ge=1)
    min_epochs: int = Field(5, ge=0)
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup: float = Field(0.05, ge=0.0, lt=1.0)
    grad_clip: float | None = Field(1.0, gt=0.0)
    # Seeds of the best configuration trained and averaged (probabilities, or values) into
    # the one registered model. 3 by default: averaging seeds reliably removes part of a
    # network's variance (most on small data) for about a third more compute than tuning
    # alone takes (a study trains ~20 trials of ~1,500 steps, a member ~3,000); 1 turns it off.
    ensemble: int = Field(3, ge=1, le=32)


class RegistrySettings(Frozen):
    """When a new model replaces the champion: it must beat it on the same test rows by at
    least `min_improvement` (in metric units) and the paired test must be significant at
    `confidence`. `test: auto` is McNemar's test for accuracy, a paired bootstrap otherwise."""

    metric: str | None = None
    test: Literal["auto", "bootstrap", "mcnemar"] = "auto"
    min_improvement: float = Field(0.0, ge=0.0)
    confidence: float = Field(0.95, ge=0.5, lt=1.0)
    n_bootstrap: int = Field(1000, ge=100, le=100_000)


class TaskSettings(Frozen):
    """One task: data source + target + problem type + model family + features + training."""

    source: SourceSettings
    target: str
    problem: Problem
    family: Literal["ann", "cnn", "lstm"] = "ann"
    positive_label: str | None = None
    metric: Literal["accuracy", "loss", "rmse", "mae"] | None = None
    schema_: SchemaSettings = Field(alias="schema")
    split: SplitSettings = SplitSettings()
    features: FeatureSettings = FeatureSettings()
    model: Hyperparams = Hyperparams()
    tune: TuneSettings = TuneSettings()
    train: TrainSettings = TrainSettings()
    registry: RegistrySettings = RegistrySettings()

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _consistent(self) -> TaskSettings:
        columns = self.schema_.columns
        if self.target not in columns:
            raise ValueError(f"target {self.target!r} is not a column in schema.columns; declare it there")
        target_col = columns[self.target]
        classification = self.problem != "regression"
        if classification and target_col.type != "category":
            raise ValueError(f"target {self.target!r} of a {self.problem} task must be a category column")
        if not classification and target_col.type == "category":
            raise ValueError(f"target {self.target!r} of a regression task must be numeric")
        if self.problem == "binary" and (target_col.categories is None or len(target_col.categories) != 2):
            raise ValueError(f"a binary task needs exactly 2 categories for target {self.target!r}")
        if self.positive_label is not None:
            if self.problem != "binary":
                raise ValueError("positive_label applies to binary tasks only")
            if self.positive_label not in (target_col.categories or ()):
                raise ValueError(f"positive_label {self.positive_label!r} is not one of the target's categories")
        if self.metric in ("rmse", "mae") and classification:
            raise ValueError(f"metric {self.metric!r} is for regression; use accuracy or loss")
        if self.metric == "accuracy" and not classification:
            raise ValueError("metric 'accuracy' is for classification; use rmse, mae or loss")
        self._check_losses()
        self._check_depth()
        categorical = set(self.schema_.names("category")) - {self.target}
        for column in self.features.encoders:
            if column not in categorical:
                raise ValueError(
                    f"features.encoders.{column}: not a categorical feature column; "
                    f"categorical columns: {', '.join(sorted(categorical)) or 'none'}"
                )
        used = {self.features.encoder_for(c) for c in categorical}
        if self.problem == "multiclass" and used & TARGET_ENCODERS:
            raise ValueError(
                f"encoders {sorted(used & TARGET_ENCODERS)} need a binary or numeric target; "
                "use onehot, ordinal, binary, basen, hashing or a contrast encoder for multiclass tasks"
            )
        if "woe" in used and self.problem != "binary":
            raise ValueError("the woe encoder needs a binary target")
        self._check_family()
        self._check_family_hparams()  # after the family itself: a wrong family is the problem to name
        if self.registry.test == "mcnemar" and self.promotion_metric != "test_accuracy":
            raise ValueError("registry.test 'mcnemar' compares accuracy: set registry.metric: accuracy")
        return self

    def _check_family(self) -> None:
        """The family, its data settings, the problem type and the source fit together."""
        sections = [name for name in ("series", "sequence", "text") if getattr(self.features, name) is not None]
        if self.family != "lstm" and sections:
            raise ValueError(f"features.{sections[0]} goes with family 'lstm', not {self.family!r}")
        if self.family == "lstm" and len(sections) != 1:
            raise ValueError("family 'lstm' needs one of features.series, features.sequence or features.text")
        if self.schema_.image is not None and self.family != "cnn":
            raise ValueError("schema.image goes with family 'cnn'")
        builtin_family = {"adult": "ann", "digits": "cnn", "mnist": "cnn", "co2": "lstm"}
        if self.source.builtin and builtin_family[self.source.builtin] != self.family:
            raise ValueError(
                f"the built-in {self.source.builtin!r} dataset goes with family {builtin_family[self.source.builtin]!r}"
            )
        arrays = self.source.path and not self.source.is_table
        if arrays and self.kind not in ("images", "sequence"):
            raise ValueError("folders, arrays and IDX files are sources of image (cnn) or sequence tasks")
        columns = self.schema_.columns
        if self.kind in ("images", "text", "sequence") and self.problem == "regression":
            raise ValueError(f"a {self.kind} task classifies: use problem binary or multiclass")
        if self.kind == "series":
            time = self.schema_.time
            if self.problem != "regression":
                raise ValueError("a forecasting (series) task has problem: regression")
            if time is None or time not in columns or columns[time].type != "datetime":
                raise ValueError("a forecasting task needs schema.time: a datetime column in schema.columns")
            for name in self.forecast_targets:
                if name not in columns or columns[name].type not in ("integer", "number"):
                    raise ValueError(f"series target {name!r} must be a numeric column in schema.columns")
        sequence = self.features.sequence
        if sequence is not None and not (arrays or {sequence.id, sequence.step} <= set(columns)):
            raise ValueError("features.sequence.id and .step must be columns in schema.columns")
        text = self.features.text
        if text is not None and (text.column not in columns or columns[text.column].type != "text"):
            raise ValueError(f"features.text.column {text.column!r} must be a text column in schema.columns")
        self._check_split()
        archs = {"series": ("lstm",), "sequence": ("fcn", "resnet", "lstm"), "text": ("bag", "lstm")}.get(self.kind, ())
        searched = self.tune.search_space.get("arch")
        for arch in {self.model.arch, *((searched.choices or ()) if searched else ())} - {"auto"}:
            if arch not in archs:
                raise ValueError(
                    f"arch {arch!r} does not fit a {self.kind} task; "
                    + (f"use one of: {', '.join(archs)}" if archs else "leave arch out (auto)")
                )

    def _check_family_hparams(self) -> None:
        """Every hyperparameter the task sets (`model:`) or searches is one its family uses."""
        allowed = family_hparams(self.family)
        for section, names in (("model", self.model.model_fields_set), ("tune.search_space", self.tune.search_space)):
            for name in sorted(set(names) - set(allowed)):
                raise ValueError(
                    f"{section}.{name}: the {self.family} family does not use {name}; "
                    f"its hyperparameters: {', '.join(allowed)}"
                )

    def _check_depth(self) -> None:
        """An LSTM stacks at least one layer; depth 0 (a linear model) is the MLP's."""
        if self.family != "lstm":
            return
        searched_archs = self.tune.search_space.get("arch")
        if "lstm" not in {self.arch, *((searched_archs.choices or ()) if searched_archs else ())}:
            return
        searched = self.tune.search_space.get("n_layers")
        depths = [self.model.n_layers]
        if searched is not None:
            depths += list(searched.choices) if searched.choices is not None else [searched.low]
        if min(depths) < 1:
            raise ValueError("n_layers must be at least 1 for an LSTM; 0 (a linear model) is for the ann family")

    def _check_losses(self) -> None:
        """The loss (fixed or searched) suits the problem; label smoothing is for classes."""
        searched = self.tune.search_space.get("loss")
        for loss in {self.model.loss, *((searched.choices or ()) if searched else ())} - {"auto"}:
            if loss not in LOSSES[self.problem]:
                raise ValueError(
                    f"loss {loss!r} is not for {self.problem} tasks; use one of: {', '.join(LOSSES[self.problem])}"
                )
            if loss in TARGET_UNIT_LOSSES and self.kind == "series":
                raise ValueError(
                    f"loss {loss!r} needs target values; a forecaster learns changes: use mse, mae or huber"
                )
        if self.problem == "regression" and self.model.label_smoothing > 0:
            raise ValueError("model.label_smoothing is for classification tasks")

    def _check_split(self) -> None:
        """A split column is a declared category column (never a feature); a test file is a table."""
        column = self.split.column
        if column is not None:
            declared = self.schema_.columns.get(column)
            if column == self.target or declared is None or declared.type != "category":
                raise ValueError(
                    f"split.column {column!r} must be a category column in schema.columns (not the target) "
                    "holding train / val / test"
                )
            if self.kind in ("images", "series"):
                raise ValueError(f"split.column does not apply to {self.kind} tasks")
        test = self.source.test
        if test is not None:
            if not self.source.is_table or Path(test).suffix.lower() not in TABLE_SUFFIXES:
                raise ValueError("source.test is a .csv or .parquet table of test rows, beside a table source.path")
            if column is not None:
                raise ValueError("give either source.test or split.column, not both")

    @property
    def kind(self) -> Literal["tabular", "images", "series", "sequence", "text"]:
        """What the rows are: tabular (ann), images (cnn), a series to forecast, sequences
        or texts to classify (lstm)."""
        if self.family == "ann":
            return "tabular"
        if self.family == "cnn":
            return "images"
        for kind in ("series", "sequence"):
            if getattr(self.features, kind) is not None:
                return kind
        return "text"

    @property
    def arch(self) -> str:
        """The network of an lstm-family task (the kind's default for `auto`)."""
        default = {"sequence": "fcn", "text": "bag", "series": "lstm"}.get(self.kind, "auto")
        return default if self.model.arch == "auto" else self.model.arch

    @property
    def forecast_targets(self) -> tuple[str, ...]:
        """The series columns a forecasting task predicts (the target unless features.series.targets names more)."""
        series = self.features.series
        return (series.targets or (self.target,)) if series is not None else ()

    @property
    def monitor(self) -> str:
        """The validation metric that drives early stopping, pruning and the tuning objective."""
        default = "rmse" if self.problem == "regression" else "accuracy"
        return f"val_{self.metric or default}"

    @property
    def promotion_metric(self) -> str:
        """The test metric on which a new model must beat the champion."""
        default = {"binary": "roc_auc", "multiclass": "accuracy", "regression": "rmse"}[self.problem]
        return f"test_{self.registry.metric or default}"


class Settings(Frozen):
    """The whole params.yaml."""

    seed: int = Field(0, ge=0, lt=2**32)  # numpy, sklearn and Optuna take seeds in [0, 2**32)
    device: Device = "auto"
    tasks: dict[str, TaskSettings]

    @field_validator("tasks")
    @classmethod
    def _task_names(cls, tasks: dict[str, TaskSettings]) -> dict[str, TaskSettings]:
        for name in tasks:
            if not TASK_NAME.match(name):
                raise ValueError(f"task name {name!r}: use lowercase letters, digits, '-' and '_'")
        return tasks

    def task(self, name: str) -> TaskSettings:
        """One task's settings, or an error that lists the tasks params.yaml declares."""
        if name not in self.tasks:
            raise ModelyardError(
                f"no task {name!r} in params.yaml", f"use one of: {', '.join(self.tasks) or '(none declared)'}"
            )
        return self.tasks[name]


def metric_samples(problem: Problem, y_val: Any) -> int:
    """How many validation samples can tell two models' metric apart: every sample of a
    regression, and for a classifier those outside the most common class.

    A constant prediction of the most common class gets exactly those wrong, and classifiers
    worth comparing differ on a share of them: with 3 % positives among 1,600 validation
    rows, accuracy is decided by about 50 of them, however many rows there are."""
    import numpy as np

    labels = np.asarray(y_val)
    if problem == "regression" or labels.size == 0:
        return len(labels)
    return int(len(labels) - np.unique(labels, return_counts=True)[1].max())


def selection_metric(problem: Problem, monitor: str, n_samples: int) -> str:
    """What epochs, trials and final models are compared on: the monitored metric, or the
    validation loss for a classifier with fewer than MIN_METRIC_SAMPLES `metric_samples`."""
    if problem != "regression" and n_samples < MIN_METRIC_SAMPLES:
        return "val_loss"
    return monitor


def hparam_kind(name: str) -> type:
    annotation = typing.get_type_hints(Hyperparams)[name]
    return annotation if annotation in (int, float, bool) else object


def load_settings(path: Path) -> Settings:
    """Read and check params.yaml; every problem is reported with its key path."""
    if not path.is_file():
        raise ModelyardError(f"params file {path} not found", "run from the repository root or pass --params PATH")
    from ruamel.yaml import YAML, YAMLError

    try:
        # YAML 1.2, as DVC reads and rewrites params.yaml (`dvc exp run -S`): `yes`, `no`
        # and `on` stay text there, and 1e-3 is a number.
        raw = YAML(typ="safe", pure=True).load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ModelyardError(f"{path} is not UTF-8 text (byte {exc.start})", "re-save it as UTF-8") from None
    except YAMLError as exc:
        raise ModelyardError(f"{path} is not valid YAML: {exc}", "fix the syntax at the line shown") from None
    except RecursionError:
        raise ModelyardError(f"{path} nests too deeply to read", "flatten the nested lists or mappings") from None
    except ValueError as exc:  # PyYAML converting a value: 2020-13-01 as a date, an int of 5000 digits
        reason = str(exc).split(";")[0]
        raise ModelyardError(
            f"{path} has a value YAML cannot convert: {reason}", "quote it to keep it as text"
        ) from None
    return parse_settings(raw, source=str(path))


def parse_settings(raw: Any, source: str = "params.yaml") -> Settings:
    """Validate a params mapping into `Settings`, with readable errors."""
    if not isinstance(raw, dict):
        raise ModelyardError(
            f"{source} must hold a mapping with a 'tasks:' section, not {type(raw).__name__}",
            "write it as 'key: value' lines, starting with 'tasks:'",
        )
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        lines = [_describe(err) for err in exc.errors()]
        raise ModelyardError(f"{source} has {len(lines)} problem(s):\n" + "\n".join(lines), "edit those keys") from None


def _describe(err: Any) -> str:
    key = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-after"))
    if err["type"] == "extra_forbidden":
        parent = _model_at(err["loc"][:-1])
        allowed = ", ".join(_aliases(parent)) if parent else ""
        return f"  - {key}: unknown key" + (f"; allowed: {allowed}" if allowed else "")
    message = err["msg"].removeprefix("Value error, ")
    return f"  - {key}: {message}" + (f" (got {_shown(err['input'])})" if err["type"] != "value_error" else "")


def _shown(value: Any) -> str:
    """A short repr of a user's value, also for huge integers and deeply nested junk."""
    try:
        return reprlib.repr(value)
    except ValueError:  # an int past Python's 4300-digit limit for str(), maybe inside a list
        return "a value too large to show"


def _aliases(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The settings class found at a location, to list its allowed keys."""
    model: Any = Settings
    for part in loc:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        fields = {f.alias or n: f for n, f in model.model_fields.items()}
        if part in fields:
            model = fields[part].annotation
            model = _dict_value(model) if _dict_value(model) else model
        elif isinstance(part, str) and model in (Settings,):
            return None
        else:
            continue
    if isinstance(model, type) and issubclass(model, BaseModel):
        return model
    return None


def _dict_value(annotation: Any) -> Any:
    if typing.get_origin(annotation) is dict:
        return typing.get_args(annotation)[1]
    return None
