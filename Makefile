# medmtl: every command a user or CI needs. `make help` lists them.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
STAMP := .make/install.stamp

# Read before Python starts: no hub access, no albumentations update check.
export HF_HUB_OFFLINE ?= 1
export NO_ALBUMENTATIONS_UPDATE ?= 1
export NO_MKDOCS_2_WARNING ?= 1

.PHONY: help install quickstart train test test-all lint docs docs-serve report bench results clean-logs

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-12s %s\n", $$1, $$2}'

# The stamp stands for "installed into this Python": a new environment (another machine, a new
# virtual environment) with the clone's old stamp would otherwise skip the installation.
ifneq ($(shell $(PYTHON) -c "import medmtl" 2>/dev/null && echo ok),ok)
$(shell rm -f $(STAMP))
endif

$(STAMP): pyproject.toml
	$(PIP) install -e ".[experiments,dev,sweep,bench,docs]"
	@mkdir -p $(dir $@) && touch $@

install: $(STAMP) ## install the package, PyTorch and every dependency (idempotent)

quickstart: install ## train U-Net VGG x MTL-IO on the synthetic REFUGE on CPU (~5 min) and print test metrics
	$(PYTHON) src/train.py experiment=quickstart

train: install ## python src/train.py $(ARGS), e.g. make train ARGS="optim=vanilla"
	$(PYTHON) src/train.py $(ARGS)

test: install ## the default (fast) test suite
	$(PYTHON) -m pytest -m "not slow"

docs: install ## the documentation site from docs/ and the docstrings, into site/ (any warning fails it)
	$(PYTHON) -m mkdocs build --strict

docs-serve: install ## serve the documentation site at http://127.0.0.1:8000 while you edit docs/
	$(PYTHON) -m mkdocs serve

lint: install ## ruff (lint + format check) and mypy on the package
	$(PYTHON) -m ruff check src tests benchmarks examples
	$(PYTHON) -m ruff format --check src tests benchmarks examples
	$(PYTHON) -m mypy

test-all: install ## every test, slow ones included
	$(PYTHON) -m pytest

clean-logs: ## delete logs/ (all runs!)
	rm -rf logs

# the real data of the reproductions (docs/results.md): MNIST in $(SHARED_DATA)/mnist/MNIST/raw
SHARED_DATA ?= ../shared/data

FOUR_REAL_METRICS := breastmnist_auc pneumoniamnist_auc retinamnist_auc adrenalmnist3d_auc \
	breastmnist_acc pneumoniamnist_acc retinamnist_acc adrenalmnist3d_acc
