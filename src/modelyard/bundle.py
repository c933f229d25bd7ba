"""The model bundle: fitted preprocessing + network + what is needed to rebuild both.

A bundle turns raw rows (the columns of the source data, strings and numbers as read)
into predictions. It is what evaluation scores, what the registry wraps as an MLflow
pyfunc model, and it imports no MLflow.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from modelyard.config import Hyperparams, Problem, SchemaSettings
from modelyard.data.sources import conform
from modelyard.errors import ModelyardError
from modelyard.features import TabularPreprocessor, TargetCodec
from modelyard.files import atomic_path
from modelyard.models import build_model
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
    preprocessor: TabularPreprocessor
    codec: TargetCodec
    network: nn.Module
    reference: pd.DataFrame | None = None  # a sample of the training rows, for drift checks

    @property
    def input_columns(self) -> list[str]:
        return [c for c in self.schema.columns if c != self.target]

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Raw rows in, a frame out: `probability` and `label` (binary: probability of the
        positive class; multiclass: of the predicted label, plus `prob_<class>` columns),
        or `prediction` (regression)."""
        missing = [c for c in self.input_columns if c not in frame.columns]
        if missing:
            raise ModelyardError(
                f"input lacks column(s) {', '.join(missing)}", f"the model expects: {', '.join(self.input_columns)}"
            )
        rows = conform(frame[self.input_columns], self.schema)
        output = predict(self.network, self.preprocessor.transform(rows), self.problem)
        if self.problem == "regression":
            return pd.DataFrame({"prediction": self.codec.decode_values(output)})
        classes = np.asarray(self.codec.classes_, dtype=object)
        if self.problem == "binary":
            return pd.DataFrame({"probability": output, "label": classes[(output >= 0.5).astype(int)]})
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
                "hparams": self.hparams.model_dump(),
                "schema": self.schema.model_dump(mode="json"),
                "n_inputs": self.preprocessor.n_features_out_,
                "n_outputs": n_outputs(self.problem, self.codec),
            }
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
            network = build_model(meta["family"], meta["n_inputs"], meta["n_outputs"], hparams)
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
        )


def n_outputs(problem: Problem, codec: TargetCodec) -> int:
    """Width of the network's last layer: one logit for binary and regression, one per class otherwise."""
    return len(codec.classes_) if problem == "multiclass" else 1


def prediction_outputs(predictions: pd.DataFrame, problem: Problem, classes: list[str]) -> np.ndarray:
    """Back from a prediction frame to the array metrics take (the inverse of `predict`'s layout)."""
    if problem == "regression":
        return predictions["prediction"].to_numpy(dtype=float)
    if problem == "binary":
        return predictions["probability"].to_numpy(dtype=float)
    return predictions[[f"prob_{c}" for c in classes]].to_numpy(dtype=float)
