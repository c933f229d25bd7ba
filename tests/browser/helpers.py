"""What the browser tests share: where Debian's Chromium lives, how it is started, the
finished toy pipeline they read, and a page helper that waits for what a user would see."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # Without these Chromium's own connections (updates, sync, field trials) are refused on
    # a closed network and the browser stalls on them.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
WINDOW = (1600, 1000)
PAGE_TIMEOUT_S = 60  # a cold MLflow UI bundle on two busy cores
SERVER_TIMEOUT_S = 90
OUT_ENV = "MODELYARD_BROWSER_OUT"


def missing_browser() -> str:
    """Why the browser tests cannot run here, or '' when they can."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.is_file()]
    if not missing:
        return ""
    return f"{' and '.join(missing)} missing: install Debian's chromium and chromium-driver (.ci/run does)"


def screenshot(driver: WebDriver, test_name: str, folder: Path) -> None:
    """A screenshot of the window in `folder` and in $MODELYARD_BROWSER_OUT when set."""
    name = test_name.removeprefix("test_") + ".png"
    for where in [folder] + ([Path(os.environ[OUT_ENV])] if os.environ.get(OUT_ENV) else []):
        where.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(where / name))
        print(f"screenshot: {where / name}")


@dataclass(frozen=True)
class Pipeline:
    """The toy project that ran every stage, ingest to register, and its MLflow store."""

    root: Path
    tracking_uri: str
    experiment_id: str
    train_run_id: str
    study_run_id: str  # the Optuna study's parent run
    monitor: str  # the validation metric the study ranks trials on, e.g. val_loss
    n_trials: int


@dataclass
class Page:
    """The browser on one MLflow page, as a user reads it."""

    driver: WebDriver
    base_url: str

    def open(self, fragment: str) -> None:
        """Open `#<fragment>` in MLflow's model-training view (3.17 opens the GenAI view unless asked)."""
        self.driver.get(f"{self.base_url}/#{fragment}?workflowType=machine_learning")

    def shown(self, xpath: str, what: str) -> WebElement:
        """The first element matching `xpath` once the page shows it; fails naming `what`."""
        try:
            return WebDriverWait(self.driver, PAGE_TIMEOUT_S).until(
                expected_conditions.visibility_of_element_located((By.XPATH, xpath))
            )
        except TimeoutException:
            raise AssertionError(
                f"the page never showed {what} within {PAGE_TIMEOUT_S} s ({self.driver.current_url})"
            ) from None

    def scroll_to(self, element: WebElement) -> None:
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
