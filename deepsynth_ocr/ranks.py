"""Which process of a data-parallel launch this is: the one reader of the launcher's environment.

A leaf with no heavy imports, so the run-directory owner can ask it without importing torch.
"""

from __future__ import annotations

import os


def world() -> tuple[int, int]:
    """(rank, world size) of this process under torchrun / accelerate launch; (0, 1) otherwise."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
