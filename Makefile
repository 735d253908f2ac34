# Two entry points: `make main` (train and evaluate a ViT on Fashion-MNIST, with figures) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
FASHION_MNIST := /usr/share/datasets/fashion-mnist
# The tests run with idle OpenMP threads asleep (OMP_WAIT_POLICY=PASSIVE): on a CPU shared with other jobs,
# threads spinning while they wait for a descheduled partner made 2-thread training up to 10x slower. The main
# job keeps OpenMP's default (spin briefly, then sleep), ~7% faster on an idle machine (BENCHMARKS.md).

.PHONY: main test install data browser clean

install: $(VENV)/.installed

# torch first, by exact version, so pip takes the CPU wheel rather than the CUDA build. The experiment trackers
# are installed too: the tests read back what a run logs to each of them.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[test,serve,onnx,tensorboard,mlflow,wandb,openvino,pt2e]'
	touch $@

# Debian's dataset-fashion-mnist where apt is available; otherwise vitlab looks in its cache or downloads.
data:
	@if [ ! -f $(FASHION_MNIST)/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
		(apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null); \
	fi

# Debian's chromium and chromium-driver for the browser test of `vitlab serve` (tests/test_serving_browser.py).
browser:
	@if ! { command -v chromium && command -v chromedriver; } >/dev/null && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
		(apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null); \
	fi

RUN := runs/fashion-mnist

# Pre-train with PatchDropout, fine-tune on every token (at most 10 minutes of training in all; the same
# command resumes an interrupted run), evaluate, draw the paper's figures.
main: install data
	$(BIN)/vitlab train fashion-mnist
	$(BIN)/vitlab train fashion-mnist-tune
	$(BIN)/vitlab eval --checkpoint $(RUN) --data fashion_mnist --split test --out $(RUN)/eval
	$(BIN)/vitlab inspect --checkpoint $(RUN) --data fashion_mnist --split test --num-images 256 --show 8 \
		--out $(RUN)/inspect --no-progress
	@echo "run directory: $(RUN) (training_curves.png, eval/confusion_matrix.png, inspect/*.png)"

test: install data browser
	OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-PASSIVE} $(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs .pytest_cache
