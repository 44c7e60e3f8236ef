"""The bundled tiny base (data/tiny-base): it matches its manifest, reads, loads like a real checkpoint,
and the smoke run on it fixes a domain it reads badly. Also the recipe that pretrains it."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from deepsynth_ocr.collate import OcrCollator
from deepsynth_ocr.config import RunConfig
from deepsynth_ocr.data.lines import SMOKE_STYLE, RenderedLines, code_line
from deepsynth_ocr.models import tiny
from deepsynth_ocr.models.backends import load_base
from deepsynth_ocr.models.families import TINY_BASE, get_family
from deepsynth_ocr.models.tiny_base import (
    Recipe,
    WithCtcHeads,
    fan_in_init,
    heldout_set,
    positional_query_init,
    pretrain,
    score,
)

from .conftest import ROOT

PATCHES = TINY_BASE.vision_features
MANIFEST = json.loads((tiny.BUNDLED_BASE / tiny.BASE_MANIFEST).read_text())


def test_bundle_holds_only_what_the_recipe_writes_and_matches_its_hash():
    assert sorted(p.name for p in tiny.BUNDLED_BASE.iterdir()) == MANIFEST["files"]
    assert tiny.file_sha256(tiny.BUNDLED_BASE / tiny.BASE_WEIGHTS) == MANIFEST["weights_sha256"]
    assert sum(p.stat().st_size for p in tiny.BUNDLED_BASE.iterdir()) < 20e6
    assert MANIFEST["recipe"] == Recipe().__dict__ and MANIFEST["geometry"] == TINY_BASE.__dict__ | {
        "sam_global_layers": list(TINY_BASE.sam_global_layers)}


@pytest.fixture(scope="module")
def base():
    loaded = load_base(RunConfig())  # tiny family, empty name_or_path: the bundled base
    return loaded.model, loaded.processor


def test_the_default_tiny_model_is_the_bundled_base_loaded_by_from_pretrained(base):
    model, _ = base
    assert Path(model.name_or_path) == tiny.BUNDLED_BASE
    cfg = RunConfig()
    cfg.model.name_or_path = tiny.RANDOM
    random_model = load_base(cfg).model
    assert random_model.name_or_path == ""
    assert random_model.config.text_config.hidden_size != model.config.text_config.hidden_size


def test_base_reads_held_out_texts_of_its_pretraining_distribution(base):
    rows = heldout_set(Recipe())
    assert len(rows) >= 50
    result = score(*base, rows)
    assert result["cer"] < 0.10, result
    # The manifest's numbers are what this checkout's base really scores.
    assert result["cer"] == pytest.approx(MANIFEST["heldout"]["cer"], abs=1e-6)


def test_the_smoke_domain_is_one_the_base_reads_badly(base):
    domain = score(*base, RenderedLines(64, seed=99, style=SMOKE_STYLE, text_fn=code_line))
    assert domain["cer"] > 2 * MANIFEST["heldout"]["cer"], domain


@pytest.fixture(scope="module")
def base_parts():
    tokenizer = tiny.build_tiny_tokenizer()
    return tokenizer, tiny.build_tiny_processor(tokenizer, TINY_BASE)


def test_positional_init_sends_each_learned_query_to_its_own_image_feature(base_parts):
    model = tiny.build_tiny_model(base_parts[0], TINY_BASE, seed=0)
    fan_in_init(model)
    positional_query_init(model, PATCHES)
    encoder = model.model.vision_tower.vision_encoder
    encoder.config._attn_implementation = "eager"  # so the layer returns its attention weights
    seen = {}
    encoder.layers[0].self_attn.register_forward_hook(lambda m, a, out: seen.__setitem__("w", out[1]))
    torch.manual_seed(0)
    with torch.no_grad():
        model.model.vision_tower(torch.randn(2, 3, TINY_BASE.image_size, TINY_BASE.image_size), output_attentions=True)
    # Head 0, the first PATCHES queries (the others have no feature of their own): (batch, query, feature).
    queries_to_features = seen["w"][:, 0, PATCHES:2 * PATCHES, :PATCHES]
    diagonal = queries_to_features.diagonal(dim1=1, dim2=2)
    assert (queries_to_features.argmax(-1) == torch.arange(PATCHES)).all()
    assert diagonal.min() > 0.85 and diagonal.mean() > 0.95
    # The other head is left to learn: its attention is not pinned.
    assert seen["w"][:, 1, PATCHES:2 * PATCHES, :PATCHES].diagonal(dim1=1, dim2=2).mean() < 0.5


def test_ctc_heads_add_their_losses_to_the_decoder_loss(base_parts):
    tokenizer, processor = base_parts
    model = tiny.build_tiny_model(tokenizer, TINY_BASE, seed=0).train()
    wrapped = WithCtcHeads(model, tokenizer.pad_token_id, sam_weight=0.5, token_weight=0.5)
    batch = OcrCollator(processor, get_family("tiny"))([RenderedLines(4, seed=0)[i] for i in range(4)])
    total = wrapped(**batch)["loss"]
    decoder = wrapped.losses["decoder"][0]
    ctc = 0.5 * wrapped.losses["sam"][0] + 0.5 * wrapped.losses["tokens"][0]
    assert ctc > 0 and total.item() == pytest.approx(decoder + ctc, rel=1e-5)
    total.backward()
    assert wrapped.heads["sam"].weight.grad.abs().sum() > 0
    assert model.model.vision_tower.sam_encoder.patch_embed.projection.weight.grad.abs().sum() > 0


@pytest.mark.slow
def test_pretraining_is_deterministic_and_its_output_loads_checked_against_the_manifest(tmp_path):
    recipe = Recipe(steps=4, batch_size=4, warmup_steps=1, heldout_lines=4, progress_every=0)
    first, second = pretrain(recipe, tmp_path / "a"), pretrain(recipe, tmp_path / "b")
    assert first["weights_sha256"] == second["weights_sha256"]
    assert first["data_hash"] == second["data_hash"] and first["heldout"] == second["heldout"]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == first["files"]
    other_seed = pretrain(Recipe(**{**recipe.__dict__, "seed": 1}), tmp_path / "c")
    assert other_seed["weights_sha256"] != first["weights_sha256"]

    cfg = RunConfig()
    cfg.model.name_or_path = str(tmp_path / "a")
    model = load_base(cfg).model  # through from_pretrained, like a real checkpoint
    assert model.name_or_path == str(tmp_path / "a")
    assert model.config.text_config.hidden_size == TINY_BASE.text_hidden_size

    damaged = Path(shutil.copytree(tmp_path / "a", tmp_path / "damaged"))
    weights = bytearray((damaged / tiny.BASE_WEIGHTS).read_bytes())
    weights[-1] ^= 1
    (damaged / tiny.BASE_WEIGHTS).write_bytes(bytes(weights))
    cfg.model.name_or_path = str(damaged)
    with pytest.raises(tiny.BaseMismatchError, match=r"model\.safetensors does not match .*make tiny-base"):
        load_base(cfg)


@pytest.mark.slow
def test_smoke_run_halves_the_domain_cer_of_the_base(tmp_path, monkeypatch):
    from deepsynth_ocr.jobs.train import train

    monkeypatch.chdir(ROOT)
    cfg = RunConfig.from_yaml(ROOT / "configs" / "smoke.yaml")
    cfg.output_root = str(tmp_path / "runs")
    cfg.tracking.wandb = "disabled"
    result = train(cfg, tmp_path / "runs" / "smoke")
    assert result.after["cer"] <= 0.5 * result.before["cer"], (result.before, result.after)
    rows = [json.loads(x) for x in (result.run_dir / "eval" / "after.jsonl").read_text().splitlines()]
    assert len(rows) == 64 and sum(r["cer"] for r in rows) / 64 == pytest.approx(result.after["cer_mean"])
    report = (result.run_dir / "report.html").read_text()
    assert "before (base model)" in report and "after (fine-tuned)" in report and str(tiny.BUNDLED_BASE) in report
