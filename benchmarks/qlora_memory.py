"""GPU memory of DeepSeek-OCR-2 training recipes: weights from the released geometry under each backend's 4-bit
load, activations as measured at real size (``benchmarks/real_size.py``).

The arithmetic lives in ``deepsynth_ocr/memory.py`` (the jobs UI shows it before a launch); this script
prints its figures.

    python benchmarks/qlora_memory.py
"""

from __future__ import annotations

from deepsynth_ocr.memory import BF16_BYTES, GIB, activation_gib, estimate, measured, published_split, weight_bytes


def main() -> None:
    split = published_split("deepseek-ocr-2")
    lm = {k: v for k, v in split.items() if k != "vision"}
    total = sum(lm.values())
    print(f"language model: {total / 1e9:.2f} B parameters")
    for k, v in lm.items():
        print(f"  {k}: {v / 1e9:.3f} B ({100 * v / total:.0f}%)")
    without_vision = {**split, "vision": 0}
    print("| load | language-model weights |\n|---|---|")
    print(f"| bf16 | {total * BF16_BYTES / GIB:.2f} GiB |")
    print(f"| hf backend, 4-bit (nn.Linear only) | {weight_bytes(without_vision, 'hf', True) / GIB:.2f} GiB |")
    print(f"| unsloth backend, 4-bit (experts too) | {weight_bytes(without_vision, 'unsloth', True) / GIB:.2f} GiB |")
    print(f"vision side (16-bit in every load): {split['vision'] / 1e9:.3f} B parameters")
    print(f"\nactivations per page at 12 layers, measured on a CPU in float32, scaled to bfloat16 by the measured "
          f"ratio {measured()['bf16_over_fp32']}:")
    print("| setting | 0 tiles | 2 tiles | 6 tiles |\n|---|---|---|---|")
    for name in measured()["activation"]:
        print(f"| {name} | " + " | ".join(f"{activation_gib(name, t, 12, BF16_BYTES):.2f} GiB" for t in (0, 2, 6)) + " |")
    print("\nwhole recipe, batch 2, 6-tile pages (the launch page's estimate):")
    print("| backend | 4-bit | checkpointing | total |\n|---|---|---|---|")
    for backend, four, ckpt in (("unsloth", True, True), ("hf", True, True), ("hf", False, True), ("hf", False, False)):
        e = estimate("deepseek-ocr-2", backend, four, 2, None, ckpt)
        print(f"| {backend} | {four} | {ckpt} | {e['total_gib']} GiB |")


if __name__ == "__main__":
    import record  # benchmarks/record.py, beside this script

    record.main("qlora_memory", main)
