"""What differs per checkpoint family. Every family-specific number lives here."""

from __future__ import annotations

from dataclasses import dataclass, field

# LoRA goes on the language model's attention and MLP projections only. Matching on the module
# path keeps it off the vision encoder, which has projections with the same names. Routed MoE
# experts are fused 3-D parameters, not Linear layers, so only dense and shared-expert MLPs match.
NATIVE_LM_LORA_PATTERN = (
    r".*language_model\.layers\.\d+\."
    r"(self_attn\.(q_proj|k_proj|v_proj|o_proj)"
    r"|mlp\.(shared_experts\.)?(gate_proj|up_proj|down_proj))"
)


@dataclass(frozen=True)
class TinyGeometry:
    """Image geometry of the tiny model.

    The vision tower appends 144 learned queries when a view has at most 144 patches after the
    SAM neck (which downsamples by 4), else 256. The processor counts
    ``ceil(image_size / processor_patch_size / 4) ** 2`` placeholders per view, so
    ``processor_patch_size = image_size / 48`` gives the 144 the tower emits.
    """

    image_size: int
    sam_patch_size: int

    @property
    def tile_size(self) -> int:
        # Tiles are cut only when an image's longer side exceeds tile_size; equal sizes plus
        # crop_to_patches=False keep the tiny model on the single global view.
        return self.image_size

    @property
    def processor_patch_size(self) -> int:
        if self.image_size % 48:
            raise ValueError(f"tiny image_size must be a multiple of 48, got {self.image_size}")
        return self.image_size // 48


@dataclass(frozen=True)
class Family:
    """Everything the kit needs to know about one family of checkpoints."""

    name: str
    default_prompt: str
    lora_target_pattern: str
    # Module-path prefixes (below the top model) that belong to the vision side and stay frozen.
    vision_prefixes: tuple[str, ...]
    # Keyword arguments for the processor's image call.
    image_kwargs: dict = field(default_factory=dict)
    trust_remote_code: bool = False
    tiny_geometry: TinyGeometry | None = None


FAMILIES: dict[str, Family] = {
    "tiny": Family(
        name="tiny",
        default_prompt="<image>\nFree OCR.",
        lora_target_pattern=NATIVE_LM_LORA_PATTERN,
        vision_prefixes=("model.vision_tower.", "model.multi_modal_projector.", "model.view_separator"),
        image_kwargs={"crop_to_patches": False},
        tiny_geometry=TinyGeometry(image_size=48, sam_patch_size=4),
    ),
    "deepseek-ocr-2": Family(
        name="deepseek-ocr-2",
        default_prompt="<image>\nFree OCR.",
        lora_target_pattern=NATIVE_LM_LORA_PATTERN,
        vision_prefixes=("model.vision_tower.", "model.multi_modal_projector.", "model.view_separator"),
        # Published geometry: 1024 px global view, 768 px tiles (2-6) when the longer side > 768.
        image_kwargs={"crop_to_patches": True, "min_patches": 2, "max_patches": 6},
    ),
}


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(
            f"model.family: unknown family {name!r}; choose one of {sorted(FAMILIES)}"
        ) from None
