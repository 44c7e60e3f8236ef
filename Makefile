# DeepSynth OCR — developer and CI entry points. `make setup` then `make test` on a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export WANDB_SILENT := true

.PHONY: test-long test-deepspeed docker-base docker-cpu docker-gpu docker-check docker-gpu-check published-checkpoint real-size setup setup-v1 test-v1 system-deps unsloth-src gpu-smoke gpu-proof gpu-wheels test test-fast lint deepseek-ocr-smoke notebooks sample-data tiny-base smoke-domain clean report-check

setup: system-deps $(VENV)/.installed unsloth-src

# Debian packages the tests need: chromium renders report.html (the report test fails without it),
# tesseract-ocr is an evaluation baseline, postgresql's server binaries back the database sweep test (which
# starts its own throwaway server). Installed when missing and apt-get is usable (root, as on CI); elsewhere
# install them yourself: the tests that need them say so.
SYSTEM_PACKAGES := chromium chromium-driver tesseract-ocr tesseract-ocr-eng postgresql
system-deps:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null && command -v tesseract >/dev/null \
		&& { command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; }; then :; \
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
	$(BIN)/python -m ipykernel install --sys-prefix --name deepsynth-ocr --display-name "DeepSynth OCR" >/dev/null
	touch $@

# DeepSeek-OCR v1's environment: its remote code needs transformers 4.x (requirements-v1.txt). On CPU
# Unsloth is left out, as in .venv (its torchvision dependency would pull a CUDA torch).
VENV_V1 ?= .venv-v1
setup-v1: $(VENV_V1)/.installed
$(VENV_V1)/.installed: requirements-v1.txt pyproject.toml
	$(PYTHON) -m venv $(VENV_V1)
	$(VENV_V1)/bin/pip install -q --upgrade pip
	$(VENV_V1)/bin/pip install -q torch==2.13.0
	grep -v '^unsloth' requirements-v1.txt > $(VENV_V1)/requirements-v1-cpu.txt
	$(VENV_V1)/bin/pip install -q -r $(VENV_V1)/requirements-v1-cpu.txt
	$(VENV_V1)/bin/pip install -q --no-deps -e .
	touch $@

# The v1 family's tests (geometry, collator, pins, backend choice, recipe) under transformers 4.56.2.
test-v1: setup-v1
	$(VENV_V1)/bin/python -m pytest tests/test_v1_family.py

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

# The GPU proof (deepsynth_ocr/gpu_proof.py): checks (versions, the GPU, the paged 8-bit optimizer), then the
# hf and unsloth backends, 60 steps each of 4-bit QLoRA on the bundled tiny base, on a CUDA machine with no
# network, each in its own process with its own timeout. It installs the wheels in WHEELS (made where PyPI is
# reachable by `make gpu-wheels`) beside the machine's own torch and writes OUT/gpu_proof.json after every step,
# with each step's log (on the lent device machine OUT is $OUT, the folder that comes back).
WHEELS ?= .whl
OUT ?= docs/gpu-proof
# Seconds for the whole proof (0: the per-step timeouts alone); on the lent device, 550 of a 600-s call.
DEADLINE ?= 0
gpu-wheels: setup
	rm -rf $(WHEELS)
	$(BIN)/python -m deepsynth_ocr.gpu_proof wheels --dest $(WHEELS)
