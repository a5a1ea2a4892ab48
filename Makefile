# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test test-slow test-all bench-smoke bench bench-selection bench-contamination bench-reweight clean

# torch is pinned to the CPU wheel this machine keeps on disk; an unpinned torch pulls a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e ".[test,bench]"
	$(BIN)/pip install --quiet --no-deps kronfluence==1.0.1  # see pyproject.toml: its torchvision breaks transformers
	touch $@

install: $(VENV)/.installed

demo: install
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/curate demo

# The default run stays under 8 minutes on 2 cores; the tests marked `slow` (whole studies, Ray, the benchmark's
# peers) run in CI after it (.ci/run).
test: install
	$(BIN)/python -m pytest -q -rs

test-slow: install
	$(BIN)/python -m pytest -q -rs -m slow

test-all: install
	$(BIN)/python -m pytest -q -rs -m ""

# The attribution benchmark: smoke (minutes, in CI) and full (committed results; an hour or more on 2 cores).
# The selection and contamination studies' smoke versions need ../shared/data (present in CI); a plain clone skips them.
bench-smoke: install
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TQDM_DISABLE=1 $(BIN)/python -m benchmarks run --suite smoke --out benchmarks/cache/smoke-results
	@if [ -d ../shared/data/corpus ]; then \
		HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TQDM_DISABLE=1 $(BIN)/curate recipe recipes/select_pretraining_mix.yaml --smoke && \
		HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TQDM_DISABLE=1 $(BIN)/python -m benchmarks.within_source runs/select_pretraining_mix-smoke --smoke --documents 30 && \
		HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TQDM_DISABLE=1 $(BIN)/curate recipe recipes/contamination_audit.yaml --smoke && \
		HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TQDM_DISABLE=1 $(BIN)/curate recipe recipes/reweight_pretraining_mix.yaml --smoke; \
	else echo "skipping the selection smoke study: ../shared/data is absent"; fi

bench: install
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TQDM_DISABLE=1 $(BIN)/python -m benchmarks run --suite full

# Influence-based selection on the shared corpus: selections, proxies retrained, lm-eval (about 1.5 hours), then
# the diagnostics of STRIDE's run, the study inside one source and the mixed target's headroom (about 45 minutes more).
bench-selection: install
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TQDM_DISABLE=1 $(BIN)/curate recipe recipes/select_pretraining_mix.yaml
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TQDM_DISABLE=1 $(BIN)/python -m benchmarks.selection_diagnostics runs/select_pretraining_mix
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TQDM_DISABLE=1 $(BIN)/python -m benchmarks.target_size runs/select_pretraining_mix
	for n in 200 400; do HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TQDM_DISABLE=1 $(BIN)/python -m benchmarks.within_source runs/select_pretraining_mix --documents $$n || exit 1; done
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TQDM_DISABLE=1 $(BIN)/python -m benchmarks.source_mix runs/select_pretraining_mix

# The contamination audit on injected corpora: the study with models (about 2.5 hours on 2 cores), then the
# model-free signals against the n-gram rules and decon (minutes; decon in its own Python 3.12 environment, see
# benchmarks/contamination/decon_peer.py).
DECON_VENV ?= .venv-decon
$(DECON_VENV)/.installed:
	PYENV_VERSION=3.12.1 $(PYTHON) -m venv $(DECON_VENV)
	$(DECON_VENV)/bin/pip install --quiet decontaminate==0.3.0.post4
	touch $@

bench-contamination: install $(DECON_VENV)/.installed
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TQDM_DISABLE=1 OMP_NUM_THREADS=1 $(BIN)/curate recipe recipes/contamination_audit.yaml
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TQDM_DISABLE=1 CURATE_DECON_PYTHON=$(DECON_VENV)/bin/python $(BIN)/python -m benchmarks.contamination.lexical_bench

bench-reweight: install
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TQDM_DISABLE=1 OMP_NUM_THREADS=1 $(BIN)/curate recipe recipes/reweight_pretraining_mix.yaml

clean:
	rm -rf runs .pytest_cache
