"""Adult with the default budgets: plain MLP, MLP-PLR and MLP-PLR as a 3-seed ensemble,
over several pipeline seeds, beside HistGradientBoosting on the same split.

Per seed: one project (ingest -> featurize once), a study of the plain MLP and one of the
MLP-PLR (params.yaml's adult task, `model.numeric_embedding` none / periodic, `train.ensemble`
1); the PLR study's best configuration is then trained again as an ensemble of 3 (only
train differs, so the two PLR rows share their study). HistGradientBoosting fits the same
train + validation rows and scores the same test rows.

    python bench/adult_variants.py --seeds 0 1 2 --json bench/results/adult_variants.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
TASK = "adult"
VARIANTS = {  # name: (numeric_embedding, ensemble members)
    "mlp": ("none", 1),
    "mlp_plr": ("periodic", 1),
    "mlp_plr_ensemble3": ("periodic", 3),
}


def with_variant(params: dict[str, Any], embedding: str, members: int) -> dict[str, Any]:
    task = params["tasks"][TASK]
    task["model"]["numeric_embedding"] = embedding
    task["train"]["ensemble"] = members
    return params


def run_seed(seed: int, workdir: Path) -> dict[str, dict[str, float]]:
    """Every variant and the gradient-boosting peer for one pipeline seed."""
    from modelyard import stages
    from modelyard.config import parse_settings
    from modelyard.files import read_json

    base = yaml.safe_load((REPO / "params.yaml").read_text())
    base["seed"] = seed
    base["tasks"] = {TASK: base["tasks"][TASK]}
    results: dict[str, dict[str, float]] = {}
    studies: dict[str, tuple[Path, float]] = {}  # embedding -> (project, tune seconds)
    for name, (embedding, members) in VARIANTS.items():
        params = with_variant(json.loads(json.dumps(base)), embedding, members)
        if embedding in studies:
            root, tune_s = studies[embedding]
        else:
            root = workdir / f"seed{seed}-{embedding}"
            (root / "data").mkdir(parents=True)
            shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
            os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
            ctx = stages.Context(root, parse_settings(params), TASK)
            for stage in (stages.ingest, stages.validate, stages.split, stages.featurize):
                stage(ctx)
            start = time.perf_counter()
            stages.tune(ctx)
            tune_s = time.perf_counter() - start
            studies[embedding] = (root, tune_s)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
        ctx = stages.Context(root, parse_settings(params), TASK)
        start = time.perf_counter()
        stages.train(ctx)
        stages.evaluate(ctx)
        results[name] = {
            "test_accuracy": read_json(ctx.paths.metrics)["test_accuracy"],
            "tune_s": tune_s,
            "train_evaluate_s": time.perf_counter() - start,
            "source": read_json(ctx.paths.train_summary)["source"],
        }
    results["hist_gradient_boosting"] = gradient_boosting(ctx)
    return results


def gradient_boosting(ctx: Any) -> dict[str, float]:
    """HistGradientBoosting (native categorical support) on the project's own split."""
    import pandas as pd
    from sklearn.ensemble import HistGradientBoostingClassifier

    task = ctx.task
    fit_rows = pd.concat([ctx.read_split("train"), ctx.read_split("val")], ignore_index=True)
    test = ctx.read_split("test")
    features = [c for c in fit_rows.columns if c != task.target]
    categorical = [c for c in features if c in task.schema_.names("category")]

    def frame(rows: pd.DataFrame) -> pd.DataFrame:
        return rows[features].astype({c: "category" for c in categorical})

    start = time.perf_counter()
    model = HistGradientBoostingClassifier(categorical_features="from_dtype", random_state=ctx.settings.seed)
    model.fit(frame(fit_rows), fit_rows[task.target].astype(str))
    accuracy = float((model.predict(frame(test)) == test[task.target].astype(str)).mean())
    return {"test_accuracy": accuracy, "fit_s": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    load_start = os.getloadavg()
    by_seed: dict[int, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="adult_variants_") as tmp:
        for seed in args.seeds:
            by_seed[seed] = run_seed(seed, Path(tmp))
            print(f"seed {seed}: " + ", ".join(f"{k} {v['test_accuracy']:.4f}" for k, v in by_seed[seed].items()))
    print(f"{'variant':24} {'test accuracy mean':>18} {'sd':>7} {'tune s':>8} {'train+eval s':>13}")
    for name in [*VARIANTS, "hist_gradient_boosting"]:
        rows = [by_seed[s][name] for s in args.seeds]
        accuracies = [r["test_accuracy"] for r in rows]
        spread = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
        tune = statistics.mean(r.get("tune_s", 0.0) for r in rows)
        train = statistics.mean(r.get("train_evaluate_s", r.get("fit_s", 0.0)) for r in rows)
        print(f"{name:24} {statistics.mean(accuracies):18.4f} {spread:7.4f} {tune:8.1f} {train:13.1f}")
    print(f"seeds {args.seeds}; load average at start {load_start}, at end {os.getloadavg()}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"seeds": args.seeds, "results": by_seed}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
