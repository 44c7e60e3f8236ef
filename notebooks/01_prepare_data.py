# %% [markdown]
# Colab: `!git clone <this repository>` and `%cd` into it, open this notebook there, then *Runtime → Run all*.
#
# # 01 — Prepare data
#
# Reads the sources (JSONL/CSV/Parquet manifests, image folders with `.txt`/`.gt.txt`, WebDataset
# shards, saved datasets), validates every row, and saves train/validation(/test) splits by id hash.
# Every rejected row is listed with its location and reason in `report.json`: nothing is dropped silently.
# The output directory is what `02_finetune` takes as `data_train_path` / `data_eval_path`.

# %%
import subprocess
import sys

if "google.colab" in sys.modules:  # Colab only: install the GPU stack and this kit; elsewhere nothing
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-r", "requirements-training.txt", "-e", "."], check=True)

# %% tags=["parameters"]
config_path = ""
run_dir = ""
name = "run"
model_family = "tiny"
model_name_or_path = ""
prepare_sources = []
prepare_output_dir = ""
prepare_validation_size = 0.1
prepare_test_size = 0.0
prepare_source_split = "train"
prepare_max_rows = 0
data_source_type = "auto"
data_task = "ocr"
data_preset = ""
data_strict = False

# %%
from deepsynth_ocr import cells as nb

cfg = nb.config_from_parameters(globals(), config_path)
cfg.prepare

# %%
result = nb.prepare_data(cfg, run_dir)

# %%
nb.prepare_table(result)

# %%
nb.dataset_samples(result.output_dir, split="train")
