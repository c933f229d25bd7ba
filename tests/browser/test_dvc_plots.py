"""What a user sees after `dvc plots show`: the page it writes, opened in Chromium with no
network, draws every plot (the page carries Vega itself, see modelyard.plots_page)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.browser.helpers import PAGE_TIMEOUT_S, Pipeline, missing_browser, screenshot
from tests.conftest import REPO

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(bool(missing_browser()), reason=missing_browser()),
]

# Plot containers vega-embed has drawn into (it adds the class and a canvas or an svg).
DRAWN = "return document.querySelectorAll('.vega-embed canvas, .vega-embed svg.marks').length"


@pytest.fixture(scope="module")
def plots_page(pipeline: Pipeline, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`dvc plots show` in a DVC project holding the toy pipeline's outputs and this
    repository's .dvc/config and templates; the page it wrote."""
    project = tmp_path_factory.mktemp("dvc-plots") / "project"
    shutil.copytree(pipeline.root, project)
    dvc = [str(Path(sys.executable).with_name("dvc"))]
    subprocess.run([*dvc, "init", "--no-scm", "-q"], cwd=project, check=True)
    shutil.copytree(REPO / ".dvc" / "plots", project / ".dvc" / "plots", dirs_exist_ok=True)
    for name in ("config", "plots_page.html"):
        shutil.copy(REPO / ".dvc" / name, project / ".dvc" / name)
    out = project / "dvc_plots"
    subprocess.run([*dvc, "plots", "show", "-o", str(out)], cwd=project, check=True, capture_output=True)
    return out / "index.html"


def test_dvc_plots_page_draws_every_plot_offline(
    chromium: WebDriver, plots_page: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    html = plots_page.read_text()
    assert "<script src=" not in html  # nothing to fetch: a closed network shows the same page
    n_plots = html.count("vegaEmbed('#") - 2  # a binary task's regression and forecast plots have no rows
    assert n_plots == 4  # the training curves, confusion matrix, ROC and precision-recall curves
    chromium.get(plots_page.as_uri())
    try:
        WebDriverWait(chromium, PAGE_TIMEOUT_S).until(lambda driver: driver.execute_script(DRAWN) >= n_plots)
    finally:
        screenshot(chromium, request.node.name, tmp_path)
    shown = "return [...document.querySelectorAll('body > div')].filter(e => e.offsetHeight > 0)"
    sizes = chromium.execute_script(shown + ".map(e => [e.offsetWidth, e.offsetHeight])")
    assert len(sizes) == n_plots and all(width > 300 and height > 300 for width, height in sizes)  # no empty boxes
