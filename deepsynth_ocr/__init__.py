"""DeepSynth OCR: fine-tune DeepSeek-OCR(-2) with LoRA on your documents and measure CER/WER before and after.

Unsloth patches transformers, peft and trl when it is imported, and code imported before it runs
unpatched (it says so in a warning). Importing Unsloth costs 20-40 s and imports torch, so the package
does not import it up front: importing this package installs an import hook that imports Unsloth just
before the first import of transformers, peft or trl in the process, where Unsloth is installed and
can run (a CUDA device, or ``UNSLOTH_ALLOW_CPU=1``). Light tools (``deepsynth_ocr.runs``, the ``runs``
and ``stop`` commands) therefore start without torch, and every path that loads a model still gets
Unsloth first. A broken Unsloth install is not raised here: ``models.backends.choose_backend`` tries the
import again and reports why it chose transformers + peft. ``DEEPSYNTH_SKIP_UNSLOTH=1`` keeps Unsloth
out of the process: the hf backend then runs on transformers as released (the GPU proof's hf case).

**The hf backend is transformers + peft as released.** Unsloth's import patches transformers' own 4-bit
loader (its MoE patches pack DeepSeek-OCR-2's fused experts into 4 bits) and more; an hf run under them
would measure neither what the docs describe nor what CPU tests, CI and multi-GPU launches run. So every
entry point that knows its config before transformers is imported (the CLI, the notebooks' parameters
cell) calls ``keep_unsloth_out_for(cfg.model.backend)``; a process that imported Unsloth earlier anyway
runs hf under its patches, and ``load_model`` says so in the log and the manifest.
"""

import importlib.abc
import importlib.util
import logging
import os
import sys

PATCHED_BY_UNSLOTH = ("transformers", "peft", "trl")


def _import_unsloth() -> None:
    if os.environ.get("DEEPSYNTH_SKIP_UNSLOTH") == "1" or importlib.util.find_spec("unsloth") is None:
        return
    import torch  # Unsloth imports torch itself; only transformers, peft and trl must come after it

    if not (torch.cuda.is_available() or os.environ.get("UNSLOTH_ALLOW_CPU") == "1"):
        return
    try:
        import unsloth  # noqa: F401
    except Exception as e:  # the hf backend can still run; choose_backend says why it was chosen
        logging.getLogger("deepsynth_ocr").warning("unsloth failed to import (%s: %s)", type(e).__name__, e)


def keep_unsloth_out_for(backend: str) -> None:
    """For ``model.backend: hf``, keep Unsloth out of this process (unless the environment already decided)."""
    if backend == "hf":
        os.environ.setdefault("DEEPSYNTH_SKIP_UNSLOTH", "1")


class _UnslothFirst(importlib.abc.MetaPathFinder):
    """Imports Unsloth once, just before the first of the libraries it patches; finds nothing itself."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname.partition(".")[0] in PATCHED_BY_UNSLOTH:
            sys.meta_path.remove(self)  # once, and not again for the imports Unsloth makes itself
            _import_unsloth()
        return None


if any(name in sys.modules for name in PATCHED_BY_UNSLOTH):  # too late to come first: as Unsloth itself would
    _import_unsloth()
elif not any(isinstance(f, _UnslothFirst) for f in sys.meta_path):
    sys.meta_path.insert(0, _UnslothFirst())
