"""The memory model: weights from the released geometry at any depth, activations from the real-size measurement."""

import pytest

from deepsynth_ocr import memory


def test_the_released_split_counts_the_real_vision_side_and_scales_with_depth():
    full, two = memory.published_split("deepseek-ocr-2"), memory.published_split("deepseek-ocr-2", 2)
    assert sum(full.values()) == pytest.approx(3.389e9, rel=1e-3)
    # SAM ViT-B + the Qwen2-0.5B-shaped encoder without a vocabulary: 0.454 B, not the 0.58 B once planned.
    assert full["vision"] == two["vision"] == pytest.approx(0.454e9, rel=1e-2)
    experts_per_layer = 64 * 3 * 1280 * 896
    assert full["16bit routed experts"] - two["16bit routed experts"] == 10 * experts_per_layer
    assert memory.published_split("deepseek-ocr")["vision"] == memory.V1_VISION_PARAMS


def test_the_fitted_model_reproduces_every_measured_step_within_15_percent():
    rows = memory.measured()["rows"]
    assert {r["layers"] for r in rows} >= {2, 12} and {r["tiles"] for r in rows} >= {0, 2, 6}
    for r in rows:
        predicted = memory.cpu_peak_gib(r["setting"].startswith("nf4"), r["setting"] != "lora", r["tiles"], r["layers"])
        assert abs(predicted - r["peak_rss_gib"]) <= 0.15 * r["peak_rss_gib"], r


def test_activations_grow_with_tiles_and_depth_and_checkpointing_cuts_them():
    for name in memory.measured()["activation"]:
        assert memory.activation_gib(name, 6) > memory.activation_gib(name, 0)
        assert memory.activation_gib(name, 6, 12) > memory.activation_gib(name, 6, 2)
    assert memory.activation_gib("lora-ckpt", 6) < memory.activation_gib("lora", 6)
    ratio = memory.measured()["bf16_over_fp32"]  # measured: 1.06 on the CPU, whose bfloat16 uses float32 temporaries
    assert 0.3 < ratio < 1.5
    assert memory.activation_gib("lora", 6, dtype_bytes=memory.BF16_BYTES) == pytest.approx(ratio * memory.activation_gib("lora", 6))


def test_the_gpu_estimate_uses_the_measured_activations_and_the_backends_weights():
    hf4 = memory.estimate("deepseek-ocr-2", "hf", True, 2, 80.0)
    unsloth4 = memory.estimate("deepseek-ocr-2", "unsloth", True, 2, 80.0)
    bf16 = memory.estimate("deepseek-ocr-2", "hf", False, 2, 80.0)
    no_ckpt = memory.estimate("deepseek-ocr-2", "hf", False, 2, 80.0, gradient_checkpointing=False)
    assert unsloth4["weights_gib"] < hf4["weights_gib"] < bf16["weights_gib"]
    assert no_ckpt["activations_gib"] > bf16["activations_gib"]
    expected = 2 * memory.activation_gib("nf4-lora-ckpt", memory.PLANNING_TILES, 12, memory.BF16_BYTES)
    assert hf4["activations_gib"] == pytest.approx(expected, abs=0.01)
    assert "measured" in hf4["activations_basis"] and hf4["fits"] is True
    small = memory.estimate("deepseek-ocr-2", "hf", False, 64, 16.0)
    assert small["fits"] is False and "lower train.per_device_batch_size" in small["note"]
