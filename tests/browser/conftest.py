"""Fixtures for reading results as a user does: a finished toy pipeline, `mlflow server` on
its store, and Debian's headless Chromium driven by Selenium, with a screenshot of every
page a test looks at."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.selenium_manager import SeleniumManager
from selenium.webdriver.remote.webdriver import WebDriver

from modelyard.config import load_settings
from modelyard.stages import STAGES, Context
from tests.browser.helpers import (
    CHROMEDRIVER,
    CHROMIUM,
    CHROMIUM_FLAGS,
    SERVER_TIMEOUT_S,
    WINDOW,
    Page,
    Pipeline,
    screenshot,
)
from tests.conftest import REPO, toy_frame, toy_params


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    root = tmp_path_factory.mktemp("browser") / "project"
    (root / "data" / "sources").mkdir(parents=True)
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    (root / "params.yaml").write_text(yaml.safe_dump(toy_params()))
    toy_frame().to_csv(root / "data" / "sources" / "toy.csv", index=False)
    uri = f"sqlite:///{root.parent / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.chdir(root)
        ctx = Context(root, load_settings(root / "params.yaml"), "toy")
        for name, stage in STAGES.items():
            # each stage as `dvc repro` runs it (dvc.yaml's cmd), so its runs record that command as their source
            patch.setattr(sys, "argv", [f"pipeline/{name}.py", "--task", "toy"])
            stage(ctx)
    client = MlflowClient(uri, uri)
    experiment = client.get_experiment_by_name("toy")
    (study,) = client.search_runs([experiment.experiment_id], "tags.`modelyard.study` != ''")
    yield Pipeline(
        root=root,
        tracking_uri=uri,
        experiment_id=experiment.experiment_id,
        train_run_id=json.loads(ctx.paths.train_summary.read_text())["run_id"],
        study_run_id=study.info.run_id,
        monitor=next(k.removeprefix("best_") for k in study.data.metrics if k.startswith("best_")),
        n_trials=ctx.task.tune.n_trials,
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def answers(url: str) -> bool:
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy from the environment
    try:
        with direct.open(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def mlflow_ui(pipeline: Pipeline, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mlflow server` on the pipeline's store (as `make ui` starts it); its base URL."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    mlflow = Path(sys.executable).with_name("mlflow")
    log_path = folder / "server.log"
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    command = [str(mlflow), "server", "--backend-store-uri", pipeline.tracking_uri]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with log_path.open("wb") as log:
        # its own process group: the server's workers stop with it
        server = subprocess.Popen(command, cwd=folder, env=env, stdout=log, stderr=log, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_TIMEOUT_S
        while not answers(f"{base}/health"):
            if server.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-3000:]
                pytest.fail(f"mlflow server did not answer {base}/health (exit code {server.poll()}):\n{tail}")
            time.sleep(0.2)
        yield base
    finally:
        stop(server)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def refuse_download(*args: object, **kwargs: object) -> None:
    raise AssertionError("Selenium Manager was asked for a browser or driver; the tests use Debian's")


@pytest.fixture(scope="module")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    """Headless Chromium with a fresh profile."""
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tmp_path_factory.mktemp("chromium-profile")
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={WINDOW[0]},{WINDOW[1]}"):
        options.add_argument(flag)
    with pytest.MonkeyPatch.context() as patch:
        # Service's path already skips Selenium Manager; these make sure it never fetches a browser or driver
        patch.setenv("SE_OFFLINE", "true")
        patch.setattr(SeleniumManager, "binary_paths", refuse_download)
        browser = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        browser.set_window_size(*WINDOW)
        yield browser
    finally:
        browser.quit()


@pytest.fixture(scope="module")
def driver(chromium: WebDriver, mlflow_ui: str) -> WebDriver:
    """The browser on the MLflow server's origin, its assistant panel closed: it opens on
    first load and covers a quarter of the window."""
    chromium.get(f"{mlflow_ui}/health")
    chromium.execute_script(
        "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');"
        "localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');"
    )
    return chromium


@pytest.fixture
def page(driver: WebDriver, mlflow_ui: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Page]:
    """The browser for one test; afterwards, passed or failed, a screenshot of the window
    in the test's tmp_path and in $MODELYARD_BROWSER_OUT when set."""
    yield Page(driver, mlflow_ui)
    screenshot(driver, request.node.name, tmp_path)
