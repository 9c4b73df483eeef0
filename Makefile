# attnkit: the two quickstart commands are `make workbook` and `make test`.
# Both create .venv on first use (pinned requirements + attnkit editable + the `attnkit` kernel).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.attnkit-installed
PROFILE ?= default
PYTEST_ARGS ?=

.PHONY: help venv workbook test test-slow lint format reference-models clean

help:
	@echo "make workbook   set up .venv if needed, then run the workbook (PROFILE=$(PROFILE))"
	@echo "make test       set up .venv if needed, then run the tests (not the slow ones)"
	@echo "make test-slow  the slow tests too"
	@echo "make lint       ruff format --check + ruff check"
	@echo "make format     ruff format + ruff check --fix"
	@echo "make venv       only set up the environment"
	@echo "make reference-models  retrain checkpoints/shapes_tiny_*.pt"

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name attnkit --display-name "attnkit"
	@touch $(STAMP)

venv: $(STAMP)

workbook: $(STAMP)
	$(VENV)/bin/attnkit workbook run --profile $(PROFILE)

# pytest exits 5 when it collects no tests: that is a failure here, not a green run.
test: $(STAMP)
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

test-slow: $(STAMP)
	$(PY) -m pytest -m "" $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Retrain the shipped models (hours on a laptop CPU, minutes on a GPU: add ARGS=train.device=cuda).
reference-models: $(STAMP)
	$(PY) -m attnkit.train.reference $(ARGS)

clean:
	rm -rf runs .pytest_cache .ruff_cache
