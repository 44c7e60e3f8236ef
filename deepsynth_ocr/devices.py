"""Where the model runs and in which precision.

Owns two rules. ``to_model`` is the one way a batch reaches a forward: every path that runs the
model (training steps, the end-of-training adapter check, evaluation, periodic evaluation, infer,
export verification, the tiny base's scoring) puts its tensors on the model's device and its
floating tensors in the model's dtype through it. transformers installs no device hooks for a model
on one GPU, so a CPU batch reaching a CUDA model is a crash, and float32 pixels reaching a
bfloat16 vision tower fail in its first convolution.

``resolve_dtype`` turns ``model.dtype`` into a torch dtype with the reason: ``auto`` is bfloat16
where the GPU computes it natively, float16 on older GPUs (T4, the Colab free tier), float32 on a
CPU. Emulated bfloat16 counts as unsupported: it runs, but slower than float16.
"""

from __future__ import annotations

import os

import torch

from deepsynth_ocr.errors import UserError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def compute_device() -> torch.device:
    """The device a model is loaded onto: this process's GPU (``LOCAL_RANK`` under a launcher), else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def device_name(device: torch.device) -> str:
    """What a person calls the device: the GPU's name, or ``cpu``."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def bf16_supported() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)


def resolve_dtype(requested: str) -> tuple[torch.dtype, str]:
    """``model.dtype`` as a torch dtype, with the reason it was chosen."""
    cuda = torch.cuda.is_available()
    gpu = torch.cuda.get_device_name() if cuda else ""
    if requested == "auto":
        if not cuda:
            return torch.float32, "auto: no CUDA device, float32 on the CPU"
        if bf16_supported():
            return torch.bfloat16, f"auto: {gpu} computes bfloat16 natively"
        return torch.float16, f"auto: {gpu} has no native bfloat16, using float16"
    if requested not in DTYPES:
        raise UserError(f"model.dtype: unsupported dtype {requested!r}; use auto, float32, bfloat16 or float16")
    if requested == "bfloat16" and cuda and not bf16_supported():
        raise UserError(f"model.dtype: {gpu} has no native bfloat16; set model.dtype: auto (float16 there) or float16")
    return DTYPES[requested], "requested in config"


def torch_dtype(requested: str) -> torch.dtype:
    return resolve_dtype(requested)[0]


def host_rss_gib() -> float:
    """This process's resident memory now, in GiB (Linux ``VmRSS``; 0.0 where /proc is absent)."""
    return _proc_status_kib("VmRSS") / 2**20


def host_peak_rss_gib(reset: bool = False) -> float:
    """This process's peak resident memory since the last reset, in GiB (Linux ``VmHWM``, else ``ru_maxrss``).
    ``reset`` then starts a new window (5 written to /proc/self/clear_refs resets the high-water mark), as
    ``torch.cuda.reset_peak_memory_stats`` does on a GPU, so a step's peak is its own, not loading's."""
    import resource

    kib = _proc_status_kib("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if reset:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass  # not Linux, or not permitted: the peak stays the process's lifetime peak
    return kib / 2**20


def trim_host_heap() -> float:
    """Hand freed heap memory back to the operating system (glibc's ``malloc_trim``); returns the GiB it released.

    Loading a checkpoint frees gigabytes of temporaries (experts fused from per-expert tensors, a bfloat16 file
    cast to the model's dtype) that glibc keeps in its heap, and a training step's tensors are larger than
    glibc's mmap threshold, so they are never placed there: measured on the released size in float32 on a CPU,
    5.3 of 18.3 GiB resident after loading was such memory, and the first 2-tile step was killed for memory.
    A no-op (0.0) where the C library has no ``malloc_trim``."""
    import ctypes
    import ctypes.util

    before = host_rss_gib()
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return 0.0
    return max(0.0, before - host_rss_gib())


def _proc_status_kib(field: str) -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def model_device(model) -> torch.device:
    """Where the model's inputs must live: the accelerator its parameters are on (the first non-CPU one), the
    CPU when all are there. Not the input embeddings' device: under memory pressure Unsloth offloads the
    embeddings to host RAM (and pins ``model.device`` to the decoder) while the vision tower stays on the GPU,
    so pixels placed by the embeddings would land on the CPU."""
    first = None
    for param in model.parameters():
        first = first or param.device
        if param.device.type != "cpu":
            return param.device
    return first or torch.device("cpu")


def model_dtype(model) -> torch.dtype:
    """The dtype floating inputs (pixels) must have: the model's own, its first floating parameter's otherwise."""
    dtype = getattr(model, "dtype", None)
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        return dtype
    return next(p.dtype for p in model.parameters() if p.dtype.is_floating_point)


def to_model(batch, model):
    """``batch`` (tensors, possibly nested in dicts, lists and tuples) on ``model``'s device; floating tensors in its dtype."""
    return _place(batch, model_device(model), model_dtype(model))


def _place(value, device: torch.device, dtype: torch.dtype):
    # DeepSeek-OCR v1 batches carry a list of (crops, global view) tensor pairs.
    if isinstance(value, dict):
        return {k: _place(v, device, dtype) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_place(v, device, dtype) for v in value)
    if isinstance(value, torch.Tensor):
        return value.to(device=device, dtype=dtype) if value.is_floating_point() else value.to(device)
    return value
