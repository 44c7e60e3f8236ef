"""Run in a fresh process by test_train_run: rebuild the base, load the saved adapter, write logits."""

import sys
from pathlib import Path

import torch

from deepsynth_ocr.config import RunConfig
from deepsynth_ocr.models.backends import load_base

run_dir, batch_path, out_path = map(Path, sys.argv[1:4])
cfg = RunConfig.from_yaml(run_dir / "config.yaml")
batch = torch.load(batch_path)
with torch.no_grad():
    base = load_base(cfg).model
    base_logits = base.eval()(**batch).logits
    model = load_base(cfg).with_adapter(run_dir / "adapter").model
    adapter_logits = model(**batch).logits
    merged = model.merge_and_unload().eval()
    merged_logits = merged(**batch).logits
torch.save({"base": base_logits, "adapter": adapter_logits, "merged": merged_logits}, out_path)
