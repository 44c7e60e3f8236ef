"""The privacy switches docs/observability.md names do what it says, checked on what really leaves: a real offline
W&B run and a real server keeping samples. With a switch set, no image and no text of the eval rows reaches the W&B
run or the sample store; the run directory's own per-sample files (eval/*.jsonl) stay, by design, on the user's disk.
Each check is paired with the default, so a scan that could not see a leak fails too."""

from __future__ import annotations

import re

import pytest

from deepsynth_ocr.config import SECTIONS, ConfigError, RunConfig, field_help
from deepsynth_ocr.data.synthetic import RenderStyle, render_text, write_rendered_split

from .conftest import ROOT

# Eval texts no model, library or W&B internal would write by chance; within the tiny tokenizer's alphabet, on a
# wider canvas than the tiny model's 48 px (its processor resizes).
PRIVATE = ["qzxjvkwqpy", "wvkqjzxpmb", "pmqzjxkvwy", "xjwqkzvpmy"]
CANVAS = RenderStyle(width=160, height=48)
# PNG, JPEG, WebP and GIF signatures: W&B stages a table's images as files without a suffix, so content is what counts.
IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"RIFF", b"GIF8")


def _scan(folder, texts) -> tuple[list[str], set[str]]:
    """Files under ``folder`` that are or hold an image, and which of ``texts`` appear in any file's bytes."""
    images, found = [], set()
    for f in folder.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            if data.startswith(IMAGE_MAGIC) or b"\x89PNG\r\n\x1a\n" in data or b"JFIF" in data:
                images.append(f.name)
            found |= {t for t in texts if t.encode() in data}
    return images, found


@pytest.mark.parametrize("switch", [None, "tracking.log_images=false", "eval.num_logged_samples=0"])
def test_each_wandb_switch_keeps_every_eval_image_and_text_out_of_the_offline_run(switch, smoke_cfg, tmp_path):
    from deepsynth_ocr.jobs.train import train

    eval_path = write_rendered_split(tmp_path / "private", "eval", [(render_text(t, CANVAS), t) for t in PRIVATE])
    cfg = smoke_cfg.with_overrides([f"data.eval_path={eval_path}", "tracking.wandb=offline", "train.max_steps=2",
                                    "eval.every_steps=0", "eval.baselines=[]", *([switch] if switch else [])])
    result = train(cfg)
    assert (result.run_dir / "wandb").is_dir()
    images, texts = _scan(result.run_dir / "wandb", PRIVATE)
    on_disk = (result.run_dir / "eval" / "after.jsonl").read_text()
    assert all(t in on_disk for t in PRIVATE)  # the user's own copy
    if switch is None:
        assert len(images) >= len(PRIVATE) and texts == set(PRIVATE)  # the default sends them: the scan sees them
    else:
        assert images == [] and texts == set(), (images, texts)


def test_num_logged_samples_sends_the_first_n_rows_and_refuses_below_minus_one(smoke_cfg):
    from deepsynth_ocr.jobs.train import _sample_rows

    rows = [{"id": str(i), "reference": t, "prediction": ""} for i, t in enumerate(PRIVATE)]
    dataset = [{"image": f"img{i}"} for i in range(len(rows))]
    assert [len(_sample_rows(dataset, rows, n)) for n in (-1, 0, 3)] == [4, 0, 3]
    with pytest.raises(ConfigError, match="eval.num_logged_samples"):
        smoke_cfg.with_overrides(["eval.num_logged_samples=-2"])


# `section.field` in backticks, as the docs name a setting; `eval.normalize_*` names a family of fields, and
# `model.generate(...)` is a call, not a setting.
KEY = re.compile(rf"`((?:{'|'.join(SECTIONS)})\.[a-z_0-9.]+)(\*[a-z_]*)?(\()?")


def test_every_config_key_a_doc_page_names_exists():
    known = set(field_help(RunConfig))
    pages = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
    named = {(page.name, key + star) for page in pages for key, star, call in KEY.findall(page.read_text(encoding="utf-8"))
             if not call}
    assert len(named) > 50  # the pattern finds the docs' settings at all
    stale = sorted((page, key) for page, key in named
                   if not (key in known or "*" in key and any(re.fullmatch(key.replace("*", ".*"), k) for k in known)))
    assert not stale, f"settings named in the docs that RunConfig does not have: {stale}"
