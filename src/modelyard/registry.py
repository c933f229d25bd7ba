"""The MLflow Model Registry: the bundle as a pyfunc model, versions, and the
`challenger` / `champion` aliases.

`champion` moves only after everything else succeeded (the old champion was scored, the
new version exists), so a failure at any step leaves it where it was.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from modelyard.bundle import ModelBundle
from modelyard.errors import ModelyardError
from modelyard.promotion import Comparison
from modelyard.tracking import (
    TAG_AUDIT,
    TAG_CANDIDATE,
    TAG_CHAMPION,
    TAG_DECISION,
    TAG_DIGEST,
    TAG_EVENT,
    TAG_FALLBACK,
    TAG_OUTCOME,
    TAG_PREVIOUS,
    TAG_REASON,
    TAG_ROLLED_BACK_AT,
    TAG_RUN_ID,
)

CHAMPION = "champion"
CHALLENGER = "challenger"
RUNTIME_PACKAGES = (
    "torch",
    "pandas",
    "numpy",
    "scikit-learn",
    "category-encoders",
    "pydantic",
    "pyyaml",
    "pyarrow",
    "mlflow",
)


class BundleModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: raw rows in, predictions out, through the bundle's saved preprocessing."""

    def load_context(self, context: Any) -> None:
        self.bundle = ModelBundle.load(Path(context.artifacts["bundle"]))

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        return self.bundle.predict(model_input)


def log_bundle(
    run_id: str, bundle_dir: Path, bundle: ModelBundle, example: pd.DataFrame | np.ndarray, name: str
) -> str:
    """Log the bundle as the run's pyfunc model `name` (the task), with signature and input
    example (a few raw inputs); returns its URI.

    MLflow links the run's metrics of `step` 0 to a new logged model; epochs count from 1,
    so none are, and the caller links the figures that describe this model (`model_id`)."""
    signature = infer_signature(example, bundle.predict(example))
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=BundleModel(),
            artifacts={"bundle": str(bundle_dir)},
            signature=signature,
            input_example=example,
            pip_requirements=[f"{name}=={version(name)}" for name in RUNTIME_PACKAGES],
            code_paths=[str(Path(__file__).parent)],
        )
    return info.model_uri


def model_id(model_uri: str) -> str:
    """The logged model's id in a `models:/<id>` URI."""
    return model_uri.removeprefix("models:/").split("/")[0]


def mark_rolled_back(client: MlflowClient, name: str, version: str, when: str) -> None:
    """Tag a version that a rollback took `champion` away from with the rollback's time."""
    client.set_model_version_tag(name, version, TAG_ROLLED_BACK_AT, when)


def champion_version(client: MlflowClient, name: str) -> Any | None:
    """The model version holding the champion alias, or None."""
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def register(
    client: MlflowClient,
    name: str,
    model_uri: str,
    run_id: str,
    metric: str,
    challenger_value: float,
    judge: Callable[[str], Comparison],
) -> dict[str, Any]:
    """Register a new version as `challenger`; make it `champion` if the evidence says so.

    `judge(champion_uri)` compares the new model with the current champion on the current
    test split (see `modelyard.promotion`); the first version becomes champion outright.
    """
    current = champion_version(client, name)
    comparison = judge(f"models:/{name}@{CHAMPION}") if current is not None else None
    promote = comparison is None or comparison.promote
    reason = "first version: no champion yet" if comparison is None else comparison.reason
    digest = files_digest(model_uri)
    created = mlflow.register_model(model_uri, name, tags={TAG_RUN_ID: run_id, TAG_DIGEST: digest})
    for key, value in {
        metric: f"{challenger_value:.6f}",
        TAG_DECISION: "promoted" if promote else "kept champion",
        TAG_REASON: reason,
    }.items():
        client.set_model_version_tag(name, created.version, key, value)
    verdict = "Promoted to champion" if promote else "Kept as challenger; the champion stays"
    client.update_model_version(name, created.version, description=f"{verdict}: {reason}.")
    if not client.get_registered_model(name).description:
        client.update_registered_model(
            name,
            description=f"The models of task `{name}`: `@{CHAMPION}` serves (`models:/{name}@{CHAMPION}`); "
            f"`@{CHALLENGER}` is the newest version, promoted only when it beats the champion on "
            f"the test split ({metric}).",
        )
    client.set_registered_model_alias(name, CHALLENGER, created.version)
    if promote:
        client.set_registered_model_alias(name, CHAMPION, created.version)
    previous = int(current.version) if current is not None else None
    return {
        "model": name,
        "version": int(created.version),
        "promoted": promote,
        "reason": reason,
        "metric": metric,
        "challenger_value": challenger_value if comparison is None else comparison.challenger,
        "champion_value": None if comparison is None else comparison.champion,
        "comparison": None if comparison is None else comparison.to_dict(),
        "previous_champion_version": previous,
        "champion_version": int(created.version) if promote else previous,
    }


