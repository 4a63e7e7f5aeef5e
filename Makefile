# two-tower-recall: `make help` lists the targets.
SHELL := /bin/bash
# Spinning OpenMP waits make FAISS training ~10x slower on shared cores.
export OMP_WAIT_POLICY ?= PASSIVE
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
RECALL := $(VENV)/bin/recall
DATA ?= data
NAME ?= ml-100k-listwise
SPLIT ?= leave-last-out
LOSS ?= listwise
SEED ?= 0
HOST ?= 127.0.0.1
PORT ?= 8000
TORCHREC := 1.8.0

.DEFAULT_GOAL := help
.PHONY: help venv data train index serve run test test-tools test-fast lint docker-lint clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev,distributed]'
	@# TorchRec's wheel asks for the CUDA fbgemm-gpu: it and the CPU FBGEMM go in without deps
	$(PY) -m pip install --quiet --no-deps torchrec==$(TORCHREC) fbgemm-gpu-cpu==$(TORCHREC)
	$(PY) -c "import torch, torchrec, fbgemm_gpu; assert torch.__version__.startswith('2.13.0')"
	touch $@

venv: $(VENV)/.installed ## create .venv and install the project with its pinned dependencies

data: venv ## fetch MovieLens-100K into data/ml-100k
	$(RECALL) data fetch --dataset ml-100k --dir $(DATA)

train: data ## train on ml-100k (SPLIT, LOSS, SEED, NAME) and print the metrics table
	$(RECALL) train --config configs/ml-100k.toml --split $(SPLIT) --loss $(LOSS) --seed $(SEED) --out artifacts/$(NAME)

index: venv ## build a snapshot from artifacts/$(NAME) into snapshots/
	$(RECALL) build-index --artifact artifacts/$(NAME) --snapshots snapshots

serve: venv ## serve snapshots/ on $(HOST):$(PORT) (docs at /docs)
	$(RECALL) serve --snapshots snapshots --host $(HOST) --port $(PORT)

run: ## the whole job: venv, data, training, index, then the service on $(HOST):$(PORT)
	$(MAKE) train
	$(MAKE) index
	$(MAKE) serve

test-tools: ## Debian's haproxy, the load balancer of the multi-replica test
	@command -v haproxy >/dev/null || test -x /usr/sbin/haproxy || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy; }

test: venv test-tools ## install what the tests need, then run the whole suite
	$(PY) -m pytest

test-fast: venv ## the suite without the slow tests
	$(PY) -m pytest -m "not slow"

lint: venv ## ruff and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

docker-lint: venv ## static checks of Dockerfile (hadolint) and docker-compose.yml (docker-compose config)
	$(VENV)/bin/hadolint Dockerfile
	docker-compose config -q
	docker-compose --profile batch config -q

clean: ## remove artifacts, snapshots and caches (keeps data/ and .venv/)
	rm -rf artifacts snapshots .pytest_cache .mypy_cache .ruff_cache
