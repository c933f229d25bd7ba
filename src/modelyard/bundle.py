"""The model bundle: fitted preprocessing + network + what is needed to rebuild both.

A bundle turns raw input into predictions: rows as the source file has them (tabular and
text tasks), images (an array of any layout `as_image_layout` reads, or an image frame),
or the history of a series (forecasts from every point of it). It is what evaluation
scores, what the registry wraps as an MLflow pyfunc model, and it imports no MLflow.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from modelyard.config import Hyperparams, Problem, SchemaSettings
from modelyard.data.sources import conform
from modelyard.errors import ModelyardError
from modelyard.features import Preprocessor, TargetCodec
from modelyard.files import atomic_path
from modelyard.models import Ensemble, build_model
from modelyard.training import predict

FORMAT_VERSION = 1
REFERENCE_FILE = "reference.parquet"
REFERENCE_ROWS = 5000


@dataclass
class ModelBundle:
    family: str
    problem: Problem
    hparams: Hyperparams
    schema: SchemaSettings
    target: str
    preprocessor: Preprocessor
    codec: TargetCodec | None  # None for forecasting: the preprocessor makes the targets
    network: nn.Module
    reference: pd.DataFrame | None = None  # a sample of the training rows, for drift checks
    kind: str = "tabular"
    threshold: float = 0.5  # binary: the positive class from this probability on

    @property
    def n_members(self) -> int:
        """How many networks the model averages (1: a single network)."""
        return len(self.network.members) if isinstance(self.network, Ensemble) else 1

    @property
    def input_columns(self) -> list[str]:
        """The raw columns the model reads (its kind's preprocessor knows them)."""
        return self.preprocessor.input_columns(self.schema)

    def predict(self, data: pd.DataFrame | np.ndarray) -> pd.DataFrame:
        """Raw input in, a frame out: `probability` and `label` (binary: probability of the
        positive class; multiclass: of the predicted label, plus `prob_<class>` columns),
        `prediction` (regression), or for a series `origin`, `time`, `step` and one column
        per target (a forecast from each point of the history given)."""
        from modelyard.kinds import KINDS  # loaded where a model predicts, not where one is sized

        if isinstance(data, np.ndarray) and KINDS[self.kind].takes_arrays:
            rows: pd.DataFrame | np.ndarray = data
        else:
            frame = pd.DataFrame(data) if not isinstance(data, pd.DataFrame) else data
            missing = [c for c in self.input_columns if c not in frame.columns]
            if missing:
                raise ModelyardError(
                    f"input lacks column(s) {', '.join(missing)}", f"the model expects: {', '.join(self.input_columns)}"
                )
            rows = conform(frame[self.input_columns], self.schema)
        return self.preprocessor.predictions(rows, lambda x: predict(self.network, x, self.problem), self._decode)

    def _decode(self, output: np.ndarray) -> pd.DataFrame:
        if self.problem == "regression":
            return pd.DataFrame({"prediction": self.codec.decode_values(output)})
        classes = np.asarray(self.codec.classes_, dtype=object)
        if self.problem == "binary":
            return pd.DataFrame({"probability": output, "label": classes[(output >= self.threshold).astype(int)]})
        result = pd.DataFrame({"probability": output.max(axis=1), "label": classes[output.argmax(axis=1)]})
        for i, name in enumerate(self.codec.classes_):
            result[f"prob_{name}"] = output[:, i]
        return result

    def save(self, directory: Path) -> None:
        """Write the bundle folder atomically: weights, pickled preprocessing, readable metadata."""
        with atomic_path(directory) as temporary:
            temporary.mkdir()
            torch.save(self.network.state_dict(), temporary / "network.pt")
            with open(temporary / "preprocessing.pkl", "wb") as handle:
                pickle.dump({"preprocessor": self.preprocessor, "codec": self.codec}, handle)
            meta = {
                "format": FORMAT_VERSION,
                "family": self.family,
                "problem": self.problem,
                "target": self.target,
                "kind": self.kind,
                "hparams": self.hparams.model_dump(),
                "schema": self.schema.model_dump(mode="json"),
                "input_shape": list(self.preprocessor.input_shape_),
                "ensemble": self.n_members,
                "threshold": self.threshold,
            }
            size = network_size(self.problem, self.preprocessor, self.codec)
            meta |= {key: size[key] for key in ("vocab_size", "masked", "n_numeric", "n_outputs")}
            (temporary / "meta.json").write_text(json.dumps(meta, indent=2))
            if self.reference is not None:
                self.reference.to_parquet(temporary / REFERENCE_FILE, index=False)

    @classmethod
    def load(cls, directory: Path) -> ModelBundle:
        """Read a bundle folder; a missing or damaged one is a clear error."""
        try:
            meta = json.loads((directory / "meta.json").read_text())
            if meta.get("format") != FORMAT_VERSION:
                raise ValueError(f"bundle format {meta.get('format')} is not {FORMAT_VERSION}")
            with open(directory / "preprocessing.pkl", "rb") as handle:
                parts = pickle.load(handle)
            hparams = Hyperparams.model_validate(meta["hparams"])
            shape = tuple(meta.get("input_shape") or [meta["n_inputs"]])
            members = [
                build_model(
                    meta["family"],
                    shape,
                    meta["n_outputs"],
                    hparams,
                    meta.get("vocab_size"),
                    meta.get("masked", False),
                    meta.get("n_numeric", 0),
                )
                for _ in range(meta.get("ensemble", 1))
            ]
            network = members[0] if len(members) == 1 else Ensemble(members, meta["problem"])
            network.load_state_dict(torch.load(directory / "network.pt", map_location="cpu", weights_only=True))
            reference_path = directory / REFERENCE_FILE
            reference = pd.read_parquet(reference_path) if reference_path.exists() else None
        except (OSError, ValueError, KeyError, EOFError, pickle.UnpicklingError, RuntimeError) as exc:
            raise ModelyardError(
                f"the model at {directory} is missing or damaged ({type(exc).__name__}: {exc})",
                "retrain it: dvc repro (or modelyard train --task <task>)",
            ) from None
        network.eval()
        return cls(
            family=meta["family"],
            problem=meta["problem"],
            hparams=hparams,
            schema=SchemaSettings.model_validate(meta["schema"]),
            target=meta["target"],
            preprocessor=parts["preprocessor"],
            codec=parts["codec"],
            network=network,
            reference=reference,
            kind=meta.get("kind", "tabular"),
            threshold=meta.get("threshold", 0.5),
        )


def n_outputs(problem: Problem, codec: TargetCodec | None, preprocessor: Preprocessor) -> int:
    """Width of the network's last layer: one logit for binary and regression, one per class
    for multiclass, horizon x targets for forecasting."""
    if hasattr(preprocessor, "n_outputs_"):
        return preprocessor.n_outputs_
    return len(codec.classes_) if problem == "multiclass" else 1


def network_size(problem: Problem, preprocessor: Preprocessor, codec: TargetCodec | None) -> dict[str, Any]:
    """What sizes a network beyond its input shape, from the fitted preprocessing: outputs,
    vocabulary, step mask, numeric columns, and the target's scale (regression)."""
    return {
        "n_outputs": n_outputs(problem, codec, preprocessor),
        "vocab_size": getattr(preprocessor, "vocab_size_", None),
        "masked": getattr(preprocessor, "masked_", False),
        "n_numeric": getattr(preprocessor, "n_numeric_", 0),
        "target_scale": getattr(preprocessor, "target_scale_", getattr(codec, "scale_", 1.0)),
        "target_offset": getattr(codec, "mean_", 0.0),
    }


def prediction_outputs(predictions: pd.DataFrame, problem: Problem, classes: list[str]) -> np.ndarray:
    """Back from a prediction frame to the array metrics take (the inverse of `predict`'s layout)."""
    if problem == "regression":
        return predictions["prediction"].to_numpy(dtype=float)
    if problem == "binary":
        return predictions["probability"].to_numpy(dtype=float)
    return predictions[[f"prob_{c}" for c in classes]].to_numpy(dtype=float)
