"""DeepSynth OCR: fine-tune DeepSeek-OCR(-2) with LoRA on your documents and measure CER/WER before and after.

Unsloth patches transformers, peft and trl when it is imported, and code imported before it runs
unpatched (it says so in a warning). So where Unsloth is installed and can run (a CUDA device, or
``UNSLOTH_ALLOW_CPU=1``), importing this package imports Unsloth first, before any of those. A broken
Unsloth install is remembered here and reported when the backend is chosen, never raised at import.
``DEEPSYNTH_SKIP_UNSLOTH=1`` keeps Unsloth out of the process: the hf backend then runs on
transformers as released (the GPU proof's hf case does this).
"""

import importlib.util
import os

UNSLOTH_IMPORT_ERROR: str | None = None


def _import_unsloth_first() -> None:
    global UNSLOTH_IMPORT_ERROR
    if os.environ.get("DEEPSYNTH_SKIP_UNSLOTH") == "1" or importlib.util.find_spec("unsloth") is None:
        return
    import torch  # Unsloth imports torch itself; only transformers, peft and trl must come after it

    if not (torch.cuda.is_available() or os.environ.get("UNSLOTH_ALLOW_CPU") == "1"):
        return
    try:
        import unsloth  # noqa: F401
    except Exception as e:  # the hf backend can still run; choose_backend reports this
        UNSLOTH_IMPORT_ERROR = f"{type(e).__name__}: {e}"


_import_unsloth_first()
