"""Transformer building blocks with timm's module names (so MAE/timm checkpoints load with strict=True)."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from .ops.attention import packed_attention


class PatchEmbed(nn.Module):
    """``(B, 1, F, T)`` -> ``(B, L, D)``: Conv2d(1, D, p, stride p), i.e. patchify + Linear(p*p, D)."""

    def __init__(self, patch_size: int, embed_dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(1, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        f, t = img.shape[-2] // p * p, img.shape[-1] // p * p
        x = self.proj(img[..., :f, :t])  # (B, D, gf, gt)
        return x.flatten(2).transpose(1, 2)  # (B, L, D)


class DropPath(nn.Module):
    """Stochastic depth per sample (identity at eval or rate 0)."""

    def __init__(self, rate: float = 0.0):
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rate == 0.0 or not self.training:
            return x
        keep = 1.0 - self.rate
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        return x * x.new_empty(shape).bernoulli_(keep) / keep


class Attention(nn.Module):
    """Multi-head self-attention with one fused QKV projection (timm names ``qkv``, ``proj``)."""

    def __init__(self, dim: int, num_heads: int, attend: Callable[..., torch.Tensor] | None = None):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        # the op table's attention: (qkv (B, N, 3, H, hd), key_padding_mask) -> (B, N, H, hd)
        self.attend = attend or packed_attention("reference")
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim)  # (B, N, 3, H, hd)
        return self.proj(self.attend(qkv, key_padding_mask).reshape(b, n, d))  # (B, N, H, hd) -> (B, N, D)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)); x + mlp(norm2(x))."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        eps: float = 1e-6,
        drop_path: float = 0.0,
        attend: Callable[..., torch.Tensor] | None = None,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, attend)
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x), key_padding_mask))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


def init_weights(module: nn.Module) -> None:
    """MAE's initialization: xavier-uniform Linear weights, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
