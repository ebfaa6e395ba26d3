"""Reference operations (plain PyTorch), one module each, named ``<op>_ref``; the fast version ``<op>`` of each
lives in its own module beside them (``triton_gather``, ``triton_masked_mse``, ``patchify_fused``) and is tested
against these. :mod:`maskspec_fast.fused` puts one or the other into a model's op table.

``ops.attention`` is the module (``import maskspec_fast.ops.attention as m`` gives it): its function of the same name
is not re-exported here, where it would shadow the module; import it as ``from maskspec_fast.ops.attention import
attention``."""
from .attention import attention_ref, choose_attention_backend
from .gather import gather_visible_ref, unshuffle_ref
from .masked_mse import masked_mse_on_masked_ref, masked_mse_ref, normalize_patches
from .masking import masking_ids, num_visible, random_masking
from .patchify import as_image, patch_tokens_ref, patchify_ref, unpatchify
from .pos_embed import resize_pos_embed, sincos_2d

__all__ = [
    "as_image",
    "attention_ref",
    "choose_attention_backend",
    "gather_visible_ref",
    "masked_mse_on_masked_ref",
    "masked_mse_ref",
    "masking_ids",
    "normalize_patches",
    "num_visible",
    "patch_tokens_ref",
    "patchify_ref",
    "random_masking",
    "resize_pos_embed",
    "sincos_2d",
    "unpatchify",
    "unshuffle_ref",
]
