# attnkit: the two quickstart commands are `make workbook` and `make test`.
# Both create .venv on first use (pinned requirements + attnkit editable + the `attnkit` kernel).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.attnkit-installed
PROFILE ?= default
FAMILY ?=
PYTEST_ARGS ?=
# Test processes (pytest-xdist): the notebook smoke runs and the CPU-bound tests share the cores.
TEST_JOBS ?= 2

.PHONY: help venv workbook test test-slow lint format reference-models docs-figures clean

help:
	@echo "make workbook   set up .venv if needed, then run the workbook (PROFILE=$(PROFILE);"
	@echo "                every family, or FAMILY=detr[,vit])"
	@echo "make test       set up .venv if needed, then run the tests (not the slow ones;"
	@echo "                in TEST_JOBS=2 processes; TEST_JOBS=0: in this process)"
	@echo "make test-slow  the slow tests too"
	@echo "make lint       ruff format --check + ruff check"
	@echo "make format     ruff format + ruff check --fix"
	@echo "make venv       only set up the environment"
	@echo "make reference-models  retrain checkpoints/shapes_tiny_*.pt"
	@echo "make docs-figures      redraw the README's figures (docs/) from the shipped models"

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name attnkit --display-name "attnkit"
	@touch $(STAMP)

venv: $(STAMP)

workbook: $(STAMP)
	$(VENV)/bin/attnkit workbook run --profile $(PROFILE) $(if $(FAMILY),--family $(FAMILY))

# pytest exits 5 when it collects no tests: that is a failure here, not a green run.
test: $(STAMP)
	@$(PY) -m pytest -n $(TEST_JOBS) $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

test-slow: $(STAMP)
	$(PY) -m pytest -n $(TEST_JOBS) -m "" $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Retrain the shipped models (hours on a laptop CPU, minutes on a GPU: add ARGS=train.device=cuda).
reference-models: $(STAMP)
	$(PY) -m attnkit.train.reference $(ARGS)

# The README's tour figures: the workbook's reference profile (no training: the notebooks that
# analyse the shipped models), one figure per notebook copied to docs/<family>/ (the 01 training
# figures come from a `make workbook` run: notebook 01 trains). Figures lie in
# figures/<run name>/, run names start with the family.
DOCS_RUN := runs/workbook/reference
DOCS_FIGURES := detr-00_dataset/00_samples detr-02_attention_maps/02_models_img1_* \
	detr-03_hungarian_matching/03_costs_img1 detr-04_sparsity/04_sparsity_per_layer \
	detr-05_paibb/05_paibb_per_layer detr-06_alpha_entmax/06_alpha_heatmap \
	vit-00_dataset/00_samples vit-02_attention/02_query_centre_sparsemax \
	sa_conv-02_attention/02_average_attention_gaussian_isotropic \
	sa_conv-03_gaussian_centres/03_trajectories sa_conv-04_conv_equivalence/04_error_vs_alpha \
	sa_conv-05_benchmark/05_throughput sa_conv-06_runs/06_val_accuracy \
	maxvit-02_receptive_fields/02_regions_stage1 \
	maxvit-02_receptive_fields/02_compare_stage_1_block_1_block \
	maxvit-03_sparsity/03_block_vs_grid maxvit-04_alphas/04_alpha_final
DOCS_FIGURES += dense-01_data/01_samples dense-03_predictions/03_predictions_swin_unet_sparsemax \
	dense-03_predictions/03_bin_errors \
	dense-04_attention_maps/04_compare_swin_unet_sparsemax_stage_1_block_2 \
	dense-05_sparsity/05_stages dense-06_efficiency/06_profile_softmax
docs-figures: $(STAMP)
	$(VENV)/bin/attnkit workbook run --profile reference --out $(DOCS_RUN) --overwrite
	@for f in $(DOCS_FIGURES); do \
		src=$$(ls $(DOCS_RUN)/figures/$$f.png 2>/dev/null | head -n 1); \
		test -n "$$src" || { echo "no figure $$f.png in $(DOCS_RUN)" >&2; exit 1; }; \
		family=$${f%%-*}; name=$$(basename $$f | sed 's/_img1.*//; s/_sparsemax$$//; s/_gaussian_isotropic$$//'); \
		mkdir -p docs/$$family; \
		cp $$src docs/$$family/$$name.png || exit 1; echo "docs/$$family/$$name.png <- $$src"; \
	done

clean:
	rm -rf runs .pytest_cache .ruff_cache
