"""The MLflow Model Registry: the bundle as a pyfunc model, versions, and the
`challenger` / `champion` aliases.

`champion` moves only after everything else succeeded (the old champion was scored, the
new version exists), so a failure at any step leaves it where it was.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from modelyard.bundle import ModelBundle
from modelyard.evaluation import lower_is_better

CHAMPION = "champion"
CHALLENGER = "challenger"
RUNTIME_PACKAGES = ("torch", "pandas", "numpy", "scikit-learn", "category-encoders", "pydantic", "pyyaml", "mlflow")


class BundleModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: raw rows in, predictions out, through the bundle's saved preprocessing."""

    def load_context(self, context: Any) -> None:
        self.bundle = ModelBundle.load(Path(context.artifacts["bundle"]))

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        return self.bundle.predict(model_input)


def log_bundle(run_id: str, bundle_dir: Path, bundle: ModelBundle, sample: pd.DataFrame) -> str:
    """Log the bundle as the run's pyfunc model, with signature and input example; returns its URI."""
    example = sample[bundle.input_columns].head(5)
    signature = infer_signature(example, bundle.predict(example))
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=BundleModel(),
            artifacts={"bundle": str(bundle_dir)},
            signature=signature,
            input_example=example,
            pip_requirements=[f"{name}=={version(name)}" for name in RUNTIME_PACKAGES],
            code_paths=[str(Path(__file__).parent)],
        )
    return info.model_uri


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
    score: Callable[[str], float],
) -> dict[str, Any]:
    """Register a new version as `challenger`; make it `champion` if it beats the current one.

    `score(model_uri)` rates a model on the current test split with `metric`; the current
    champion is rated the same way, so both are compared on the same rows.
    """
    current = champion_version(client, name)
    champion_value = score(f"models:/{name}@{CHAMPION}") if current is not None else None
    if champion_value is None:
        promote, reason = True, "first version: no champion yet"
    else:
        better = challenger_value < champion_value if lower_is_better(metric) else challenger_value > champion_value
        promote = better
        verb = "beats" if better else "does not beat"
        reason = f"{metric} {challenger_value:.4f} {verb} champion v{current.version} {champion_value:.4f}"
    created = mlflow.register_model(model_uri, name, tags={"modelyard.run_id": run_id})
    for key, value in {
        metric: f"{challenger_value:.6f}",
        "modelyard.decision": "promoted" if promote else "kept champion",
        "modelyard.reason": reason,
    }.items():
        client.set_model_version_tag(name, created.version, key, value)
    client.set_registered_model_alias(name, CHALLENGER, created.version)
    if promote:
        client.set_registered_model_alias(name, CHAMPION, created.version)
    return {
        "model": name,
        "version": int(created.version),
        "promoted": promote,
        "reason": reason,
        "metric": metric,
        "challenger_value": challenger_value,
        "champion_value": champion_value,
        "previous_champion_version": int(current.version) if current is not None else None,
    }
