"""What a user reads in the MLflow UI after a pipeline run: the study and its trials in the
runs table, the study's optimization history, the final model's run page (source,
datasets, test metrics) and the registered model's aliases. Each test waits for the
rendered page, not the API behind it, and leaves a screenshot of it (see conftest's
`page`)."""

from __future__ import annotations

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement

from tests.browser.helpers import Page, Pipeline, missing_browser

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(bool(missing_browser()), reason=missing_browser()),
]

EMPTY = {"", "-", "—"}  # what MLflow shows for a field it has no value for


def reads(text: str) -> str:
    """An XPath test: the element's visible text is exactly `text`."""
    return f"normalize-space(.)='{text}'"


def trial_link(n: int) -> str:
    """A trial's run in the runs table: `trial-<n>`, or `trial-<n> pruned`."""
    name = f"trial-{n}"
    return f"//div[@role='row']//a[{reads(name)} or starts-with(normalize-space(.), '{name} ')]"


def open_train_run(page: Page, pipeline: Pipeline) -> None:
    page.open(f"/experiments/{pipeline.experiment_id}/runs/{pipeline.train_run_id}")
    page.shown(f"//*[@data-testid='runs-header'][{reads('train-toy')}]", "the run name train-toy as the page title")


def metric_row(page: Page, name: str) -> list[WebElement]:
    """The cells (name, value, model) of one metric in the run page's Metrics table, scrolled into view."""
    row = page.shown(f"//div[@role='row'][./div[@role='cell']//a[{reads(name)}]]", f"{name} in the Metrics table")
    page.scroll_to(row)
    return row.find_elements(By.XPATH, "./div[@role='cell']")


def test_runs_table_lists_the_study_and_its_trials(page: Page, pipeline: Pipeline) -> None:
    page.open(f"/experiments/{pipeline.experiment_id}/runs")
    study_row = "//div[@role='row'][.//a[starts-with(normalize-space(.), 'study-toy-')]]"
    page.shown(study_row, "the study's parent run study-toy-… in the runs table")
    page.shown(f"//div[@role='row']//a[{reads('train-toy')}]", "the run train-toy in the runs table")
    assert not page.driver.find_elements(By.XPATH, trial_link(0)), "trials shown before the study is expanded"
    expand = f"{study_row}//button[contains(@data-component-id, 'runnamecellrenderer')]"
    page.shown(expand, "the button that expands the study").click()
    for n in range(pipeline.n_trials):
        page.shown(trial_link(n), f"trial-{n} under the expanded study")


def test_experiment_page_describes_the_task(page: Page, pipeline: Pipeline) -> None:
    page.open(f"/experiments/{pipeline.experiment_id}/runs")
    description = page.shown("//p[starts-with(normalize-space(.), 'Task ')]", "the experiment's description")
    assert "toy" in description.text and "toy.csv" in description.text, description.text
    page.shown(f"//div[@role='row']//a[{reads('train-toy')}]", "the runs below the description")  # for the screenshot


def test_train_run_page_shows_its_source(page: Page, pipeline: Pipeline) -> None:
    open_train_run(page, pipeline)
    source = page.shown("//*[@data-testid='key-value-Source']/div[2]", "the run's Source field").text.strip()
    assert source not in EMPTY, f"the Source field is empty: {source!r}"
    assert "train" in source, f"the Source field {source!r} does not name the train stage"


def test_train_run_page_lists_its_datasets(page: Page, pipeline: Pipeline) -> None:
    open_train_run(page, pipeline)
    section = page.shown("//h4[normalize-space(.)='Datasets']/..", "the run's Datasets section")
    listed = section.text.removeprefix("Datasets").strip()
    assert "toy-train" in listed, f"the Datasets section does not list the training split: {listed!r}"


def test_train_run_page_shows_test_metrics(page: Page, pipeline: Pipeline) -> None:
    open_train_run(page, pipeline)
    _, value, *_ = (cell.text.strip() for cell in metric_row(page, "test_accuracy"))
    assert 0.5 < float(value) <= 1.0, f"test_accuracy reads {value!r}"


def test_train_run_test_metrics_name_the_logged_model(page: Page, pipeline: Pipeline) -> None:
    open_train_run(page, pipeline)
    cells = [cell.text.strip() for cell in metric_row(page, "test_accuracy")]
    assert cells[2:] == ["toy"], f"test_accuracy is not tied to the logged model toy: {cells}"


def test_study_run_page_charts_the_optimization_history(page: Page, pipeline: Pipeline) -> None:
    page.open(f"/experiments/{pipeline.experiment_id}/runs/{pipeline.study_run_id}/model-metrics")
    for name in (f"best_{pipeline.monitor}", f"trial_{pipeline.monitor}"):
        title = page.shown(f"//*[not(*)][{reads(name)}]", f"the chart {name} on the study's Model metrics tab")
        page.scroll_to(title)


def test_registered_model_page_shows_the_champion(page: Page) -> None:
    page.open("/models/toy")
    version = f"//div[@role='row'][.//a[{reads('Version 1')}]]"
    page.shown(version, "version 1 of the registered model toy")
    alias = page.shown(f"{version}//*[@role='status'][@title='champion']", "the alias champion on version 1")
    assert alias.text.replace("\xa0", " ") == "@ champion", alias.text
