"""Quality benchmark: with the defaults a user gets, is modelyard's model at least as good
as the classic baseline a data scientist tries first, on the same test rows?

Each dataset of `quality_datasets.py` is declared as a task in a throwaway project
(params.yaml + data/sources/, no budgets or search spaces) and run through the stage
commands; then the classic peers are fitted on that task's train + validation rows and
scored on its test rows: gradient boosting and a linear model for tables, 1-NN Euclidean
for series, TF-IDF + logistic regression for text.

With `--add`, each table is declared by `modelyard add NAME --source CSV --target COLUMN`
instead, exactly as a user with their own file would (schema, problem, encoders and
budgets inferred; no edits); sets with a published test file are left out then.

With `--seeds N`, each dataset runs N times, with params seeds 0..N-1: another split (unless
the set has a published test file) and another initialisation each time. One 100-row test
split moves a figure by a full point a row; the pooled figure over N splits is the steadier
one, and its standard error shrinks with the pooled samples.

    python bench/quality.py [--only wine,arrowhead] [--add] [--quick] [--seeds N]
                            [--workdir DIR [--reuse]] [--keep] [--out FILE] [--tune KEY=VALUE]
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from quality_datasets import DATASETS, Dataset, Prepared

REPO = Path(__file__).resolve().parents[1]
STAGES = ("ingest", "validate", "split", "featurize", "tune", "train", "evaluate")
TIMED = ("tune", "train", "evaluate")
QUICK = {"tune": {"n_trials": 2, "max_epochs": 2}, "train": {"max_epochs": 2}}
MARKER = ".modelyard-quality"  # a workdir this script made: safe to clear task outputs in
N_BOOTSTRAP = 1000
TAIL_LINES = 6
SAMPLES = "_samples"  # per-sample arrays of a result: pooled over seeds, never written to the JSON


@dataclass
class Peer:
    predictions: np.ndarray  # class labels (as text) or values, in the test samples' order
    seconds: float


@dataclass
class Samples:
    """A split's samples as the peers take them: features, and targets in modelyard's order."""

    x: Any
    y: np.ndarray


# ---------------------------------------------------------------- the throwaway project


def open_workdir(path: Path | None) -> Path:
    if path is None:
        path = Path(tempfile.mkdtemp(prefix="modelyard-quality-"))
    path.mkdir(parents=True, exist_ok=True)
    if any(path.iterdir()) and not (path / MARKER).exists():
        sys.exit(f"error: {path} is not empty and was not made by bench/quality.py; pick an empty or new folder")
    (path / MARKER).touch()
    return path.resolve()


def task_entry(project: Path, dataset: Dataset, prepared: Prepared, overrides: dict[str, dict]) -> dict[str, Any]:
    """Write the dataset's CSV file(s) under data/sources/ and return its params.yaml entry,
    with `overrides` ({section: {key: value}}) merged into its sections."""
    sources = project / "data" / "sources"
    sources.mkdir(parents=True, exist_ok=True)
    if prepared.test is None:
        source = {"path": f"data/sources/{dataset.name}.csv"}
        prepared.rows.to_csv(project / source["path"], index=False)
    else:
        source = {"path": f"data/sources/{dataset.name}_train.csv", "test": f"data/sources/{dataset.name}_test.csv"}
        prepared.rows.to_csv(project / source["path"], index=False)
        prepared.test.to_csv(project / source["test"], index=False)
    entry = {"source": source, **copy.deepcopy(prepared.task)}
    for section, values in overrides.items():
        entry[section] = {**entry.get(section, {}), **copy.deepcopy(values)}
    return entry


def write_params(project: Path, tasks: dict[str, dict[str, Any]], seed: int) -> None:
    """params.yaml, checked the way the stages read it; dvc.yaml only marks the project root."""
    from modelyard.config import load_settings

    (project / "params.yaml").write_text(
        yaml.safe_dump({"seed": seed, "device": "auto", "tasks": tasks}, sort_keys=False, allow_unicode=True),
        encoding="utf-8",
    )
    shutil.copy(REPO / "dvc.yaml", project / "dvc.yaml")
    load_settings(project / "params.yaml")


def added_entries(project: Path, entries: dict[str, dict[str, Any]], seed: int) -> dict[str, dict[str, Any]]:
    """Each entry declared again by `modelyard add` from its CSV and target alone, as a user
    would; the entries params.yaml then holds."""
    write_params(project, {}, seed)
    for name, entry in entries.items():
        command = [*modelyard_command(), "add", name, "--source", entry["source"]["path"], "--target", entry["target"]]
        done = subprocess.run(command, cwd=project, capture_output=True, text=True)
        log(f"  modelyard {' '.join(command[1:])}")
        if done.returncode != 0:
            sys.exit(f"error: modelyard add {name} failed:\n{done.stderr}")
    return yaml.safe_load((project / "params.yaml").read_text())["tasks"]


def entry_problem(name: str, entry: dict[str, Any]) -> str | None:
    """Why modelyard refuses this task entry, or None when it parses."""
    from modelyard.config import parse_settings
    from modelyard.errors import ModelyardError

    try:
        parse_settings({"tasks": {name: entry}})
    except ModelyardError as exc:
        return str(exc)
    return None


def modelyard_command() -> list[str]:
    beside = Path(sys.executable).with_name("modelyard")
    return [str(beside)] if beside.exists() else [shutil.which("modelyard") or "modelyard"]


def run_stages(project: Path, task: str, timeout: float) -> tuple[dict[str, float], dict[str, str] | None]:
    """Run the stage commands in order: seconds per stage, and the failure (stage, error tail) if one failed."""
    env = os.environ | {"MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}
    seconds: dict[str, float] = {}
    for stage in STAGES:
        start = time.perf_counter()
        try:
            done = subprocess.run(
                [*modelyard_command(), stage, "--task", task],
                cwd=project,
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            return seconds, {"stage": stage, "error": f"timed out after {timeout:.0f} s"}
        seconds[stage] = time.perf_counter() - start
        log(f"  {stage:9s} {seconds[stage]:7.1f} s" + ("" if done.returncode == 0 else f"  exit {done.returncode}"))
        if done.returncode != 0:
            lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
            return seconds, {"stage": stage, "error": "\n".join(lines[-TAIL_LINES:]) or f"exit {done.returncode}"}
    return seconds, None


# ---------------------------------------------------------------- the classic peers


def split_frames(project: Path, task: str) -> dict[str, pd.DataFrame] | None:
    folder = project / "data" / task / "split"
    if not all((folder / f"{part}.parquet").is_file() for part in ("train", "val", "test")):
        return None
    return {part: pd.read_parquet(folder / f"{part}.parquet") for part in ("train", "val", "test")}


def timed(fit_predict: Callable[[], np.ndarray]) -> Peer:
    start = time.perf_counter()
    predictions = fit_predict()
    return Peer(np.asarray(predictions), time.perf_counter() - start)


def table_peers(entry: dict[str, Any], fit: pd.DataFrame, test: pd.DataFrame) -> dict[str, Peer]:
    """Histogram gradient boosting (native categorical support) and a linear model (one-hot +
    standard scaling), scikit-learn defaults otherwise."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    target, columns = entry["target"], entry["schema"]["columns"]
    categorical = [c for c, spec in columns.items() if spec["type"] == "category" and c != target]
    numeric = [c for c, spec in columns.items() if spec["type"] in ("integer", "number") and c != target]
    regression = entry["problem"] == "regression"
    y_fit = fit[target].to_numpy(float) if regression else fit[target].astype(str).to_numpy()

    def with_categories(frame: pd.DataFrame) -> pd.DataFrame:
        out = frame[numeric].copy()
        for name in categorical:  # the declared levels: the same codes in every split
            out[name] = pd.Categorical(frame[name].astype(object), categories=columns[name]["categories"])
        return out

    def as_objects(frame: pd.DataFrame) -> pd.DataFrame:
        return frame[numeric].join(frame[categorical].astype(object))

    linear_features = ColumnTransformer(
        [
            ("numeric", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numeric),
            (
                "categorical",
                make_pipeline(SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore")),
                categorical,
            ),
        ]
    )
    boosting = (HistGradientBoostingRegressor if regression else HistGradientBoostingClassifier)(random_state=0)
    linear, linear_name = (
        (Ridge(), "ridge") if regression else (LogisticRegression(max_iter=10_000), "logistic_regression")
    )
    linear_model = make_pipeline(linear_features, linear)
    return {
        "hist_gradient_boosting": timed(
            lambda: boosting.fit(with_categories(fit), y_fit).predict(with_categories(test))
        ),
        linear_name: timed(lambda: linear_model.fit(as_objects(fit), y_fit).predict(as_objects(test))),
    }


def sequences(entry: dict[str, Any], frame: pd.DataFrame) -> Samples:
    """One (steps, channels) array per id, in sorted id order (modelyard's sample order)."""
    sequence, target = entry["features"]["sequence"], entry["target"]
    channels = [
        c
        for c, spec in entry["schema"]["columns"].items()
        if spec["type"] in ("integer", "number") and c not in (sequence["id"], sequence["step"])
    ]
    ordered = frame.sort_values([sequence["id"], sequence["step"]], kind="stable")
    groups = ordered.groupby(sequence["id"], sort=True)
    arrays = [group[channels].to_numpy(float) for _, group in groups]
    return Samples(arrays, groups[target].first().astype(str).to_numpy())


def znormalise(series: np.ndarray) -> np.ndarray:
    """Each channel by its own mean and spread (the UCR convention); a flat channel is only centred."""
    spread = np.nanstd(series, axis=0)
    return np.nan_to_num((series - np.nanmean(series, axis=0)) / np.where(spread > 0, spread, 1.0))


def padded(series: np.ndarray, length: int) -> np.ndarray:
    """Zero-padded at the end (zero is the series' mean after z-normalising) or cut to its first `length` steps."""
    out = np.zeros((length, series.shape[1]))
    out[: min(length, len(series))] = series[:length]
    return out


def resampled(series: np.ndarray, length: int) -> np.ndarray:
    """Stretched or shrunk to `length` steps by linear interpolation, channel by channel."""
    old, new = np.linspace(0.0, 1.0, len(series)), np.linspace(0.0, 1.0, length)
    return np.stack([np.interp(new, old, channel) for channel in series.T], axis=1)


def nearest_neighbour(fit: np.ndarray, labels: np.ndarray, test: np.ndarray) -> np.ndarray:
    """1-NN by Euclidean distance between flattened (steps x channels) series."""
    fit, test = fit.reshape(len(fit), -1), test.reshape(len(test), -1)
    distances = (test**2).sum(1)[:, None] + (fit**2).sum(1)[None, :] - 2.0 * test @ fit.T
    return labels[distances.argmin(axis=1)]


def series_peers(fit: Samples, test: Samples) -> dict[str, Peer]:
    """1-NN Euclidean on z-normalised series. Series of unequal length are brought to the
    longest training length two ways, each its own peer: zero-padding / cutting, and resampling."""
    lengths = {len(s) for s in fit.x} | {len(s) for s in test.x}
    length = max(len(s) for s in fit.x)
    ways = (
        {"1nn_euclidean": padded} if len(lengths) == 1 else {"1nn_euclid_pad": padded, "1nn_euclid_resample": resampled}
    )

    def run(bring: Callable[[np.ndarray, int], np.ndarray]) -> np.ndarray:
        def stack(samples: Samples) -> np.ndarray:
            return np.stack([bring(znormalise(s), length) for s in samples.x])

        return nearest_neighbour(stack(fit), fit.y, stack(test))

    return {name: timed(lambda bring=bring: run(bring)) for name, bring in ways.items()}


def text_peers(entry: dict[str, Any], fit: pd.DataFrame, test: pd.DataFrame) -> dict[str, Peer]:
    """TF-IDF of word 1-2 grams (sublinear tf) + logistic regression."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    column, target = entry["features"]["text"]["column"], entry["target"]
    model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True), LogisticRegression(max_iter=10_000))
    return {"tfidf_logistic": timed(lambda: model.fit(fit[column], fit[target].astype(str)).predict(test[column]))}


def fit_peers(dataset: Dataset, entry: dict[str, Any], frames: dict[str, pd.DataFrame]) -> tuple[Samples, dict, int]:
    """The test targets, every peer's predictions, and the number of samples fitted on."""
    fit = pd.concat([frames["train"], frames["val"]], ignore_index=True)
    test = frames["test"]
    target = entry["target"]
    if dataset.kind == "series":
        fit_samples, test_samples = sequences(entry, fit), sequences(entry, test)
        return test_samples, series_peers(fit_samples, test_samples), len(fit_samples.y)
    regression = entry["problem"] == "regression"
    truth = Samples(None, test[target].to_numpy(float) if regression else test[target].astype(str).to_numpy())
    peers = table_peers(entry, fit, test) if dataset.kind == "table" else text_peers(entry, fit, test)
    return truth, peers, len(fit)


# ---------------------------------------------------------------- figures and their noise


def score(regression: bool, truth: np.ndarray, predictions: np.ndarray) -> float:
    if regression:
        return float(np.sqrt(np.mean((np.asarray(truth, float) - np.asarray(predictions, float)) ** 2)))
    return float(np.mean(np.asarray(truth).astype(str) == np.asarray(predictions).astype(str)))


def modelyard_predictions(project: Path, task: str, regression: bool, truth: np.ndarray) -> np.ndarray | None:
    """modelyard's per-sample test predictions (evaluate's plot tables), when they line up
    with the test samples the peers were scored on."""
    path = project / "data" / task / "plots" / ("predictions.csv" if regression else "confusion.csv")
    if not path.is_file():
        return None
    table = pd.read_csv(path, dtype=None if regression else str, keep_default_na=regression)
    if len(table) != len(truth):
        return None
    if regression:
        aligned = np.allclose(table["actual"].to_numpy(float), truth.astype(float))
        return table["predicted"].to_numpy(float) if aligned else None
    return table["predicted"].to_numpy() if (table["actual"].to_numpy() == truth).all() else None


def noise(regression: bool, truth: np.ndarray, peer: np.ndarray, ours: np.ndarray | None) -> tuple[float, float | None]:
    """The standard error of the peer's figure, and of (modelyard - peer) on the same samples
    when modelyard's per-sample predictions are at hand. Accuracy: sqrt(p(1-p)/n), and the
    spread of the per-sample difference in correctness; RMSE: a bootstrap over test samples."""
    n = len(truth)
    if not regression:
        p = score(False, truth, peer)
        se_peer = math.sqrt(p * (1 - p) / n)
        if ours is None:
            return se_peer, None
        difference = (ours.astype(str) == truth).astype(float) - (peer.astype(str) == truth).astype(float)
        return se_peer, float(difference.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    rows = np.random.default_rng(0).integers(0, n, size=(N_BOOTSTRAP, n))
    truth = truth.astype(float)

    def rmse(predictions: np.ndarray) -> np.ndarray:
        return np.sqrt(((truth[rows] - predictions.astype(float)[rows]) ** 2).mean(axis=1))

    peer_rmse = rmse(peer)
    return float(peer_rmse.std(ddof=1)), None if ours is None else float((rmse(ours) - peer_rmse).std(ddof=1))


# A relative difference in RMSE below this is float32 arithmetic, not quality: modelyard's
# linear refit is Ridge(alpha=1) on the same rows, solved in float32 (its Carseats
# predictions within 4e-5 of scikit-learn's float64 ones), and two predictors that close
# have a paired standard error near 0 that any rounding exceeds.
RMSE_TIE = 1e-4


def judge(result: dict[str, Any], regression: bool) -> None:
    """modelyard passes when it is no worse than the best peer by more than one standard error
    (of the paired difference when known, else of the peer's figure); an RMSE within
    RMSE_TIE of the peer's is a tie."""
    se = result["se_diff"] if result["se_diff"] is not None else result["se_peer"]
    if regression:
        se = max(se, RMSE_TIE * abs(result["peer"]))
    margin = result["modelyard"] - result["peer"]
    result["ok"] = bool(margin <= se if regression else margin >= -se)


# ---------------------------------------------------------------- one dataset


def run_dataset(
    project: Path, dataset: Dataset, entry: dict[str, Any], timeout: float, reuse: bool = False
) -> dict[str, Any]:
    regression = entry["problem"] == "regression"
    result: dict[str, Any] = {
        "dataset": dataset.name,
        "kind": dataset.kind,
        "origin": dataset.origin,
        "problem": entry["problem"],
        "metric": "rmse" if regression else "accuracy",
        "published_split": "test" in entry["source"],
    }
    timings = project / "data" / dataset.name / "bench_seconds.json"
    if reuse and (project / "data" / dataset.name / "metrics.json").is_file():
        seconds = json.loads(timings.read_text()) if timings.is_file() else {}
        failure = None
        log("  reusing the trained model" + ("" if seconds else " (its stage times were not recorded)"))
    else:
        shutil.rmtree(project / "data" / dataset.name, ignore_errors=True)  # no resumed study, no stale split
        seconds, failure = run_stages(project, dataset.name, timeout)
        if failure is None:
            write_atomic(timings, json.dumps(seconds) + "\n")
    result |= {"stage_seconds": seconds, "failed": failure}
    timed_stages = failure is None and all(stage in seconds for stage in TIMED)
    result["modelyard_seconds"] = sum(seconds[stage] for stage in TIMED) if timed_stages else None
    metrics_file = project / "data" / dataset.name / "metrics.json"
    if failure is None:
        metrics = json.loads(metrics_file.read_text())
        result["modelyard"] = metrics[f"test_{result['metric']}"]
        result["modelyard_metrics"] = metrics
    frames = split_frames(project, dataset.name)
    if frames is None:
        return result
    try:
        truth, peers, n_fit = fit_peers(dataset, entry, frames)
    except Exception as exc:  # a broken peer is reported like a failed stage; the benchmark goes on
        result["peer_failed"] = f"{type(exc).__name__}: {exc}"
        return result
    ours = modelyard_predictions(project, dataset.name, regression, truth.y) if failure is None else None
    result |= {
        "n_fit": n_fit,
        "n_test": len(truth.y),
        "peers": {name: {"seconds": p.seconds} for name, p in peers.items()},
    }
    result[SAMPLES] = {"truth": truth.y, "peers": {name: p.predictions for name, p in peers.items()}, "ours": ours}
    compare(result)
    log("  peers     " + ", ".join(f"{name} {p['figure']:.4f}" for name, p in result["peers"].items()))
    return result


def compare(result: dict[str, Any]) -> None:
    """Score the peers on the result's test samples, pick the best, and judge modelyard against it."""
    regression = result["problem"] == "regression"
    samples = result[SAMPLES]
    truth, ours = samples["truth"], samples["ours"]
    figures = {name: score(regression, truth, predictions) for name, predictions in samples["peers"].items()}
    for name, figure in figures.items():
        result["peers"][name]["figure"] = figure
    best = (min if regression else max)(figures, key=figures.get)
    result |= {"peer_name": best, "peer": figures[best], "peer_seconds": result["peers"][best]["seconds"]}
    result["paired"] = ours is not None
    result["se_peer"], result["se_diff"] = noise(regression, truth, samples["peers"][best], ours)
    if not result.get("failed") and "modelyard" in result:
        judge(result, regression)


def pooled(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One dataset over several split seeds, as one result: every seed's test samples pooled
    (accuracy: the mean over seeds; rmse: over all pooled samples), the best peer picked on the
    pool, and the standard errors taken over the pool's per-sample differences. The per-seed
    figures are kept beside."""
    result = {key: runs[0][key] for key in ("dataset", "kind", "origin", "problem", "metric", "published_split")}
    result["seeds"] = [
        {key: run.get(key) for key in ("seed", "modelyard", "peer", "peer_name", "ok", "failed", "modelyard_seconds")}
        for run in runs
    ]
    failed = [run for run in runs if run.get("failed") or run.get("peer_failed") or SAMPLES not in run]
    if failed:
        return result | {key: failed[0].get(key) for key in ("failed", "peer_failed")}
    samples = [run[SAMPLES] for run in runs]
    ours = [s["ours"] for s in samples]
    result[SAMPLES] = {
        "truth": np.concatenate([s["truth"] for s in samples]),
        "peers": {name: np.concatenate([s["peers"][name] for s in samples]) for name in samples[0]["peers"]},
        "ours": None if any(o is None for o in ours) else np.concatenate(ours),
    }
    result |= {
        "n_fit": runs[0]["n_fit"],
        "n_test": runs[0]["n_test"],
        "peers": {
            name: {"seconds": float(np.mean([r["peers"][name]["seconds"] for r in runs]))} for name in runs[0]["peers"]
        },
        "modelyard_seconds": float(np.mean([r["modelyard_seconds"] for r in runs]))
        if all(r.get("modelyard_seconds") for r in runs)
        else None,
    }
    pool = result[SAMPLES]
    result["modelyard"] = (  # without per-sample predictions: the mean of the seeds' figures, unpaired
        float(np.mean([r["modelyard"] for r in runs]))
        if pool["ours"] is None
        else score(result["problem"] == "regression", pool["truth"], pool["ours"])
    )
    compare(result)
    return result


# ---------------------------------------------------------------- the report


def fmt(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def report(results: list[dict[str, Any]], header: dict[str, Any]) -> str:
    lines = [f"# modelyard quality benchmark{' — QUICK HARNESS CHECK' if header['quick'] else ''}", ""]
    if header["quick"]:
        lines += [
            "**Not a quality figure.** `--quick` wrote tiny budgets into every task "
            "(tune 2 trials x 2 epochs, train 2 epochs) to check the harness only.",
            "",
        ]
    lines += [
        f"{header['created']} · commit {header['commit']} · {header['cpus']} CPUs, load average "
        f"{header['load_start']} at start, {header['load_end']} at end · workdir `{header['workdir']}`",
        "",
    ]
    if header.get("tune"):
        settings = ", ".join(f"`{key}: {value}`" for key, value in header["tune"].items())
        lines += [f"Every task's tune section was given {settings} (`--tune`).", ""]
    if header["seeds"] > 1:
        lines += [
            f"Each dataset ran with params seeds 0..{header['seeds'] - 1} (a split and an initialisation each; "
            "published test files stay the same). Figures pool the test samples of all seeds; n test is one "
            "seed's; seconds are the mean of one seed's. The per-seed figures follow the table.",
            "",
        ]
    lines += [
        "| dataset | kind | n fit / test | metric | modelyard | best peer | peer | modelyard − peer | SE diff | "
        "SE peer | ok | modelyard s | peer s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        sizes = f"{r['n_fit']} / {r['n_test']}" if "n_fit" in r else "–"
        ours = f"failed: {r['failed']['stage']}" if r.get("failed") else fmt(r.get("modelyard"))
        margin = r["modelyard"] - r["peer"] if "modelyard" in r and "peer" in r else None
        ok = {True: "yes", False: "**no**", None: "–"}[r.get("ok")]
        lines.append(
            f"| {r['dataset']} | {r['kind']}{' (published split)' if r['published_split'] else ''} | {sizes} | "
            f"{r['metric']} | {ours} | {fmt(r.get('peer'))} | {r.get('peer_name', '–')} | {fmt(margin)} | "
            f"{fmt(r.get('se_diff'))} | {fmt(r.get('se_peer'))} | {ok} | {fmt(r.get('modelyard_seconds'), 1)} | "
            f"{fmt(r.get('peer_seconds'), 1)} |"
        )
    lines += [
        "",
        "- n fit / test: samples (rows, sequences or texts) the peers fit on (modelyard's train + validation) and "
        "score on (modelyard's test split: the same samples).",
        "- accuracy: higher is better; rmse: lower is better. ok: modelyard no worse than the best peer by more "
        "than one SE diff (the paired standard error of modelyard − peer on the same test samples; accuracy: "
        "the spread of the per-sample difference in correctness; rmse: a bootstrap over test samples), or by "
        "SE peer (sqrt(p(1-p)/n), or the bootstrap SE of the peer's rmse) where modelyard's per-sample "
        "predictions were not available; an rmse within 0.01 % of the peer's is a tie (float32 arithmetic).",
        "- The best peer is picked on the test figures, which flatters the peers a little.",
        "- Peers: tables: scikit-learn HistGradientBoosting (native categorical support) and "
        "LogisticRegression / Ridge (one-hot + standard scaling); series: 1-NN Euclidean on per-series "
        "z-normalised channels (variable-length sets: padded with zeros / cut to the longest training length, "
        "and resampled to it by linear interpolation, two peers); text: TF-IDF word 1-2 grams (sublinear tf) + "
        "LogisticRegression.",
        "- modelyard s: wall seconds of the tune, train and evaluate commands together (each a fresh process); "
        "peer s: the best peer's fit + predict.",
    ]
    seeded = [r for r in results if "seeds" in r]
    if seeded:
        lines += [
            "",
            "## Per seed",
            "",
            "| dataset | seed | modelyard | best peer | peer | ok |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for r in seeded:
            for run in r["seeds"]:
                ok = {True: "yes", False: "**no**", None: "–"}[run.get("ok")]
                ours = f"failed: {run['failed']['stage']}" if run.get("failed") else fmt(run.get("modelyard"))
                peer = f"{fmt(run.get('peer'))} | {run.get('peer_name', '–')}"
                lines.append(f"| {r['dataset']} | {run['seed']} | {ours} | {peer} | {ok} |")
    failures = [r for r in results if r.get("failed") or r.get("peer_failed")]
    if failures:
        lines += ["", "## Failures", ""]
        for r in failures:
            if r.get("failed"):
                lines += [f"**{r['dataset']}**: modelyard failed at `{r['failed']['stage']}`:", "", "```"]
                lines += [r["failed"]["error"], "```", ""]
            if r.get("peer_failed"):
                lines += [f"**{r['dataset']}**: the peers failed: `{r['peer_failed']}`", ""]
    lines += ["", "## Datasets", ""]
    lines += [f"- `{r['dataset']}` ({r['problem']}): {r['origin']}" for r in results]
    return "\n".join(lines) + "\n"


def public(result: dict[str, Any]) -> dict[str, Any]:
    """A result as the JSON file keeps it: without its per-sample arrays."""
    return {key: value for key, value in result.items() if key != SAMPLES}


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        out.write(text)
    os.replace(temporary, path)


def commit() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+edits" if git("status", "--porcelain", "--", "src") else "")


def load() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", help="comma-separated dataset names (default: all): " + ", ".join(d.name for d in DATASETS)
    )
    parser.add_argument("--workdir", type=Path, help="the throwaway project folder (default: a new temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the workdir (a --workdir is always kept)")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="with --workdir: score a dataset's model trained there before instead of running its stages again",
    )
    parser.add_argument("--add", action="store_true", help="declare each table with `modelyard add` (see above)")
    parser.add_argument("--quick", action="store_true", help="tiny budgets, to check the harness: not quality figures")
    parser.add_argument(
        "--out", type=Path, help="markdown report (default bench/QUALITY.md, --quick: bench/QUALITY_quick.md)"
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="run each dataset with params seeds 0..N-1 (other splits and initialisations) and pool the test "
        "samples of all seeds (default 1)",
    )
    parser.add_argument(
        "--tune",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set tune.KEY in every task (VALUE read as YAML), e.g. --tune pruner=hyperband; repeatable",
    )
    parser.add_argument("--stage-timeout", type=float, default=7200.0, help="seconds one stage may take (default 7200)")
    args = parser.parse_args()
    chosen = DATASETS
    if args.only:
        names = [name.strip() for name in args.only.split(",") if name.strip()]
        unknown = sorted(set(names) - {d.name for d in DATASETS})
        if unknown:
            parser.error(f"unknown dataset(s) {', '.join(unknown)}; known: {', '.join(d.name for d in DATASETS)}")
        chosen = [d for d in DATASETS if d.name in names]
    overrides = copy.deepcopy(QUICK) if args.quick else {}
    for setting in args.tune:
        key, _, value = setting.partition("=")
        overrides.setdefault("tune", {})[key.strip()] = yaml.safe_load(value)
    out = args.out or REPO / "bench" / ("QUALITY_quick.md" if args.quick else "QUALITY.md")
    project = open_workdir(args.workdir)
    header = {
        "quick": args.quick,
        "created": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit(),
        "cpus": os.cpu_count(),
        "load_start": load(),
        "workdir": str(project),
        "seeds": args.seeds,
        "tune": overrides.get("tune", {}) if not args.quick else {},
    }
    log(f"workdir {project}")
    results: list[dict[str, Any]] = []
    try:
        chosen_prepared: dict[str, tuple[Dataset, Prepared]] = {}
        for dataset in chosen:
            base = {"dataset": dataset.name, "kind": dataset.kind, "origin": dataset.origin, "published_split": False}
            try:
                prepared = dataset.prepare()
            except Exception as exc:
                results.append(
                    base | {"problem": "?", "metric": "?", "failed": {"stage": "prepare", "error": str(exc)}}
                )
                continue
            entry = task_entry(project, dataset, prepared, overrides)
            problem = entry_problem(dataset.name, entry)
            if problem:
                base |= {"problem": entry["problem"], "metric": "?", "published_split": "test" in entry["source"]}
                results.append(base | {"failed": {"stage": "params", "error": problem}})
                continue
            if args.add and "test" in entry["source"]:
                log(f"{dataset.name}: a published test file; --add declares tables of one file only, left out")
                continue
            chosen_prepared[dataset.name] = (dataset, prepared)
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in chosen_prepared}
        for seed in range(args.seeds):
            folder = project if args.seeds == 1 else project / f"seed-{seed}"
            entries = {
                name: task_entry(folder, dataset, prepared, overrides)
                for name, (dataset, prepared) in chosen_prepared.items()
            }
            if args.add:
                entries = added_entries(folder, entries, seed)
            else:
                write_params(folder, entries, seed)
            for number, (name, (dataset, _)) in enumerate(chosen_prepared.items(), 1):
                log(f"[{number}/{len(entries)}] {name}" + (f", seed {seed}" if args.seeds > 1 else ""))
                run = run_dataset(folder, dataset, entries[name], args.stage_timeout, args.reuse)
                runs[name].append(run | {"seed": seed})
        results += [found[0] if args.seeds == 1 else pooled(found) for found in runs.values()]
    finally:
        if args.workdir is None and not args.keep:
            shutil.rmtree(project, ignore_errors=True)
            header["workdir"] += " (removed)"
    order = [d.name for d in chosen]
    results.sort(key=lambda r: order.index(r["dataset"]))
    header["load_end"] = load()
    text = report(results, header)
    print(text)
    write_atomic(out, text)
    write_atomic(
        out.with_suffix(".json"),
        json.dumps({**header, "results": [public(r) for r in results]}, indent=2, default=float) + "\n",
    )
    log(f"wrote {out} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
