# medmtl: every command a user or CI needs. `make help` lists them.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
STAMP := .make/install.stamp

# Read before Python starts: no hub access, no albumentations update check.
export HF_HUB_OFFLINE ?= 1
export NO_ALBUMENTATIONS_UPDATE ?= 1

.PHONY: help install quickstart train test test-all lint report bench clean-logs

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PIP) install -e ".[dev,sweep,bench]"
	@mkdir -p $(dir $@) && touch $@

install: $(STAMP) ## install the package, PyTorch and every dependency (idempotent)

quickstart: install ## train U-Net VGG x MTL-IO on the synthetic REFUGE on CPU (~5 min) and print test metrics
	$(PYTHON) src/train.py experiment=quickstart

train: install ## python src/train.py $(ARGS), e.g. make train ARGS="optim=vanilla"
	$(PYTHON) src/train.py $(ARGS)

test: install ## the default (fast) test suite
	$(PYTHON) -m pytest -m "not slow"

lint: install ## ruff (lint + format check) and mypy on the package
	$(PYTHON) -m ruff check src tests benchmarks
	$(PYTHON) -m ruff format --check src tests benchmarks
	$(PYTHON) -m mypy

test-all: install ## every test, slow ones included
	$(PYTHON) -m pytest

clean-logs: ## delete logs/ (all runs!)
	rm -rf logs

report: install ## tables from a sweep: make report DIR=logs/train/multiruns/<date>
	$(PYTHON) src/report.py $(DIR)

bench: install ## benchmarks: strategies' time and memory, DDP communication, input pipeline and framework overhead, sweep concurrency -> benchmarks/results/
	$(PYTHON) benchmarks/bench_strategies.py
	$(PYTHON) benchmarks/bench_strategies.py --setting emotic26 --size 64 --batch 8 --repeats 5
	$(PYTHON) benchmarks/bench_many_tasks.py
	$(PYTHON) benchmarks/bench_ga_memory.py
	$(PYTHON) benchmarks/bench_nonfinite.py
	$(PYTHON) benchmarks/bench_ddp.py
	$(PYTHON) benchmarks/bench_throughput.py
	$(PYTHON) benchmarks/bench_sweep_concurrency.py
