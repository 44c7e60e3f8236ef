import dataclasses

import pytest

from deepsynth_ocr.config import ConfigError, RunConfig, field_help

from .conftest import ROOT


def test_every_field_has_help_text():
    helps = field_help()
    assert len(helps) > 30
    assert all(text.strip() for text in helps.values()), [k for k, v in helps.items() if not v.strip()]


def test_yaml_round_trip(tmp_path):
    cfg = RunConfig.from_yaml(ROOT / "configs" / "smoke.yaml")
    cfg.train.learning_rate = 3e-4
    path = tmp_path / "c.yaml"
    cfg.to_yaml(path)
    again = RunConfig.from_yaml(path)
    assert again == cfg
    assert again.train.learning_rate == 3e-4


@pytest.mark.parametrize(
    "data, field",
    [
        ({"train": {"learning_rate": -1}}, "train.learning_rate"),
        ({"train": {"max_steps": 0}}, "train.max_steps"),
        ({"lora": {"r": "big"}}, "lora.r"),
        ({"model": {"family": "nope"}}, "model.family"),
        ({"model": {"backend": "tpu"}}, "model.backend"),
        ({"model": {"family": "deepseek-ocr-2"}}, "model.name_or_path"),
        ({"eval": {"batch_size": 0}}, "eval.batch_size"),
        ({"train": {"learnig_rate": 1e-3}}, "train.learnig_rate"),
        ({"tracking": {"wandb": "maybe"}}, "tracking.wandb"),
        ({"lora": {"enabled": False}, "model": {"load_in_4bit": True}}, "lora.enabled"),
        ({"lora": {"enabled": False}, "model": {"dtype": "float16"}}, "model.dtype"),
    ],
)
def test_invalid_values_name_the_field(data, field):
    with pytest.raises(ConfigError) as err:
        RunConfig.from_dict(data)
    assert str(err.value).startswith(field)


def test_yaml_scientific_notation_without_dot_is_a_float(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  learning_rate: 2e-4\n")
    assert RunConfig.from_yaml(path).train.learning_rate == pytest.approx(2e-4)


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        RunConfig.from_yaml(tmp_path / "nope.yaml")


def test_flat_names_round_trip():
    cfg = RunConfig()
    flat = cfg.to_flat()
    assert flat["train_learning_rate"] == cfg.train.learning_rate
    assert flat["seed"] == cfg.seed
    changed = RunConfig.from_flat({"train_max_steps": 7, "model_family": "tiny", "name": "x"})
    assert changed.train.max_steps == 7 and changed.name == "x"
    assert dataclasses.replace(changed.train, max_steps=cfg.train.max_steps) == cfg.train


def test_full_fine_tuning_in_float16_is_refused_where_auto_resolves_to_it(monkeypatch, tmp_path):
    """GPU_AUDIT_2 C2: a T4 with dtype auto trains in float16, where full fine-tuning cannot unscale."""
    import torch

    from deepsynth_ocr import training

    cfg = RunConfig()
    cfg.lora.enabled = False
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla T4")
    monkeypatch.setattr(training, "torch_dtype", lambda requested: torch.float16)
    with pytest.raises(ConfigError, match="^model.dtype: auto picks float16 on Tesla T4"):
        training.training_arguments(cfg, tmp_path)
