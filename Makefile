# llmserve developer commands. `make test` and `make check` create .venv when missing.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
EXTRAS ?= cpu,dev,ray,pd
PYTEST_ARGS ?=
PIP_QUIET ?= -q

.PHONY: install test test-fast check lint typecheck layering dashboards dashboards-check serve clean

MODEL_DIR ?= .cache/tiny-model
HOST ?= 127.0.0.1
PORT ?= 8000

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install $(PIP_QUIET) --upgrade pip
	$(PY) -m pip install $(PIP_QUIET) -e '.[$(EXTRAS)]'
	@# torchvision/torchaudio/torchcodec from PyPI do not import beside torch 2.13.0+cpu
	@# and break transformers: remove them when a dependency pulled them in.
	-$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null
	@touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q --durations=25 $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check llmserve engines routing tests benchmarks dashboards

typecheck: $(STAMP)
	$(VENV)/bin/mypy llmserve engines routing dashboards

layering: $(STAMP)
	$(PY) .ci/check_layering.py

# the Grafana dashboards' JSON is generated from dashboards/definitions.py and committed
dashboards: $(STAMP)
	$(PY) -m dashboards.build

dashboards-check: $(STAMP)
	$(PY) -m dashboards.build --check

check: lint typecheck layering dashboards-check

# a first `make serve` installs several GB (vLLM CPU, torch): show pip's progress
serve: PIP_QUIET =
serve: $(STAMP)
	@echo "== [1/2] tiny model in $(MODEL_DIR) (built once, then cached)"
	$(PY) -m llmserve.cli make-tiny-model $(MODEL_DIR)
	@echo "== [2/2] gateway + one vLLM CPU replica on http://$(HOST):$(PORT) (first start ~30-60 s, a progress line every 15 s)"
	VLLM_CPU_KVCACHE_SPACE=$${VLLM_CPU_KVCACHE_SPACE:-1} $(PY) -m llmserve.cli serve \
		$(MODEL_DIR) --served-model-name tiny --host $(HOST) --port $(PORT) \
		--max-model-len 1024

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