gpu-proof:
	$(GPU_PYTHON) -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $(WHEELS)/site $(WHEELS)/*.whl
	PYTHONPATH=$(CURDIR)/$(WHEELS)/site:$(CURDIR) $(GPU_PYTHON) -m deepsynth_ocr.gpu_proof run --out $(OUT) --deadline $(DEADLINE)

# Everything but the tests marked long, slow tests included, in TEST_WORKERS pytest-xdist processes (a test file
# stays on one worker, so its module fixtures are built once). Three on 2 cores: the tests wait on subprocesses,
# browsers and servers part of the time, and a third worker fills it (measured 12.7 min against 13.8 with two;
# docs/testing.md).
TEST_WORKERS ?= 3
test: setup
	$(BIN)/python -m pytest -m "not long" -n $(TEST_WORKERS) --dist loadfile --durations=12

# The tests marked long, which make test leaves out to stay under 15 minutes on 2 cores: the released geometry at 2
# decoder layers, the GPU proof's CPU case, a SIGTERM to a sweep mid-trial. CI runs them after make test.
test-long: setup
	$(BIN)/python -m pytest -m long -n 2 --dist loadfile --durations=5

# The quick inner loop: skips tests marked slow.
test-fast: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check deepsynth_ocr tests benchmarks

# Fine-tune the bundled tiny DeepSeek-OCR-2 base on the smoke domain on CPU through notebooks/02_finetune.ipynb
# (papermill); the executed notebook lands in the run directory. Extra notebook parameters:
# make deepseek-ocr-smoke NB_ARGS="-p train_max_steps 50"
NB_ARGS ?=
deepseek-ocr-smoke: setup
	$(BIN)/deepsynth-ocr notebook 02_finetune -f configs/smoke.yaml $(NB_ARGS)

# All four notebooks in order with the smoke config, each consuming what the previous one wrote:
# prepare -> fine-tune -> evaluate -> inference. Executed notebooks land in runs/notebooks/<name>/.
NB_RUNS := runs/notebooks
notebooks: setup
	rm -rf $(NB_RUNS)
	$(BIN)/deepsynth-ocr notebook 01_prepare_data -f configs/smoke.yaml --run-dir $(NB_RUNS)/01_prepare_data
	$(BIN)/deepsynth-ocr notebook 02_finetune -f configs/smoke.yaml --run-dir $(NB_RUNS)/02_finetune \
		-p data_train_path $(NB_RUNS)/01_prepare_data/dataset -p data_eval_path $(NB_RUNS)/01_prepare_data/dataset
	$(BIN)/deepsynth-ocr notebook 03_evaluate -f configs/smoke.yaml --run-dir $(NB_RUNS)/03_evaluate \
		-p finetune_run_dir $(NB_RUNS)/02_finetune -p data_eval_path $(NB_RUNS)/01_prepare_data/dataset
	$(BIN)/deepsynth-ocr notebook 04_inference -f configs/smoke.yaml --run-dir $(NB_RUNS)/04_inference \
		-p finetune_run_dir $(NB_RUNS)/02_finetune -p inputs data/smoke-domain/images

# DeepSeek-OCR-2 in its released geometry (3.389 B parameters) with random seeded weights, written as a checkpoint
# directory without a hub (about 7 GB in .cache/, reused when complete): the real-size path on any machine.
published-checkpoint: setup
	$(BIN)/python -m deepsynth_ocr.models.published

# The released size through the kit's own train, resume, evaluate and infer jobs on this CPU: peak memory and
# s/step by tile count in three settings, kill-and-resume, generation, LoRA against full fine-tuning; rewrites
# the real_size section of docs/benchmarks.md and the measured activation model (deepsynth_ocr/memory_cpu.json).
# About 50 minutes on 2 idle cores; not in CI.
real-size: setup
	$(BIN)/python benchmarks/real_size.py

# Pretrains the bundled tiny DeepSeek-OCR-2 base from scratch on rendered text (about half an hour on
# two idle CPU cores; run by a developer, not in CI) and rewrites data/tiny-base/ with its manifest.
tiny-base: setup
	rm -rf data/tiny-base
	$(BIN)/python -m deepsynth_ocr.models.tiny_base --out data/tiny-base

# Regenerates the smoke domain (part codes in a font the base never saw) exactly (seeded).
smoke-domain: setup
	rm -rf data/smoke-domain
	$(BIN)/python -m deepsynth_ocr.data.lines --out data/smoke-domain

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

# Container images with whichever engine exists: docker, or podman (vfs storage, chroot isolation) where no daemon
# runs; the script says which it used. The base is the public image when it can be pulled, else a Debian one made
# here from Debian packages (docker-base; BASE=public|local|auto). docker-check runs the CPU image: the smoke
# fine-tune, serve and ui health checks from the host, state on the runs volume, and a second build's pip freeze.
docker-base:
	docker/build.sh base

docker-cpu:
	docker/build.sh cpu

docker-gpu:
	docker/build.sh gpu

docker-check: docker-cpu
	docker/check.sh deepsynth-ocr:cpu

docker-gpu-check: docker-gpu
	STACK_ONLY=1 docker/check.sh deepsynth-ocr:gpu

# DeepSpeed is not in the CPU stack (it builds its communication op at first use); this installs it beside the venv
# and runs the DeepSpeed test: ZeRO-2 on 2 CPU processes against one process, ZeRO-3 refused before loading.
DEEPSPEED_SITE := .cache/deepspeed-site
test-deepspeed: setup
	$(BIN)/pip install -q --no-deps --target $(DEEPSPEED_SITE) deepspeed==0.19.8 hjson==3.1.0 msgpack==1.2.4 ninja==1.13.2 py-cpuinfo==9.0.0 einops==0.8.2
	PYTHONPATH=$(DEEPSPEED_SITE) $(BIN)/python -m pytest -m "slow or not slow" tests/test_distributed.py -k deepspeed
