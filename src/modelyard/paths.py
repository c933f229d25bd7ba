"""Where each stage reads and writes: one place, mirrored by dvc.yaml's deps and outs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from modelyard.errors import ModelyardError


def find_root(start: Path | None = None) -> Path:
    """The repository root: the nearest folder upwards holding dvc.yaml and params.yaml."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "params.yaml").is_file() and (folder / "dvc.yaml").is_file():
            return folder
    raise ModelyardError(
        f"no modelyard repository (dvc.yaml + params.yaml) at or above {here}", "cd into the repository"
    )


def home_root(root: Path) -> Path:
    """The user's own checkout, also when DVC runs an experiment in `.dvc/tmp/exps/<tmp>`.

    The MLflow store and Optuna studies live there, so a queued or temp experiment's runs
    land beside all the others instead of in a throwaway copy.
    """
    parts = root.resolve().parts
    for i in range(len(parts) - 3):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return root.resolve()


@dataclass(frozen=True)
class TaskPaths:
    """Every file a task's stages produce, under data/<task>/ (or `staging`, a scratch
    folder whose files replace those of data/<task>/ only once a retrain succeeds)."""

    root: Path
    task: str
    staging: Path | None = None

    @property
    def dir(self) -> Path:
        return self.staging or self.root / "data" / self.task

    @property
    def raw(self) -> Path:
        return self.dir / "raw.parquet"

    @property
    def ingest_summary(self) -> Path:
        return self.dir / "ingest.json"

    @property
    def validation_summary(self) -> Path:
        return self.dir / "validation.json"

    @property
    def data_docs(self) -> Path:
        return self.dir / "data_docs"

    @property
    def split_dir(self) -> Path:
        return self.dir / "split"

    def split_file(self, part: str) -> Path:
        return self.split_dir / f"{part}.parquet"

    @property
    def features(self) -> Path:
        return self.dir / "features.npz"

    @property
    def preprocessor(self) -> Path:
        return self.dir / "preprocessor.pkl"

    @property
    def best_params(self) -> Path:
        return self.dir / "best_params.json"

    @property
    def best_trial(self) -> Path:
        """The best trial's weights and validation metrics (no weights when that trial ran on another machine)."""
        return self.dir / "best_trial.pt"

    def trial_checkpoints(self, study: str) -> Path:
        """Weights of a study's best-so-far trials, beside its journal (never a DVC output)."""
        return home_root(self.root) / "data" / self.task / "trials" / study

    @property
    def study_journal(self) -> Path:
        """The default Optuna storage: kept in the user's checkout, never a DVC output."""
        return home_root(self.root) / "data" / self.task / "optuna.journal"

    @property
    def model_dir(self) -> Path:
        return self.dir / "model"

    @property
    def train_summary(self) -> Path:
        return self.dir / "train.json"

    @property
    def metrics(self) -> Path:
        return self.dir / "metrics.json"

    @property
    def plots_dir(self) -> Path:
        return self.dir / "plots"

    @property
    def train_curves(self) -> Path:
        """The final training run's per-epoch losses and validation metrics (a DVC plot)."""
        return self.dir / "curves" / "train.csv"

    @property
    def registry_decision(self) -> Path:
        return self.dir / "registry.json"

    @property
    def retrain_lock(self) -> Path:
        """Held while a retrain or rollback of the task runs (in the user's checkout)."""
        return home_root(self.root) / "data" / self.task / "retrain.lock"

    @property
    def retrain_summary(self) -> Path:
        return self.dir / "retrain.json"
