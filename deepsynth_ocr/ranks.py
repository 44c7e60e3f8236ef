"""Which process of a data-parallel launch this is: the one reader of the launcher's environment.

A leaf with no heavy imports, so the run-directory owner can ask it without importing torch.
"""

from __future__ import annotations

import os


def world() -> tuple[int, int]:
    """(rank, world size) of this process under torchrun / accelerate launch; (0, 1) otherwise."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def refuse_unsupported_sharding() -> None:
    """Stop at once, before any weight loads, under a sharding the kit's end of run cannot follow. DeepSpeed ZeRO-3
    partitions every parameter: training runs (measured on 2 CPU processes), but the adapter is saved and verified
    with a forward pass on rank 0 alone, which waits for the other ranks' shards after they have left."""
    from deepsynth_ocr.errors import UserError

    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        import torch

        if not torch.cuda.is_available():  # accelerate/state.py: FSDP is chosen for MULTI_GPU-like types, not MULTI_CPU
            raise UserError("FSDP without a GPU: accelerate 1.15 engages FSDP only on accelerator devices, so on CPU "
                            "processes the run would quietly train with plain DDP and shard nothing. Launch with "
                            "configs/accelerate/ddp.yaml here (the same results), FSDP on GPUs")
    if os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3":
        raise UserError("DeepSpeed ZeRO-3 is not supported: the run would train and then fail saving its adapter "
                        "(a rank-0 forward over partitioned weights). Use configs/accelerate/deepspeed-zero2.yaml or "
                        "ddp.yaml; with LoRA the sharded states are the adapter's, so ZeRO-2 keeps almost all the gain")
