# Two commands do everything on a fresh machine: `make pretrain` and `make test` (both set up first).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
ARGS ?=
PYTEST_ARGS ?=

.PHONY: setup data browser reproduce pretrain segment detect pretrain-folder fashion-mnist-png scenes finetune linprobe eval visualize demo sweep shards bench gpu-check constraints docs lint test learning-floors test-fast clean

## setup: virtual environment, pinned torch, the project (editable), the Fashion-MNIST package and Chromium for
## the demo's browser test (idempotent)
setup: $(INSTALLED) data browser

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(INSTALLED): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install --quiet --no-cache-dir --upgrade pip
	$(BIN)/pip install --no-cache-dir -c constraints.txt torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --no-cache-dir -c constraints.txt -e '.[dev]'
	touch $@

## data: Debian's dataset-fashion-mnist, the embedded default dataset
data: $(FASHION_MNIST)

$(FASHION_MNIST):
	$(SUDO) apt-get update
	$(SUDO) apt-get install -y dataset-fashion-mnist

## browser: Debian's Chromium, the browser the demo's Playwright test drives (Playwright's download is not used)
browser: $(CHROMIUM)

$(CHROMIUM): | $(FASHION_MNIST)
	$(SUDO) apt-get update
	$(SUDO) apt-get install -y chromium

## pretrain: the main job, MAE pre-training on Fashion-MNIST ending with kNN top-1 (extra overrides: ARGS="...")
pretrain: setup
	$(BIN)/python train.py $(ARGS)

## finetune: fine-tune the newest `make pretrain` encoder on Fashion-MNIST, top-1/top-5 on the test split
finetune: setup
	$(BIN)/python train.py task=finetune $(ARGS)

## linprobe: linear-probe the newest `make pretrain` encoder on Fashion-MNIST, top-1/top-5 on the test split
linprobe: setup
	$(BIN)/python train.py task=linprobe $(ARGS)

## eval: evaluate a checkpoint, by default the newest fine-tuning run's (CKPT=<file>, extra overrides: ARGS="...")
CKPT ?= outputs/finetune/latest/checkpoints/last.ckpt
eval: setup
	$(BIN)/python eval.py ckpt_path=$(CKPT) $(ARGS)

## visualize: reconstruction grid of a checkpoint with decoder, by default the newest pre-training run's
## (VIS_CKPT=<file>, VIS_OUT=<png>, extra overrides: ARGS="...")
VIS_CKPT ?= outputs/pretrain/latest/checkpoints/last.ckpt
VIS_OUT ?= reconstruction.png
visualize: setup
	$(BIN)/python -m mae.jobs.visualize ckpt_path=$(VIS_CKPT) out=$(VIS_OUT) $(ARGS)

## sweep: an ablation sweep at CPU scale, each point pre-trained then linear-probed, aggregated into
## outputs/sweeps/<name>/summary.csv (mean and std over the seeds), summary.md, runs.csv (every job) and PNG plots;
## finished points are skipped when run again
## (SWEEP=sweep_mask_ratio|sweep_decoder_depth|sweep_decoder_width|sweep_norm_pix_loss, extra overrides: ARGS="...");
## the Optuna search over mask ratio x decoder depth: $(BIN)/python -m mae.sweeps.optuna_search [n_trials=...] $(ARGS)
SWEEP ?= sweep_mask_ratio
sweep: setup
	$(BIN)/python train.py -m experiment=$(SWEEP) $(ARGS)

## shards: write a dataset as litdata shards for streaming (SRC: an ImageNet-layout folder or data=<group>; OUT: the
## directory; extra keys of conf/shards.yaml: ARGS="chunk_bytes=128MB overwrite=true"); the default makes the
## shards data=fashion_mnist_stream reads
SRC ?= data=fashion_mnist
OUT ?= data/fashion_mnist_shards
shards: setup
	$(BIN)/python -m mae.data.shards $(SRC) $(OUT) $(ARGS)

## fashion-mnist-png: Fashion-MNIST's training and held-out images as PNG folders without labels (data/fashion_mnist_png,
## data/fashion_mnist_png_val), the folders `python train.py experiment=fashion_mnist_folder` pre-trains on
fashion-mnist-png: data/fashion_mnist_png data/fashion_mnist_png_val