def set_champion(client: MlflowClient, name: str, version: int) -> None:
    client.set_registered_model_alias(name, CHAMPION, str(version))


def tree_digest(folder: Path) -> str:
    """One SHA-256 over the relative paths and contents of every file under `folder`, but
    `registered_model_meta`: MLflow writes the version's name and number there on download."""
    digest = hashlib.sha256()
    files = (p for p in folder.rglob("*") if p.is_file() and p.relative_to(folder) != Path("registered_model_meta"))
    for path in sorted(files):
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def download(model_uri: str, folder: str) -> Path:
    """A model's files, as the artifact store holds them, copied under `folder`."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=folder))


def files_digest(model_uri: str) -> str:
    """`tree_digest` of a logged model's files."""
    with tempfile.TemporaryDirectory() as folder:
        return tree_digest(download(model_uri, folder))


def load_champion(name: str, version: int | None = None) -> Any:
    """The pyfunc model `models:/<name>@champion` (or version `version`), loaded only once its
    files match the digest recorded when it was registered."""
    client = MlflowClient()
    entry = (
        client.get_model_version(name, str(version)) if version else client.get_model_version_by_alias(name, CHAMPION)
    )
    recorded = entry.tags.get(TAG_DIGEST)
    label = f"model {name} version {entry.version}"
    if recorded is None:
        raise ModelyardError(
            f"{label} has no file digest: it was registered before digests were recorded, or its tag was removed",
            "register a new version (dvc repro, or modelyard retrain --force) and promote it",
        )
    with tempfile.TemporaryDirectory() as folder:
        local = Path(
            mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{entry.version}", dst_path=folder)
        )
        if tree_digest(local) != recorded:
            raise ModelyardError(
                f"the files of {label} differ from those registered (SHA-256 mismatch): refusing to load them",
                "someone changed the model's artifacts; check who can write to the artifact store, "
                "then roll back (modelyard rollback) or register a new version",
            )
        return mlflow.pyfunc.load_model(str(local))


def bundle_of(model: Any) -> ModelBundle:
    """The bundle inside a loaded pyfunc model of ours."""
    return model.unwrap_python_model().bundle


def champion_bundle(client: MlflowClient, name: str) -> ModelBundle | None:
    """The champion's bundle (hyperparameters, training sample), or None if there is no
    usable champion; register reports a damaged one when it tries to score it."""
    if champion_version(client, name) is None:
        return None
    try:
        return bundle_of(load_champion(name))
    except Exception:
        return None


def decision_tags(event: str, decision: dict[str, Any]) -> dict[str, str]:
    """Audit tags of a register or retrain decision (`decision` as `register` returns it);
    a promotion's fallback is the champion it replaced."""
    promoted = decision["promoted"]
    tags = {
        TAG_AUDIT: "true",
        TAG_EVENT: event,
        TAG_OUTCOME: "promoted" if promoted else "kept champion",
        TAG_REASON: decision["reason"][:4000],
        TAG_CANDIDATE: str(decision["version"]),
    }
    if decision["champion_version"] is not None:
        tags[TAG_CHAMPION] = str(decision["champion_version"])
    if decision["previous_champion_version"] is not None:
        tags[TAG_PREVIOUS] = str(decision["previous_champion_version"])
    if promoted and decision["previous_champion_version"] is not None:
        tags[TAG_FALLBACK] = str(decision["previous_champion_version"])
    return tags
