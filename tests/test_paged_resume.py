"""A resumed paged 8-bit AdamW: states saved on a GPU come back from the file flagged as paged but in ordinary
host memory (GPU_AUDIT_3 C2); the kit makes them usable before the next step."""

import copy

import bitsandbytes as bnb
import torch

from deepsynth_ocr.training import restore_paged_states

from .test_devices import _tensors  # every tensor in nested dicts (bitsandbytes 0.50 nests its 8-bit states)


def _optimizer(weight):
    return bnb.optim.PagedAdamW8bit([weight], lr=1e-3)


def test_a_paged_8bit_adamw_state_survives_save_and_load_and_takes_the_same_step(tmp_path):
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(512, 512))  # 262,144 elements: paged and 8-bit on a GPU
    opt = _optimizer(weight)
    for _ in range(3):
        weight.grad = torch.randn_like(weight)
        opt.step()
    state = copy.deepcopy(opt.state_dict())
    flagged = [t for t in _tensors(state["state"]) if t.dtype == torch.uint8]
    assert len(flagged) == 2
    for tensor in flagged:  # as get_paged flags them on a GPU (this CPU build never pages)
        tensor.is_paged = True
    torch.save(state, tmp_path / "optimizer.pt")

    twin = torch.nn.Parameter(weight.detach().clone())
    resumed = _optimizer(twin)
    resumed.load_state_dict(torch.load(tmp_path / "optimizer.pt", weights_only=True))
    states = resumed.state[twin]
    assert getattr(states["state1"], "is_paged", False) and getattr(states["state2"], "is_paged", False)

    assert restore_paged_states(resumed) == 2
    assert not any(getattr(states[k], "is_paged", False) for k in ("state1", "state2"))
    assert states["state1"].dtype == torch.uint8 and states["state1"].device == twin.device
    assert restore_paged_states(resumed) == 0  # nothing left to fix

    grad = torch.randn_like(weight)
    weight.grad, twin.grad = grad, grad.clone()
    opt.step()
    resumed.step()
    assert torch.equal(weight, twin)  # the resumed optimizer steps exactly as the uninterrupted one
