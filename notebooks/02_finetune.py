# %% [markdown]
# Colab: `!git clone <this repository>` and `%cd` into it, open this notebook there, then *Runtime → Run all*.
#
# # 02 — Fine-tune DeepSeek-OCR-2 with LoRA
#
# Trains LoRA adapters on the language model, scores the same eval set before and after, and writes
# everything to one run directory. Unattended: `deepsynth-ocr notebook 02_finetune -f configs/smoke.yaml`.
#
# Several GPUs: a notebook kernel is one process, so run the same job from a terminal under a launcher,
# with the same config: `torchrun --nproc_per_node 4 -m deepsynth_ocr.cli train -c configs/deepseek-ocr-2-qlora.yaml`
# (or `accelerate launch --config_file configs/accelerate/ddp.yaml -m deepsynth_ocr.cli train -c ...`).
# The run directory it writes opens here with `nb.metrics_table(run_dir)` and the cells below.

# %%
import subprocess
import sys

if "google.colab" in sys.modules:  # Colab only: install the GPU stack and this kit; elsewhere nothing
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-r", "requirements-training.txt", "-e", "."], check=True)

# %% tags=["parameters"]
config_path = ""
run_dir = ""
name = "run"
output_root = "runs"
seed = 0
model_family = "tiny"
model_name_or_path = ""
model_backend = "auto"
model_load_in_4bit = False
model_gradient_checkpointing = False
lora_r = 16
lora_alpha = 16
data_train_path = "data/smoke-domain/train.jsonl"
data_eval_path = "data/smoke-domain/eval.jsonl"
train_max_steps = 200
train_learning_rate = 0.0002
train_per_device_batch_size = 2
train_gradient_accumulation_steps = 4
train_warmup_steps = 5
train_optim = "paged_adamw_8bit"
train_sampling = "random"
train_keep_best = False
train_early_stopping_patience = 0
eval_batch_size = 16
tracking_wandb = "offline"
tracking_log_images = True
augment_enabled = False
log_format = "text"

# %%
from deepsynth_ocr import cells as nb

cfg = nb.config_from_parameters(globals(), config_path)
cfg

# %%
from deepsynth_ocr.jobs.train import train

result = train(cfg, run_dir=run_dir or None)
result.run_dir

# %%
nb.metrics_table(result.run_dir)

# %%
nb.before_after_samples(result.run_dir)

# %%
nb.training_curves(result.run_dir)
