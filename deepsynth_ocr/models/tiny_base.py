"""Pretrain the tiny DeepSeek-OCR-2 base that ships under ``data/tiny-base/``.

The smoke run should look like real use: a base that already reads, a domain it reads badly, and a
short LoRA fine-tune that fixes it. No real DeepSeek-OCR weights can be had offline, so the kit
pretrains its own miniature once on rendered text lines (``make tiny-base``, about half an hour on two
CPU cores) and bundles the result. It is not a substitute for the real weights.

The training lines come from ``deepsynth_ocr.data.lines``: reproducible per seed and index.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import transformers
from torch import nn
from torch.utils.data import Dataset, IterableDataset
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed

from deepsynth_ocr.collate import OcrCollator
from deepsynth_ocr.config import EvalConfig
from deepsynth_ocr.data.lines import LineStyle, RenderedLines, data_hash
from deepsynth_ocr.evaluate import max_new_tokens_for, score_rows
from deepsynth_ocr.models import tiny
from deepsynth_ocr.models.backends import LoadedModel
from deepsynth_ocr.models.families import TINY_BASE, get_family

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the bundled base; recorded in its manifest."""

    seed: int = 0
    steps: int = 3000
    batch_size: int = 32
    learning_rate: float = 2e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    # Weights of auxiliary CTC losses (pretraining only; their heads are not saved), see WithCtcHeads.
    # Without them the vision side learns only through the decoder's slow search for where to look:
    # runs without them (and without fan_in_init) stayed at the character prior for 700 steps.
    sam_ctc_weight: float = 0.5
    token_ctc_weight: float = 0.5
    heldout_lines: int = 64
    progress_every: int = 250  # steps between held-out CER readings in the log


class InOrder(IterableDataset):
    """Rows of a map-style dataset in index order: the run depends on the data's seed alone, not on a sampler."""

    def __init__(self, ds: Dataset):
        self.ds = ds

    def __iter__(self):
        return (self.ds[i] for i in range(len(self.ds)))


def _columns(sam_features: torch.Tensor) -> torch.Tensor:
    """SAM neck output (batch, channels, rows, columns) as a left-to-right sequence (batch, columns, channels).

    Max over rows, not mean: the line covers a few rows of the padded square view, and a mean would
    dilute it among the padding.
    """
    return sam_features.amax(dim=2).transpose(1, 2)


def fan_in_init(model: nn.Module) -> None:
    """Draw every Linear and Conv2d weight at std 1/sqrt(fan_in).

    The config's initializer_range (0.02) suits the real model's widths (1280 and up, where
    1/sqrt(width) is about 0.03). At the tiny widths (32-128) it leaves every attention score near
    zero, so attention starts uniform over the 145 image tokens and the runs made with it stayed at
    the character prior for hundreds of steps.
    """
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.normal_(module.weight, std=module.weight[0].numel() ** -0.5)


def positional_query_init(model: nn.Module, num_patches: int, strength: float = 6.0) -> None:
    """Make head 0 of the vision encoder's first layer send learned query ``j`` to image feature ``j``.

    In DeepSeek-OCR-2's encoder the learned queries follow the ``num_patches`` image features and
    attend to them; only the queries' outputs reach the language model. Starting from random
    projections, attention is uniform, every query carries the same average of the image, and the
    runs made that way learned glyphs in SAM (its CTC loss fell) while the queries' CTC loss and
    the decoder loss stayed flat. Here the head's query and key biases are set so that, through the
    encoder's rotary embedding, the score depends only on the position offset and peaks at exactly
    ``num_patches`` (query j at position num_patches + j, feature j at position j). With
    ``strength`` 6, query j puts about 97% of its attention on feature j; training can move it.
    """
    attn = model.model.vision_tower.vision_encoder.layers[0].self_attn
    head = attn.head_dim
    inv_freq = model.model.vision_tower.vision_encoder.rotary_emb.inv_freq.float()
    angle = -num_patches * inv_freq
    with torch.no_grad():
        for proj in (attn.q_proj, attn.k_proj):
            proj.weight[:head].mul_(0.1)  # content starts small next to the positional biases
        attn.q_proj.bias[:head] = strength * torch.cat([angle.cos(), angle.sin()])
        attn.k_proj.bias[:head] = strength * torch.cat([torch.ones_like(angle), torch.zeros_like(angle)])