results: install ## rerun the recorded reproductions into results/ (hours on a CPU; a rerun trains only what is missing) and their reports
	$(PYTHON) src/train.py -m experiment=multimnist_sener2018 data=multimnist data.root=$(SHARED_DATA)/mnist \
		trainer.max_epochs=15 speed.channels_last=true hydra.sweep.dir=results/multimnist_sener2018
	$(PYTHON) src/report.py results/multimnist_sener2018 --metrics left_acc right_acc --baseline stl
	$(PYTHON) src/train.py -m experiment=medmnist_yang2023 data=medmnist data.root=$(SHARED_DATA)/medmnist \
		trainer.max_epochs=5 speed.channels_last=true yang2023_dataset=pneumoniamnist hydra.sweep.dir=results/medmnist_yang2023_pneumonia
	$(PYTHON) src/train.py -m experiment=medmnist_yang2023 data=medmnist data.root=$(SHARED_DATA)/medmnist \
		trainer.max_epochs=20 speed.channels_last=true yang2023_dataset=breastmnist,retinamnist hydra.sweep.dir=results/medmnist_yang2023
	$(PYTHON) src/report.py results/medmnist_yang2023 results/medmnist_yang2023_pneumonia --metrics auc_mean acc_mean
	$(PYTHON) src/train.py -m experiment=medmnist_four_real data=medmnist data.root=$(SHARED_DATA)/medmnist \
		hydra.sweep.dir=results/medmnist_four_real
	$(PYTHON) src/report.py results/medmnist_four_real --baseline "ga (1 task)" --metrics $(FOUR_REAL_METRICS)
	$(PYTHON) src/train.py -m experiment=medmnist_four_real data=medmnist data.root=$(SHARED_DATA)/medmnist \
		optim=vanilla data.joint_batches=true 'data.flags=[breastmnist,pneumoniamnist,retinamnist]' \
		hydra.sweep.dir=results/medmnist_four_real_joint2d
	$(PYTHON) src/report.py results/medmnist_four_real results/medmnist_four_real_joint2d --baseline "ga (1 task)" \
		--metrics breastmnist_auc pneumoniamnist_auc retinamnist_auc --output results/medmnist_four_real_joint2d/report
	$(PYTHON) src/train.py -m experiment=multimnist_sener2018 data=multimnist data.root=$(SHARED_DATA)/mnist \
		speed.channels_last=true seed=0 optim=vanilla,mgda_ub,stl hydra.sweep.dir=results/multimnist_sener2018_100epochs
	$(PYTHON) src/report.py results/multimnist_sener2018_100epochs --metrics left_acc right_acc --baseline stl
	$(PYTHON) src/train.py -m experiment=multimnist_sener2018 data=multimnist data.root=$(SHARED_DATA)/mnist \
		speed.channels_last=true seed=1,2 optim=mgda_ub hydra.sweep.dir=results/multimnist_sener2018_100epochs_mgda_ub
	$(PYTHON) src/train.py -m experiment=multimnist_sener2018 data=multimnist data.root=$(SHARED_DATA)/mnist \
		trainer.max_epochs=15 speed.channels_last=true 'optim=ldc_mtl,ntkmtl_sr,go4align' \
		hydra.sweep.dir=results/multimnist_sener2018_later_methods
	$(PYTHON) src/train.py -m experiment=multimnist_sener2018 data=multimnist data.root=$(SHARED_DATA)/mnist \
		trainer.max_epochs=15 speed.channels_last=true 'optim=ntkmtl,stch,sel_update' \
		hydra.sweep.dir=results/multimnist_sener2018_ntkmtl_stch_sel_update
	$(PYTHON) src/report.py results/multimnist_sener2018 results/multimnist_sener2018_later_methods \
		results/multimnist_sener2018_ntkmtl_stch_sel_update --metrics left_acc right_acc --baseline stl \
		--output results/multimnist_sener2018_ntkmtl_stch_sel_update/report
	$(PYTHON) src/train.py -m experiment=multimnist_sener2018 data=multimnist data.root=$(SHARED_DATA)/mnist \
		trainer.max_epochs=15 speed.channels_last=true model.head=linear 'optim=vanilla,bayesagg_mtl' \
		hydra.sweep.dir=results/multimnist_sener2018_linear_heads
	$(PYTHON) src/train.py -m experiment=multimnist_sener2018 data=multimnist data.root=$(SHARED_DATA)/mnist \
		trainer.max_epochs=15 speed.channels_last=true model.head=linear optim=bayesagg_mtl \
		optim.strategy.variance_power=0.1 optim.strategy.head_clip=10 optim.strategy.shared_clip=5 \
		hydra.sweep.dir=results/multimnist_bayesagg_utkface_settings
	$(PYTHON) src/report.py results/multimnist_sener2018_linear_heads --metrics left_acc right_acc --baseline vanilla
	$(PYTHON) src/report.py results/multimnist_bayesagg_utkface_settings --metrics left_acc right_acc
	$(PYTHON) src/train.py -m experiment=medmnist_yang2023 data=medmnist data.root=$(SHARED_DATA)/medmnist \
		yang2023_dataset=adrenalmnist3d seed=0,1,2 model.conv_3d=2.5d trainer.max_epochs=10 \
		hydra.sweep.dir=results/medmnist_yang2023_adrenal3d_2.5d

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
