"""Weight memory of DeepSeek-OCR-2's language model under each backend's 4-bit load, from its published geometry.

The arithmetic lives in ``deepsynth_ocr/memory.py`` (the jobs UI shows it before a launch); this script
prints its figures.

    python benchmarks/qlora_memory.py
"""

from __future__ import annotations

from deepsynth_ocr.memory import BF16_BYTES, GIB, published_split, weight_bytes


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


if __name__ == "__main__":
    import record  # benchmarks/record.py, beside this script

    record.main("qlora_memory", main)