class WithCtcHeads(nn.Module):
    """The model plus pretraining-only CTC heads; ``forward`` returns the decoder loss plus the CTC losses.

    One head reads the SAM neck's output column by column, left to right, so the vision encoder gets
    a direct, local signal per glyph (as in a CRNN). The other reads the image tokens the language
    model receives, so the learned queries learn to carry the line in reading order.
    """

    def __init__(self, model, blank_id: int, sam_weight: float, token_weight: float):
        super().__init__()
        self.model, self.blank_id = model, blank_id
        text, sam = model.config.text_config, model.config.vision_config.sam_config
        self.weights = {"sam": sam_weight, "tokens": token_weight}
        self.heads = nn.ModuleDict({"sam": nn.Linear(sam.output_channels, text.vocab_size),
                                    "tokens": nn.Linear(text.hidden_size, text.vocab_size)})
        self.seen: dict[str, torch.Tensor] = {}
        self.losses: dict[str, list[float]] = {"decoder": [], "sam": [], "tokens": []}
        tower = model.model.vision_tower.sam_encoder
        tower.neck.register_forward_hook(lambda m, a, out: self.seen.__setitem__("sam", _columns(out)))
        model.model.multi_modal_projector.register_forward_hook(lambda m, a, out: self.seen.__setitem__("tokens", out))

    def forward(self, labels, **batch):
        out = self.model(labels=labels, **batch)
        targets = (labels != -100) & (labels != self.model.config.text_config.eos_token_id)
        loss = out.loss
        self.losses["decoder"].append(out.loss.item())
        for name, head in self.heads.items():
            log_probs = head(self.seen[name]).log_softmax(-1).transpose(0, 1)  # (frames, batch, vocab)
            frames, rows = log_probs.shape[:2]
            ctc = nn.functional.ctc_loss(log_probs, labels[targets], torch.full((rows,), frames), targets.sum(1),
                                         blank=self.blank_id, zero_infinity=True)
            self.losses[name].append(ctc.item())
            loss = loss + self.weights[name] * ctc
        return {"loss": loss}


class HeldOutProgress(TrainerCallback):
    """Logs held-out CER every few hundred steps: a from-scratch run shows whether it has started to read."""

    def __init__(self, processor, rows, every: int):
        self.processor, self.rows, self.every = processor, rows, every

    def on_log(self, args, state, control, model=None, **kwargs):
        if isinstance(model, WithCtcHeads) and model.losses["decoder"]:
            log.info("step %d: decoder loss %.3f, CTC on SAM columns %.3f, CTC on image tokens %.3f",
                     state.global_step, *(sum(v) / len(v) for v in model.losses.values()))
            model.losses = {k: [] for k in model.losses}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.every and state.global_step % self.every == 0:
            result = score(getattr(model, "model", model), self.processor, self.rows)
            log.info("step %d: held-out CER %.4f WER %.4f exact %.3f", state.global_step,
                     result["cer"], result["wer"], result["exact_match"])


def heldout_set(recipe: Recipe) -> RenderedLines:
    # A seed the training stream never uses, so held-out lines are unseen renderings.
    return RenderedLines(recipe.heldout_lines, seed=recipe.seed + 1_000_003)


def score(model, processor, rows, batch_size: int = 16) -> dict:
    """CER/WER of greedy predictions on ``rows`` (a sequence of rendered lines)."""
    rows = [rows[i] for i in range(len(rows))]
    cfg = EvalConfig(batch_size=batch_size)
    bound = max_new_tokens_for([r["text"] for r in rows], processor.tokenizer, cfg)
    return score_rows(LoadedModel(model, processor, get_family("tiny")), rows, cfg, bound, desc="held-out")


