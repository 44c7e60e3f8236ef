"""What differs per checkpoint family. Every family-specific number lives here."""

from __future__ import annotations

from dataclasses import dataclass, field

from deepsynth_ocr.errors import UserError

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
    """Image geometry and sizes of a tiny DeepSeek-OCR-2.

    The vision tower appends 144 learned queries when a view has at most 144 patches after the
    SAM neck (which downsamples by 4), else 256. The processor counts
    ``ceil(image_size / processor_patch_size / 4) ** 2`` placeholders per view, so
    ``processor_patch_size = image_size / 48`` gives the 144 the tower emits.
    """

    image_size: int
    sam_patch_size: int
    # SAM attention: windowed everywhere but the listed layers. Global attention over a large
    # patch grid (48 x 48 at 192 px / patch 4) costs seconds per CPU step, so big grids stay windowed.
    sam_window_size: int = 4
    sam_global_layers: tuple[int, ...] = (1,)
    text_hidden_size: int = 64  # >= 64 so bitsandbytes can quantise every language-model Linear on CPU
    text_layers: int = 2  # the first is dense, the rest MoE, like the real model's stack

    @property
    def tile_size(self) -> int:
        # Tiles are cut only when an image's longer side exceeds tile_size; equal sizes plus
        # crop_to_patches=False keep the tiny model on the single global view.
        return self.image_size

    @property
    def vision_features(self) -> int:
        """Image features per view after the SAM neck, which downsamples the patch grid by 4."""
        return (self.image_size // self.sam_patch_size // 4) ** 2

    @property
    def processor_patch_size(self) -> int:
        if self.image_size % 48:
            raise ValueError(f"tiny image_size must be a multiple of 48, got {self.image_size}")
        return self.image_size // 48


# The random tiny model used by tests: 48 px views, ~0.4M parameters, fast on CPU.
TINY_RANDOM = TinyGeometry(image_size=48, sam_patch_size=4)
# The pretrained tiny base (data/tiny-base, `make tiny-base`): the same 48 px view with a wider
# language model. At 192 px with windowed SAM attention, four pretraining runs of 1500-2000 CPU
# steps on lines of 1-4 words never got past the character prior; at 48 px it reads within the hour.
TINY_BASE = TinyGeometry(image_size=48, sam_patch_size=4, text_hidden_size=128)


# DeepSeek-OCR (v1, remote code): the language model is a DeepSeek-V2-style MoE whose routed
# experts are separate Linear modules (unlike the fused native v2 experts), so they match too, as
# the Unsloth notebook's name list does. The anchor on ``model.layers`` keeps SAM/CLIP out.
V1_LM_LORA_PATTERN = (
    r"(.*\.)?model\.layers\.\d+\."
    r"(self_attn\.(q_proj|k_proj|v_proj|o_proj)"
    r"|mlp\.((shared_experts|experts\.\d+)\.)?(gate_proj|up_proj|down_proj))"
)


@dataclass(frozen=True)
class V1Geometry:
    """DeepSeek-OCR (v1) "Gundam" geometry, as published in its remote code and Unsloth's notebook.

    A global view padded to ``base_size`` and, when either side exceeds ``crop_threshold``, a grid
    of ``image_size`` crops (``min_crops``..``max_crops`` tiles, aspect ratio chosen by
    ``dynamic_preprocess``). Each view yields ``ceil(size / patch_size / downsample_ratio)``
    queries per side, plus one newline token after every row and one view separator.
    """

    base_size: int = 1024
    image_size: int = 640
    crop_threshold: int = 640
    patch_size: int = 16
    downsample_ratio: int = 4
    min_crops: int = 2
    max_crops: int = 9
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    # The remote code hard-codes BOS id 0 for the prompt; a tokenizer's own BOS wins when it has one.
    fallback_bos_id: int = 0


def candidate_grids(min_tiles: int, max_tiles: int) -> list[tuple[int, int]]:
    """Every (columns, rows) tile grid with min_tiles <= columns * rows <= max_tiles, fewest tiles first."""
    grids = {(c, r) for c in range(1, max_tiles + 1) for r in range(1, max_tiles + 1) if min_tiles <= c * r <= max_tiles}
    return sorted(grids, key=lambda g: g[0] * g[1])


def closest_grid(width: int, height: int, tile: int, min_tiles: int, max_tiles: int) -> tuple[int, int]:
    """The (columns, rows) grid DeepSeek-OCR's and DeepSeek-OCR-2's ``dynamic_preprocess`` picks for a page that
    is cut into tiles: the closest aspect ratio wins; on a tie the larger grid wins when the page has more than
    half the grid's pixel area (so big pages get more tiles)."""
    aspect = width / height
    best, best_diff = (1, 1), float("inf")
    for grid in candidate_grids(min_tiles, max_tiles):
        diff = abs(aspect - grid[0] / grid[1])
        if diff < best_diff:
            best, best_diff = grid, diff
        elif diff == best_diff and width * height > 0.5 * tile ** 2 * grid[0] * grid[1]:
            best = grid
    return best


@dataclass(frozen=True)
class PublishedGeometry:
    """DeepSeek-OCR-2's released image geometry (its processor's defaults and the DeepSeek-OCR 2 paper): a global
    view padded to 1024 px and, when the longer side exceeds 768 px, 2-6 tiles of 768 px in the grid whose aspect
    ratio is closest to the page's (ties go to the larger grid when the page covers more than half of it). Each
    ``<image>`` stands for 256 global + 144 per tile + 1 separator placeholders.

    The kit's processor is the checkpoint's own; this is the rule it is checked against (tests, the memory
    estimate, docs/benchmarks.md's tokens per page shape), written from the published description."""

    global_size: int = 1024
    tile_size: int = 768
    min_tiles: int = 2
    max_tiles: int = 6
    global_tokens: int = 256
    tile_tokens: int = 144
    separator_tokens: int = 1

    def tiles(self, width: int, height: int) -> int:
        """Tiles of a ``width`` x ``height`` page."""
        if max(width, height) <= self.tile_size:
            return 0
        cols, rows = closest_grid(width, height, self.tile_size, self.min_tiles, self.max_tiles)
        return cols * rows

    def image_tokens(self, tiles: int) -> int:
        """Placeholders one ``<image>`` expands to for a page of ``tiles`` tiles."""
        return self.global_tokens + self.tile_tokens * tiles + self.separator_tokens


DEEPSEEK_OCR_2_GEOMETRY = PublishedGeometry()


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
    # transformers auto class the checkpoint loads with (remote-code families use AutoModel).
    auto_model: str = "AutoModelForImageTextToText"
    # Module-name prefixes bitsandbytes leaves unquantised with load_in_4bit (vision side, head).
    quant_skip_modules: tuple[str, ...] = ()
    # Pinned hub revisions of remote-code checkpoints: their Python code runs on load.
    pinned_revisions: dict = field(default_factory=dict)
    # Geometry of remote-code DeepSeek-OCR (v1); None for native DeepSeek-OCR-2 families.
    v1_geometry: V1Geometry | None = None
    # DeepSeek-OCR-2's released image geometry (the deepseek-ocr-2 family only).
    published_geometry: PublishedGeometry | None = None
    # Unsloth's compiler pass for remote-code models, as the Unsloth DeepSeek-OCR notebook uses.
    unsloth_force_compile: bool = False
    # transformers major version the family's model code needs, and how to get such an environment.
    transformers_major: int = 5
    environment: str = "the main environment (`make setup`: .venv, requirements-cpu.txt / requirements-training.txt)"


FAMILIES: dict[str, Family] = {
    "tiny": Family(
        name="tiny",
        default_prompt="<image>\nFree OCR.",
        lora_target_pattern=NATIVE_LM_LORA_PATTERN,
        vision_prefixes=("model.vision_tower.", "model.multi_modal_projector.", "model.view_separator"),
        image_kwargs={"crop_to_patches": False},
        tiny_geometry=TINY_RANDOM,
        quant_skip_modules=("model.vision_tower", "model.multi_modal_projector", "lm_head"),
    ),
    "deepseek-ocr-2": Family(
        name="deepseek-ocr-2",
        default_prompt="<image>\nFree OCR.",
        lora_target_pattern=NATIVE_LM_LORA_PATTERN,
        vision_prefixes=("model.vision_tower.", "model.multi_modal_projector.", "model.view_separator"),
        # Published geometry: 1024 px global view, 768 px tiles (2-6) when the longer side > 768.
        image_kwargs={"crop_to_patches": True, "min_patches": DEEPSEEK_OCR_2_GEOMETRY.min_tiles,
                      "max_patches": DEEPSEEK_OCR_2_GEOMETRY.max_tiles},
        quant_skip_modules=("model.vision_tower", "model.multi_modal_projector", "lm_head"),
        published_geometry=DEEPSEEK_OCR_2_GEOMETRY,
    ),
    # DeepSeek-OCR v1: remote code (DeepseekOCRForCausalLM), loaded with AutoModel at a pinned revision.
    "deepseek-ocr": Family(
        name="deepseek-ocr",
        default_prompt="<image>\nFree OCR. ",
        lora_target_pattern=V1_LM_LORA_PATTERN,
        vision_prefixes=("model.sam_model.", "model.vision_model.", "model.projector.",
                         "model.image_newline", "model.view_seperator"),
        trust_remote_code=True,
        auto_model="AutoModel",
        quant_skip_modules=("model.sam_model", "model.vision_model", "model.projector", "lm_head"),
        # A commit of deepseek-ai/DeepSeek-OCR (the "MPS support" commit). Other repos, such as
        # unsloth/DeepSeek-OCR, need an explicit model.revision.
        pinned_revisions={"deepseek-ai/DeepSeek-OCR": "1e3401a3d4603e9e71ea0ec850bfead602191ec4"},
        v1_geometry=V1Geometry(),
        unsloth_force_compile=True,
        # Its modeling_deepseekv2.py imports LlamaFlashAttention2 and is_torch_fx_available (gone in 5.x).
        transformers_major=4,
        environment="the v1 environment (`make setup-v1`: .venv-v1, requirements-v1.txt)",
    ),
}


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise UserError(
            f"model.family: unknown family {name!r}; choose one of {sorted(FAMILIES)}"
        ) from None
