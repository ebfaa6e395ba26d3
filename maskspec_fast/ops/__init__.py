"""Reference operations (plain PyTorch), one module each; fast versions live beside them and are tested
against these."""
from .attention import attention, attention_ref, choose_attention_backend
from .gather import gather_visible_ref, unshuffle_ref
from .masked_mse import masked_mse, normalize_patches
from .masking import masking_ids, num_visible, random_masking
from .patchify import as_image, patchify, unpatchify
from .pos_embed import resize_pos_embed, sincos_2d

__all__ = [
    "as_image",
    "attention",
    "attention_ref",
    "choose_attention_backend",
    "gather_visible_ref",
    "masked_mse",
    "masking_ids",
    "normalize_patches",
    "num_visible",
    "patchify",
    "random_masking",
    "resize_pos_embed",
    "sincos_2d",
    "unpatchify",
    "unshuffle_ref",
]