def pretrain(recipe: Recipe, out_dir: Path) -> dict:
    """Train the base from scratch on rendered lines and write it, with its manifest, to ``out_dir``."""
    started = time.time()
    set_seed(recipe.seed)
    family = get_family("tiny")
    tokenizer = tiny.build_tiny_tokenizer()
    processor = tiny.build_tiny_processor(tokenizer, TINY_BASE)
    model = tiny.build_tiny_model(tokenizer, TINY_BASE, seed=recipe.seed).train()
    with torch.random.fork_rng():
        torch.manual_seed(recipe.seed)
        fan_in_init(model)
    positional_query_init(model, num_patches=TINY_BASE.vision_features)
    train_ds = RenderedLines(recipe.steps * recipe.batch_size, seed=recipe.seed)
    progress = HeldOutProgress(processor, [heldout_set(recipe)[i] for i in range(min(32, recipe.heldout_lines))], recipe.progress_every)
    trained = WithCtcHeads(model, tokenizer.pad_token_id, recipe.sam_ctc_weight, recipe.token_ctc_weight)
    # The Trainer's scratch directory stays outside out_dir: the bundle holds only what is listed in the manifest.
    with tempfile.TemporaryDirectory(prefix="tiny-base-work-") as work:
        args = TrainingArguments(
            output_dir=work, max_steps=recipe.steps, per_device_train_batch_size=recipe.batch_size,
            learning_rate=recipe.learning_rate, warmup_steps=recipe.warmup_steps, lr_scheduler_type="cosine",
            weight_decay=recipe.weight_decay, optim="adamw_torch", logging_steps=50, save_strategy="no",
            seed=recipe.seed, data_seed=recipe.seed, report_to="none", remove_unused_columns=False,
            dataloader_num_workers=0, use_cpu=not torch.cuda.is_available(),
        )
        Trainer(model=trained, args=args, train_dataset=InOrder(train_ds), data_collator=OcrCollator(processor, family),
                callbacks=[progress]).train()
    return write_bundle(model, processor, recipe, out_dir, train_ds, time.time() - started)


def write_bundle(model, processor, recipe: Recipe, out_dir: Path, train_ds: RenderedLines, train_seconds: float) -> dict:
    """Score the trained base on the held-out lines and write it, its processor and its manifest."""
    model.eval()
    heldout = score(model, processor, heldout_set(recipe))
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    manifest = {
        "what": "tiny DeepSeek-OCR-2 pretrained by deepsynth_ocr.models.tiny_base on rendered text lines; "
                "not a substitute for the real DeepSeek-OCR weights",
        "command": "make tiny-base",
        "recipe": asdict(recipe),
        "geometry": asdict(TINY_BASE),
        "line_style": asdict(LineStyle()),
        "data_hash": data_hash(train_ds),
        "heldout": {k: heldout[k] for k in ("n", "cer", "wer", "exact_match")},
        "wall_time_s": round(train_seconds, 1),
        "weights_sha256": tiny.file_sha256(out_dir / tiny.BASE_WEIGHTS),
        "files": sorted([p.name for p in out_dir.iterdir()] + [tiny.BASE_MANIFEST]),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    (out_dir / tiny.BASE_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    log.info("tiny base written to %s: held-out CER %.4f WER %.4f", out_dir, heldout["cer"], heldout["wer"])
    return manifest


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Pretrain the bundled tiny DeepSeek-OCR-2 base (about 30 minutes on 2 CPU cores).")
    ap.add_argument("--out", default="data/tiny-base")
    ap.add_argument("--steps", type=int, default=Recipe.steps)
    ap.add_argument("--seed", type=int, default=Recipe.seed)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    manifest = pretrain(Recipe(seed=args.seed, steps=args.steps), Path(args.out))
    print(json.dumps(manifest["heldout"]))


if __name__ == "__main__":
    main()
