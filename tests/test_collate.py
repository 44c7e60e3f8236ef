import pytest
import torch
from PIL import Image

from deepsynth_ocr.collate import IGNORE_INDEX, OcrCollator
from deepsynth_ocr.models import tiny


def _rows():
    return [
        {"image": Image.new("RGB", (48, 48), "white"), "text": "ab", "prompt": "<image>\nFree OCR."},
        {"image": Image.new("RGB", (60, 30), "gray"), "text": "hello", "prompt": "<image>\nRead this line."},
    ]


@pytest.fixture(params=["distinct_pad", "pad_is_eos"])
def processor(request, tiny_parts):
    _, _, family = tiny_parts
    tokenizer = tiny.build_tiny_tokenizer(pad_token=tiny.PAD if request.param == "distinct_pad" else tiny.EOS)
    return tiny.build_tiny_processor(tokenizer, family.tiny_geometry)


def test_labels_mask_prompt_placeholders_and_padding_but_keep_eos(processor, tiny_parts):
    family = tiny_parts[2]
    tok = processor.tokenizer
    batch = OcrCollator(processor, family)(_rows())
    image_id = tok.convert_tokens_to_ids(tiny.IMAGE)
    for i, row in enumerate(_rows()):
        ids, labels, mask = batch["input_ids"][i], batch["labels"][i], batch["attention_mask"][i]
        target = tok(row["text"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        supervised = labels[labels != IGNORE_INDEX].tolist()
        # Exactly the target and its EOS are learned, at the end of the real tokens.
        assert supervised == target
        n_real = int(mask.sum())
        assert labels[n_real - 1].item() == tok.eos_token_id
        assert torch.equal(ids[n_real - len(target):n_real], torch.tensor(target))
        # Nothing else: not the prompt, not the image placeholders, not the padding.
        assert (labels[ids == image_id] == IGNORE_INDEX).all()
        assert (labels[mask == 0] == IGNORE_INDEX).all()
        assert (labels[: n_real - len(target)] == IGNORE_INDEX).all()


def test_generation_batches_are_left_padded_prompts(processor, tiny_parts):
    family = tiny_parts[2]
    batch = OcrCollator(processor, family, for_generation=True)(_rows())
    assert "labels" not in batch
    mask = batch["attention_mask"]
    assert (mask[:, -1] == 1).all()  # every row's last position is a real token
    short = int(mask.sum(1).argmin())
    assert mask[short, 0] == 0 and (mask[short].diff() >= 0).all()  # zeros then ones
    assert batch["pixel_values"].shape[0] == 2


def test_prompt_length_differs_per_row_and_is_kept(processor, tiny_parts):
    family = tiny_parts[2]
    batch = OcrCollator(processor, family)(_rows())
    lengths = batch["attention_mask"].sum(1).tolist()
    assert lengths[0] != lengths[1]
