"""Model configuration: one dataclass, presets from the MaskSpec paper (docs/MASKSPEC.md, "Model sizes")."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

# encoder dim / depth / heads, decoder dim / depth / heads. tiny/small widths follow DeiT-Ti/S (assumed by the paper's
# comparisons); the decoder is MaskSpec's 512/8/16 for all presets.
_PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(embed_dim=192, depth=12, num_heads=3, decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16),
    "small": dict(embed_dim=384, depth=12, num_heads=6, decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16),
    "base": dict(embed_dim=768, depth=12, num_heads=12, decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16),
}


POOLS = ("mean", "freq", "freq_stats")  # Classifier poolings (ModelConfig.pool)


@dataclass
class ModelConfig:
    """Sizes of a MaskSpec model.

    The input is a log-mel spectrogram ``(B, n_mels, frames)``; it is cut into ``patch_size x patch_size`` patches,
    giving a grid of ``grid_f = n_mels // patch`` by ``grid_t = frames // patch`` and ``num_patches = grid_f * grid_t``
    tokens (496 = 8 x 62 for 128 x 992).
    """

    n_mels: int = 128
    frames: int = 992  # pre-training crop; fine-tuning uses 1000 (62 whole patches either way)
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    decoder_embed_dim: int = 512
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-6
    mask_ratio: float = 0.75
    norm_pix_loss: bool = True
    drop_path_rate: float = 0.0  # fine-tuning uses 0.1
    preset: str = "custom"
    # Classifier pooling: "mean" over all patch tokens (timm's global_pool="avg", the paper's), or "freq": the
    # mean over time within each frequency row, fc_norm per row, rows concatenated (head input grid_f * D). A
    # mean over the whole grid averages away WHERE in frequency a sound is; "freq" keeps it (optional, measured in
    # experiments/SSL_EVAL.md; not loadable into timm's VisionTransformer). "freq_stats": "freq" plus each row's
    # standard deviation over time (its own LayerNorm ``std_norm``; head input 2 * grid_f * D): statistics pooling,
    # which keeps how a row's content changes over the clip (onsets, decays), not only its average.
    pool: str = "mean"

    def __post_init__(self) -> None:
        p = self.patch_size
        if p <= 0:
            raise ValueError(f"patch_size must be positive, got {p}")
        if self.n_mels % p != 0:
            raise ValueError(f"n_mels={self.n_mels} must be a multiple of patch_size={p}")
        if self.frames < p:
            raise ValueError(f"frames={self.frames} is shorter than one patch ({p})")
        for name in ("embed_dim", "decoder_embed_dim"):
            if getattr(self, name) % 4 != 0:
                raise ValueError(f"{name}={getattr(self, name)} must be divisible by 4 (2-D sin-cos embedding)")
        if self.embed_dim % self.num_heads != 0:
            raise ValueError(f"embed_dim={self.embed_dim} not divisible by num_heads={self.num_heads}")
        if self.decoder_embed_dim % self.decoder_num_heads != 0:
            raise ValueError(
                f"decoder_embed_dim={self.decoder_embed_dim} not divisible by decoder_num_heads={self.decoder_num_heads}"
            )
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")
        if self.pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {self.pool!r}")

    # derived sizes -----------------------------------------------------------------------------------------------
    @property
    def pool_rows(self) -> bool:
        """True for the per-frequency-row poolings (structured time-column patchout)."""
        return self.pool in ("freq", "freq_stats")

    @property
    def pooled_dim(self) -> int:
        """Width of the Classifier's clip embedding (the head's input)."""
        rows = self.grid_f if self.pool_rows else 1
        return self.embed_dim * rows * (2 if self.pool == "freq_stats" else 1)

    @property
    def grid_f(self) -> int:
        return self.n_mels // self.patch_size

    @property
    def grid_t(self) -> int:
        return self.frames // self.patch_size

    @property
    def grid_size(self) -> tuple[int, int]:
        return (self.grid_f, self.grid_t)

    @property
    def num_patches(self) -> int:
        return self.grid_f * self.grid_t

    @property
    def patch_dim(self) -> int:
        return self.patch_size * self.patch_size

    # construction ------------------------------------------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ModelConfig:
        """``ModelConfig.from_preset("base")`` -> MaskSpec-base (768/12/12 encoder, 512/8/16 decoder)."""
        if name not in _PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(_PRESETS)}")
        fields = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(overrides) - fields)
        if bad:
            raise TypeError(f"unknown ModelConfig field(s) {bad}")
        return cls(**{**_PRESETS[name], "preset": name, **overrides})

    @staticmethod
    def presets() -> list[str]:
        return list(_PRESETS)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in fields})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)
