# Two entry points: `make main` (train and evaluate a ViT on Fashion-MNIST, with figures) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
FASHION_MNIST := /usr/share/datasets/fashion-mnist

.PHONY: main test install data clean

install: $(VENV)/.installed

# torch first, by exact version, so pip takes the CPU wheel rather than the CUDA build.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $@

# Debian's dataset-fashion-mnist where apt is available; otherwise vitlab looks in its cache or downloads.
data:
	@if [ ! -f $(FASHION_MNIST)/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
		(apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null); \
	fi

main: install data
	$(BIN)/vitlab models --filter vit-
	$(BIN)/vitlab demo --model ViT-B/16

test: install data
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs .pytest_cache
