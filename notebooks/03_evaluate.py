# %% [markdown]
# Colab: `!git clone <this repository>` and `%cd` into it, open this notebook there, then *Runtime → Run all*.
#
# # 03 — Evaluate: base vs fine-tuned vs classical baselines
#
# Scores the base model, the fine-tuned adapter of a `02_finetune` run, and any baseline engines that
# are installed (Tesseract, RapidOCR) on the same eval set, with CER/WER and a self-contained
# `report.html`. Unattended: `deepsynth-ocr notebook 03_evaluate -p finetune_run_dir runs/<run>`.

# %%
import subprocess
import sys

if "google.colab" in sys.modules:  # Colab only: install the GPU stack and this kit; elsewhere nothing
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-r", "requirements-training.txt", "-e", "."], check=True)

# %% tags=["parameters"]
config_path = ""
run_dir = ""
finetune_run_dir = ""
name = "run"
output_root = "runs"
data_eval_path = "data/smoke-domain/eval.jsonl"
eval_batch_size = 16
eval_max_samples = 0
tracking_log_images = True

# %%
from deepsynth_ocr import cells as nb

# The fine-tune's own config (model, seed) unless another one is given.
cfg = nb.config_from_parameters(globals(), config_path or nb.run_config_path(finetune_run_dir))
cfg.eval

# %%
from deepsynth_ocr.jobs.evaluate import evaluate

eval_dir, summaries = evaluate(cfg, nb.adapter_dir(finetune_run_dir), run_dir or None)
eval_dir

# %%
nb.metrics_table(eval_dir)

# %%
nb.sample_predictions(eval_dir, tag="after" if finetune_run_dir else "before")

# %%
nb.show_report(eval_dir)