data/fashion_mnist_png: | setup
	$(BIN)/python -m mae.data.png_folder $@ data=fashion_mnist

data/fashion_mnist_png_val: | setup
	$(BIN)/python -m mae.data.png_folder $@ data=fashion_mnist --split val

## scenes: Fashion-MNIST scenes in ADE20K's layout and COCO's instances layout (data/fashion_mnist_scenes; training,
## validation and test scenes whose items are Fashion-MNIST's training, held-out and t10k images; settings:
## conf/scenes.yaml); kept when the folder exists
scenes: data/fashion_mnist_scenes

data/fashion_mnist_scenes: | setup
	$(BIN)/python -m mae.data.dense.scenes $@

## segment: UperNet on the newest `make pretrain` encoder, trained and scored (mIoU) on the Fashion-MNIST scenes
## (extra overrides: ARGS="...", e.g. pretrained=null for the from-scratch baseline)
segment: scenes
	$(BIN)/python train.py task=segment $(ARGS)

## detect: ViTDet's Mask R-CNN on the newest `make pretrain` encoder, trained and scored (COCO box and mask AP) on the
## Fashion-MNIST scenes' COCO layout (extra overrides: ARGS="...", e.g. pretrained=null for the from-scratch baseline)
detect: scenes
	$(BIN)/python train.py task=detect $(ARGS)

## pretrain-folder: the main job on those PNG folders (data=unlabeled), kNN on the labelled Fashion-MNIST
pretrain-folder: fashion-mnist-png
	$(BIN)/python train.py experiment=fashion_mnist_folder $(ARGS)

## demo: the reconstruction demo on http://127.0.0.1:7860, by default on the newest `make pretrain` checkpoint
## (DEMO_CKPT=<file>, extra keys of conf/demo.yaml: ARGS="port=7861 compare_ckpt_path=<file>")
DEMO_CKPT ?= outputs/pretrain/latest/checkpoints/last.ckpt
demo: setup
	$(BIN)/python -m mae.demo $(DEMO_CKPT) $(ARGS)

## reproduce: every run behind the README's and the docs' result tables with the committed defaults (seeds included),
## their results.json copied into docs/results/ and the tables re-rendered; resumable: finished runs are skipped
## (list the plan: ARGS="--list"; a subset and what it needs: ARGS="--only pretrain_seed0 ...")
reproduce: setup
	$(BIN)/python -m mae.jobs.reproduce $(ARGS)

## bench: pre-training throughput benchmark -> benchmarks/results.json and results.md (extra flags: ARGS="...")
bench: $(INSTALLED)
	$(BIN)/python -m mae.benchmarking $(ARGS)

## gpu-check: on a CUDA machine (~5 min), one PASS/FAIL line each for bf16-mixed DDP and FSDP steps, torch.compile
## against eager and ViT-B/16 throughput with its share of the bf16 peak; exit 2 without a GPU
gpu-check: $(INSTALLED)
	$(BIN)/python scripts/gpu_check.py

## constraints: pin the tested versions of .venv into constraints.txt (after upgrading a package and `make test`)
constraints: | $(BIN)/python
	{ grep -s '^#' constraints.txt || true; $(BIN)/pip freeze --exclude-editable; } > constraints.txt.tmp
	mv constraints.txt.tmp constraints.txt

## docs: the documentation site into site/ (open site/index.html; `$(BIN)/mkdocs serve` for a live preview);
## strict: a broken link, anchor or API reference fails the build
docs: $(INSTALLED)
	$(BIN)/mkdocs build --strict

## lint: ruff's lint and format checks (`$(BIN)/ruff check --fix . && $(BIN)/ruff format .` applies them)
lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

## test: the whole suite, slow learning tests included
test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## learning-floors: re-measure the learning tests' floors over seeds 0-2 into tests/learning_floors.json (about
## 30 min); needed after a change to tests/learning_procedure.py, which the tests check
learning-floors: setup
	cd tests && $(abspath $(BIN))/python measure_learning_floors.py

## test-fast: everything but the slow learning tests
test-fast: setup
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf outputs multirun .pytest_cache
