# DeepSynth OCR — developer and CI entry points. `make setup` then `make test` on a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export WANDB_SILENT := true

.PHONY: setup unsloth-src gpu-smoke test test-fast lint deepseek-ocr-smoke sample-data clean system-deps report-check

setup: system-deps $(VENV)/.installed unsloth-src

# Debian packages the tests need: chromium renders report.html (the report test fails without it),
# tesseract-ocr is an evaluation baseline. Installed when missing and apt-get is usable (root, as on
# CI); elsewhere install them yourself: the tests that need them say so.
SYSTEM_PACKAGES := chromium tesseract-ocr tesseract-ocr-eng
system-deps:
	@if command -v chromium >/dev/null && command -v tesseract >/dev/null; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null; \
	else echo "system-deps: please install $(SYSTEM_PACKAGES) (Debian packages)"; fi

# torch first and alone: `torch==2.13.0` resolves to the CPU wheel on this machine kind; asked for
# through another package's range, pip could pick a multi-GB CUDA build instead.
$(VENV)/.installed: requirements-cpu.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r requirements-cpu.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

# The pinned Unsloth release's source (wheels without dependencies, about 30 MB) for the API-drift
# tests, which read it with ast: importing Unsloth needs a GPU. The version comes from
# requirements-training.txt; the tests fail, never skip, when it is missing.
unsloth-src: $(VENV)/.installed
	$(BIN)/python -m deepsynth_ocr.drift fetch >/dev/null

# GPU only, never in CI: 30 steps of real QLoRA on rendered lines; prints peak VRAM and s/step.
# Run it in the training environment (docker/Dockerfile or `pip install -r requirements-training.txt`
# then `pip install --no-deps -e .`). GPU_CONFIG=configs/deepseek-ocr-qlora.yaml for DeepSeek-OCR v1.
GPU_PYTHON ?= python3
GPU_CONFIG ?= configs/deepseek-ocr-2-qlora.yaml
gpu-smoke:
	$(GPU_PYTHON) -m deepsynth_ocr.gpu_smoke --config $(GPU_CONFIG) --steps 30

# Everything, slow tests included (what CI runs); well under 15 minutes on 2 CPU cores.
test: setup
	$(BIN)/python -m pytest -m "slow or not slow"

# The quick inner loop: skips tests marked slow.
test-fast: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check deepsynth_ocr tests benchmarks

# Fine-tune the tiny DeepSeek-OCR-2 on the bundled samples on CPU; prints CER before -> after.
deepseek-ocr-smoke: setup
	$(BIN)/deepsynth-ocr train --config configs/smoke.yaml

# Regenerates data/samples exactly (seeded) from the rendering code.
sample-data: setup
	rm -rf data/samples
	$(BIN)/python -m deepsynth_ocr.data.synthetic --out data/samples --train 32 --eval 16 --seed 0

clean:
	rm -rf runs .pytest_cache .ruff_cache

# Rebuild a run's report.html and prove it renders: headless Chromium screenshot in artifacts/.
# Usage: make report-check RUN=runs/smoke_YYYYmmdd_HHMMSS
report-check: setup
	$(BIN)/deepsynth-ocr report $(RUN) --screenshot artifacts/$(notdir $(RUN))_report.png
