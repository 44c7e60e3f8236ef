# %% [markdown]
# Colab: `!git clone <this repository>` and `%cd` into it, open this notebook there, then *Runtime → Run all*.
#
# # 04 — Batch OCR with a fine-tuned adapter
#
# Reads image files, folders, globs and PDFs, OCRs them in batches and streams one JSONL row per
# image or PDF page to `<run_dir>/predictions.jsonl`. A rerun skips what is done; a bad input is an
# error row, not a crash. Unattended: `deepsynth-ocr notebook 04_inference -p finetune_run_dir runs/<run> -p inputs data/smoke-domain/images`.

# %%
import subprocess
import sys

if "google.colab" in sys.modules:  # Colab only: install the GPU stack and this kit; elsewhere nothing
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-r", "requirements-training.txt", "-e", "."], check=True)

# %% tags=["parameters"]
config_path = ""
run_dir = ""
finetune_run_dir = ""
inputs = "data/smoke-domain/images"
name = "run"
output_root = "runs"
infer_batch_size = 16
infer_max_new_tokens = 2048
infer_pdf_dpi = 144
infer_adapter = ""

# %%
from deepsynth_ocr import cells as nb

cfg = nb.config_from_parameters(globals(), config_path or nb.run_config_path(finetune_run_dir))
cfg.infer.adapter = cfg.infer.adapter or nb.adapter_dir(finetune_run_dir) or ""
out_path = nb.output_file(run_dir, cfg, "predictions.jsonl")
cfg.infer

# %%
from deepsynth_ocr.jobs.infer import infer

summary = infer([inputs], out_path, cfg)
summary

# %%
nb.predictions_table(out_path)

# %% [markdown]
# ## Serving the same fine-tune
#
# For requests instead of files: `deepsynth-ocr serve --run <finetune_run_dir>` starts an OpenAI-compatible
# server (the `openai` client with an `image_url` part, or a plain upload to `/v1/ocr`) that answers with the
# same text as this notebook, batching concurrent requests. See `docs/serving.md`.
