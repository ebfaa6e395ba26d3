"""MaskSpec models: ``Model`` (masked-spectrogram pre-training, MAE's MaskedAutoencoderViT) and ``Classifier``
(fine-tuning, timm's VisionTransformer with mean pooling). Both read like the paper; the fused path differs only
in which implementation of each op runs, chosen once at construction."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from . import fused as fused_ops
from .config import ModelConfig
from .layers import Block, PatchEmbed, init_weights
from .ops.masking import num_visible
from .ops.patchify import as_image
from .ops.pos_embed import fit_pos_tables, resize_pos_embed, sincos_2d
from .serialization import CheckpointError, check_state_dict, config_from_meta, load_dir, save_dir


def _resolve_fused(fused: bool | None) -> bool:
    """``fused=None`` reads ``MASKSPEC_FUSED`` (default off: the reference path is the truth)."""
    if fused is None:
        return os.environ.get("MASKSPEC_FUSED", "0").lower() in ("1", "true", "yes", "on")
    return bool(fused)


def check_spec(spec: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """Validate a spectrogram batch and return it as ``(B, 1, n_mels, T')`` with ``T'`` whole patches."""
    if not isinstance(spec, torch.Tensor):
        raise TypeError(f"spectrogram must be a torch.Tensor, got {type(spec).__name__}")
    img = as_image(spec)
    f, t = img.shape[-2:]
    if f != config.n_mels:
        raise ValueError(f"spectrogram has {f} mel bins, the model expects n_mels={config.n_mels}")
    p = config.patch_size
    if t < p:
        raise ValueError(f"spectrogram has {t} frames, shorter than one patch ({p} frames)")
    return img[..., : t // p * p]


class _Encoder(nn.Module):
    """Shared ViT encoder parts (timm names): patch_embed, cls_token, pos_embed, blocks."""

    def _build_encoder(self, config: ModelConfig, attend, learn_pos: bool) -> None:
        c = config
        self.patch_embed = PatchEmbed(c.patch_size, c.embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.embed_dim))
        # Fixed sin-cos table in pre-training (MAE keeps it as a frozen Parameter so it is in the state dict);
        # trainable in fine-tuning, as MAE's fine-tuning model does.
        self.pos_embed = nn.Parameter(sincos_2d(c.embed_dim, c.grid_size).unsqueeze(0), requires_grad=learn_pos)
        dpr = torch.linspace(0, c.drop_path_rate, c.depth).tolist()
        self.blocks = nn.ModuleList(
            [Block(c.embed_dim, c.num_heads, c.mlp_ratio, c.norm_eps, dpr[i], attend) for i in range(c.depth)]
        )

    def encoder_pos(self, grid: tuple[int, int]) -> torch.Tensor:
        """``(1, 1 + gf*gt, D)``: the table fitted to this input's grid (crop shorter, interpolate longer)."""
        return resize_pos_embed(self.pos_embed, self.config.grid_size, grid)

    # --- persistence (one implementation for Model and Classifier; each says what it is in _meta) -------------
    def _meta(self) -> dict[str, Any]:
        raise NotImplementedError

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``model.safetensors`` and ``config.json`` (``from_pretrained`` reads them back)."""
        return save_dir(directory, self.state_dict(), self._meta())

    def save_mae_checkpoint(self, path: str | os.PathLike) -> str:
        """Write ``{"model": state_dict}`` (``.pth``) that MAE-style code loads with ``strict=True``."""
        from .interop import save_mae_checkpoint

        return save_mae_checkpoint(self.state_dict(), path)

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> str:
        """Upload ``save_pretrained``'s files to the Hugging Face Hub (see :func:`maskspec_fast.hub.push_to_hub`)."""
        from .hub import push_to_hub

        return push_to_hub(self, repo_id, **kwargs)

    def _init_common(self) -> None:
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)


class Model(_Encoder):
    """MaskSpec pre-training model (drop-in for MAE's ``MaskedAutoencoderViT``).

    ``loss, pred, mask = model(spec, mask_ratio=0.75, noise=None)``
      spec: ``(B, n_mels, T)`` or ``(B, 1, n_mels, T)`` log-mel; L = (n_mels/16) * (T//16) patches.
      pred: ``(B, L, 256)`` reconstructions in patch order; mask: ``(B, L)``, 1 = removed.
      loss: MSE on removed patches against per-patch normalized targets (``norm_pix_loss``).
    """

    def __init__(self, config: ModelConfig, fused: bool | None = None):
        super().__init__()
        self.config = c = config
        self.fused = _resolve_fused(fused)
        self.ops = fused_ops.resolve(self.fused, fused_ops.PRETRAIN_OPS)
        self._build_encoder(c, self.ops.attention, learn_pos=False)
        self.norm = nn.LayerNorm(c.embed_dim, eps=c.norm_eps)
        self.decoder_embed = nn.Linear(c.embed_dim, c.decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(
            sincos_2d(c.decoder_embed_dim, c.grid_size).unsqueeze(0), requires_grad=False
        )
        self.decoder_blocks = nn.ModuleList(
            [
                Block(c.decoder_embed_dim, c.decoder_num_heads, c.mlp_ratio, c.norm_eps, 0.0, self.ops.attention)
                for _ in range(c.decoder_depth)
            ]
        )
        self.decoder_norm = nn.LayerNorm(c.decoder_embed_dim, eps=c.norm_eps)
        self.decoder_pred = nn.Linear(c.decoder_embed_dim, c.patch_dim)
        self.apply(init_weights)
        self._init_common()
        nn.init.normal_(self.mask_token, std=0.02)

    # --- the paper's steps ----------------------------------------------------------------------------------------
    def grid_of(self, img: torch.Tensor) -> tuple[int, int]:
        p = self.config.patch_size
        return (img.shape[-2] // p, img.shape[-1] // p)

    def forward_encoder(
        self,
        img: torch.Tensor,
        mask_ratio: float,
        noise: torch.Tensor | None = None,
        masks_per_clip: int = 1,
        patches: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """img ``(B, 1, F, T)`` -> latent ``(B', 1+K, D)``, mask ``(B', L)`` (1 = removed), ids_restore ``(B', L)``,
        ids_masked ``(B', L-K)`` (the removed patch ids).

        With ``masks_per_clip = M > 1`` the patch embedding runs once and each clip gets M independent masks:
        ``B' = B * M``, rows ``b*M .. b*M + M-1`` belong to clip b (EAT's multi-mask trick).
        ``patches`` ``(B, L, p*p)``: the input already patchified (read once for tokens and targets).
        """
        grid = self.grid_of(img)
        pos = self.encoder_pos(grid)  # (1, 1+L, D)
        b, n = img.shape[0] * masks_per_clip, grid[0] * grid[1]
        if noise is None:
            noise = torch.rand(b, n, device=img.device)
        elif noise.shape != (b, n):
            raise ValueError(f"noise must have shape (B * masks_per_clip, L) = {(b, n)}, got {tuple(noise.shape)}")
        mask, ids_restore, ids_keep, ids_masked = self.ops.masking(noise, num_visible(n, mask_ratio))
        x = _repeat_clips(self.ops.patch_tokens(img, patches, self.patch_embed), masks_per_clip)  # (B', L, D)
        x = self.ops.gather_visible(x, ids_keep, pos[0, 1:])  # (B', K, D): visible tokens + their positions
        cls = (self.cls_token + pos[:, :1]).expand(b, -1, -1)  # (B', 1, D)
        x = torch.cat([cls, x], dim=1)  # (B', 1+K, D)
        for blk in self.blocks:
            x = blk(x)
        mask = mask.to(img.dtype if img.is_floating_point() else torch.float32)
        return self.norm(x), mask, ids_restore, ids_masked

    def forward_decoder(
        self,
        latent: torch.Tensor,
        ids_restore: torch.Tensor,
        grid: tuple[int, int],
        ids_masked: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """latent ``(B, 1+K, D)`` -> pred ``(B, L, p*p)`` for every patch, in patch order; with ``ids_masked``
        ``(B, M)`` the prediction head runs on those patches only and returns ``(B, M, p*p)``."""
        x = self.decoder_embed(latent)  # (B, 1+K, Dd)
        pos = resize_pos_embed(self.decoder_pos_embed, self.config.grid_size, grid)  # (1, 1+L, Dd)
        mask_token = self.mask_token.reshape(-1)
        body = self.ops.unshuffle(x[:, 1:], mask_token, ids_restore, pos[0, 1:])  # (B, L, Dd)
        x = torch.cat([x[:, :1] + pos[:, :1], body], dim=1)  # (B, 1+L, Dd)
        for blk in self.decoder_blocks:
            x = blk(x)
        x = self.decoder_norm(x)
        if ids_masked is not None:
            body = x[:, 1:]  # (B, L, Dd)
            picked = torch.gather(body, 1, ids_masked.unsqueeze(-1).expand(-1, -1, body.shape[-1]))  # (B, M, Dd)
            return self.decoder_pred(picked)  # (B, M, p*p)
        return self.decoder_pred(x)[:, 1:]  # (B, L, p*p), CLS dropped

    def forward_loss(
        self,
        img: torch.Tensor,
        pred: torch.Tensor,
        mask: torch.Tensor,
        masks_per_clip: int = 1,
        ids_masked: torch.Tensor | None = None,
        patches: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Masked MSE against the patchified (per-patch normalized) spectrogram.

        pred ``(B', L, p*p)`` scored where mask = 1; or, with ``ids_masked`` ``(B', M)``, pred ``(B', M, p*p)``
        for exactly those patches (the same loss). ``patches``: ``img`` already patchified.
        """
        if patches is None:
            patches = self.ops.patchify(img, self.config.patch_size)
        target = _repeat_clips(patches, masks_per_clip)  # (B', L, p*p)
        norm = self.config.norm_pix_loss
        if ids_masked is not None:
            return self.ops.masked_mse_on_masked(pred, target, ids_masked, norm)
        return self.ops.masked_mse(pred, target, mask, norm)

    def forward(
        self,
        spec: torch.Tensor,
        mask_ratio: float | None = None,
        noise: torch.Tensor | None = None,
        masks_per_clip: int = 1,
        return_pred: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """``loss, pred (B', L, p*p), mask (B', L)`` with ``B' = B * masks_per_clip`` (see forward_encoder).

        ``mask_ratio`` defaults to ``config.mask_ratio``. ``return_pred=False`` (training loops that only need
        the loss) runs the prediction head on masked tokens only and scores them directly; ``pred`` is then None.
        The loss is the same function.
        """
        if masks_per_clip < 1:
            raise ValueError(f"masks_per_clip must be >= 1, got {masks_per_clip}")
        img = check_spec(spec, self.config)
        ratio = self.config.mask_ratio if mask_ratio is None else mask_ratio
        patches = self.ops.patchify(img, self.config.patch_size)  # (B, L, p*p): read once for tokens and targets
        latent, mask, ids_restore, ids_masked = self.forward_encoder(img, ratio, noise, masks_per_clip, patches)
        head_on = None if return_pred else ids_masked
        pred = self.forward_decoder(latent, ids_restore, self.grid_of(img), head_on)
        loss = self.forward_loss(img, pred, mask, masks_per_clip, head_on, patches)
        return loss, (pred if return_pred else None), mask

    # --- persistence ----------------------------------------------------------------------------------------------
    def _meta(self) -> dict[str, Any]:
        return {"model_type": "pretrain", "config": self.config.to_dict()}

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, fused: bool | None = None, revision: str | None = None, **overrides: Any
    ) -> Model:
        """A ``save_pretrained`` directory, or a Hugging Face Hub repo id ``"org/name"`` (``revision=``)."""
        from .hub import resolve_pretrained

        directory = resolve_pretrained(directory, revision=revision)
        state, meta = load_dir(directory)
        if meta.get("model_type") != "pretrain":
            raise ValueError(f"{directory}: holds a {meta.get('model_type')!r} model, not a pre-training Model")
        model = cls(config_from_meta(directory, meta, **overrides), fused=fused)
        state = fit_pos_tables(state, model, directory)
        check_state_dict(Path(directory) / "model.safetensors", state, model.state_dict())
        model.load_state_dict(state, strict=True)
        return model

    @classmethod
    def from_mae_checkpoint(
        cls, path: str | os.PathLike, fused: bool | None = None, producer: str = "auto", **overrides: Any
    ) -> Model:
        """Load a MAE-family pre-training ``.pth`` (official MaskSpec/AudioMAE training checkpoints included; see
        :mod:`maskspec_fast.interop` for the safe loading policy and supported producers)."""
        from .interop import pretrain_from_mae

        return pretrain_from_mae(cls, path, fused, producer, overrides)

    def describe(self) -> dict[str, str]:
        """Which implementation each op of this instance uses."""
        return self.ops.report


def _repeat_clips(x: torch.Tensor, m: int) -> torch.Tensor:
    """``(B, ...)`` -> ``(B*m, ...)`` with each clip's copies adjacent (no copy when m == 1)."""
    return x if m == 1 else x.repeat_interleave(m, dim=0)


def pool_patch_tokens(tokens: torch.Tensor, grid_f: int, pool: str, keep: torch.Tensor | None = None,
                      mean_norm: nn.Module | None = None, std_norm: nn.Module | None = None) -> torch.Tensor:
    """The Classifier's pooling of patch tokens ``(B, L, D)`` (row-major over ``(G_f, G_t)``) into a clip embedding:

    * ``"mean"``: ``N_m(mean_l x_l)`` ``(B, D)``;
    * ``"freq"``: per frequency row ``r``, ``N_m(mean_t x_{r,t})``, rows concatenated ``(B, G_f * D)``;
    * ``"freq_stats"``: ``"freq"`` followed by ``N_s(std_t x_{r,t})`` per row ``(B, 2 * G_f * D)``
      (``sqrt(var + 1e-6)``, the unbiased variance over the row's valid time columns; 0 where a row has one).

    ``keep (B, L)``: valid tokens (padding-aware means; structured patchout keeps whole columns, so rows stay
    rows). ``N_m`` / ``N_s``: the Classifier's ``fc_norm`` / ``std_norm``; default a LayerNorm without affine
    parameters (eps 1e-5), for pooling tokens of any block without a model's norms (probes).
    """
    b, n, d = tokens.shape
    plain = lambda v: torch.nn.functional.layer_norm(v, (d,))  # noqa: E731
    mean_norm, std_norm = mean_norm or plain, std_norm or plain
    w = None if keep is None else keep.unsqueeze(-1).to(tokens.dtype)  # (B, L, 1)
    if pool == "mean":
        return mean_norm(tokens.mean(1) if w is None else (tokens * w).sum(1) / w.sum(1))
    grid = tokens.reshape(b, grid_f, n // grid_f, d)  # (B, G_f, G_t, D)
    if w is None:
        rows = grid.mean(2)  # (B, G_f, D)
        var = (grid - rows.unsqueeze(2)).square().sum(2) / max(grid.shape[2] - 1, 1) \
            if pool == "freq_stats" else None  # unbiased; 0 (not NaN) for a single column
    else:
        w = w.reshape(b, grid_f, -1, 1)
        count = w.sum(2)  # (B, G_f, 1)
        rows = (grid * w).sum(2) / count
        var = (w * (grid - rows.unsqueeze(2)).square()).sum(2) / (count - 1).clamp_min(1) \
            if pool == "freq_stats" else None
    out = mean_norm(rows).flatten(1)  # (B, G_f * D)
    if pool == "freq_stats":
        std = (var + 1e-6).sqrt()  # eps: a finite gradient where a row is constant
        out = torch.cat([out, std_norm(std).flatten(1)], dim=1)  # (B, 2 * G_f * D)
    return out


_POOLING_PREFIXES = ("head.", "fc_norm.", "std_norm.")  # the Classifier's own layers: never from pre-training


class Classifier(_Encoder):
    """Fine-tuning model: encoder + mean pooling over patch tokens + ``fc_norm`` + ``head`` (timm names).

    ``logits = clf(spec)`` with spec ``(B, n_mels, T)``; ``clf.embed(spec)`` -> ``(B, D)`` clip embeddings.
    ``patchout`` tokens (unstructured, per sample) are dropped in training mode, as PaSST/MaskSpec fine-tune.
    """

    def __init__(self, config: ModelConfig, num_classes: int, fused: bool | None = None, patchout: int = 0):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.config = c = config
        self.num_classes = num_classes
        self.patchout = patchout
        self.fused = _resolve_fused(fused)
        self.ops = fused_ops.resolve(self.fused, fused_ops.CLASSIFIER_OPS)
        self._build_encoder(c, self.ops.attention, learn_pos=True)
        self.fc_norm = nn.LayerNorm(c.embed_dim, eps=c.norm_eps)
        if c.pool == "freq_stats":
            self.std_norm = nn.LayerNorm(c.embed_dim, eps=c.norm_eps)
        self.head = nn.Linear(c.pooled_dim, num_classes)
        self.apply(init_weights)
        self._init_common()
        nn.init.normal_(self.head.weight, std=2e-5)  # MAE's fine-tuning head init

    def forward_features(self, spec: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """spec -> encoder tokens ``(B, 1+L', D)`` (L' = L - patchout in training).

        ``lengths`` ``(B,)``: valid frames per clip of a right-padded batch; tokens of patches that reach past a
        clip's end are padding: no token attends to them (key padding mask) and pooling ignores them.
        """
        return self._features(spec, lengths)[0]

    def _features(
        self, spec: torch.Tensor, lengths: torch.Tensor | None, layers: Sequence[int] = ()
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Tokens ``(B, 1+L', D)`` and the key padding mask ``(B, 1+L)`` they were computed with (None if unpadded).

        With ``layers`` (indices into the ``depth + 1`` hidden states, see :meth:`embed`), the tokens are those
        hidden states stacked ``(len(layers), B, 1+L', D)``, and blocks after the deepest one asked for are skipped."""
        want = self._layer_indices(layers)
        img = check_spec(spec, self.config)
        p = self.config.patch_size
        grid = (img.shape[-2] // p, img.shape[-1] // p)
        pos = self.encoder_pos(grid)
        x = self.ops.patch_tokens(img, None, self.patch_embed) + pos[:, 1:]  # (B, L, D)
        b, n, _ = x.shape
        pad = self.token_padding(lengths, grid, img.device) if lengths is not None else None  # (B, 1+L) or None
        if self.training and self.patchout > 0 and n - self.patchout >= 1:
            if pad is not None:
                raise ValueError("patchout with a lengths tensor is not supported; pad clips or drop patchout")
            if self.config.pool_rows:  # structured (PaSST's time patchout): drop whole time columns
                gf, gt = grid
                k = min(gt - 1, self.patchout // gf)
                _, _, cols, _ = self.ops.masking(torch.rand(b, gt, device=x.device), gt - k)  # (B, gt - k) kept
                cols = cols.sort(dim=1).values
                ids_keep = (torch.arange(gf, device=x.device).view(1, -1, 1) * gt + cols.unsqueeze(1)).flatten(1)
            else:  # unstructured: any patchout tokens
                _, _, ids_keep, _ = self.ops.masking(torch.rand(b, n, device=x.device), n - self.patchout)
            x = self.ops.gather_visible(x, ids_keep)  # (B, L', D): positions were added above
        cls = (self.cls_token + pos[:, :1]).expand(b, -1, -1)
        x = torch.cat([cls, x], dim=1)
        if not want:
            for blk in self.blocks:
                x = blk(x, pad)
            return x, pad
        hidden = {0: x}
        for i, blk in enumerate(self.blocks[: max(want)], start=1):
            x = blk(x, pad)
            hidden[i] = x
        return torch.stack([hidden[i] for i in want]), pad  # (len(layers), B, 1+L', D)

    def _layer_indices(self, layers: Sequence[int]) -> list[int]:
        """``layers`` -> indices in ``0 .. depth`` (negative ones count from the end, ``-1`` = the last block)."""
        n = self.config.depth + 1
        out = []
        for i in layers:
            if not -n <= int(i) < n:
                raise ValueError(f"layer {i} out of range: the encoder has {n} hidden states (0 = patch tokens before "
                                 f"the first block, {n - 1} = after the last), negative indices count from the end")
            out.append(int(i) % n)
        return out

    def token_padding(self, lengths: torch.Tensor, grid: tuple[int, int], device: torch.device) -> torch.Tensor:
        """``(B, 1+L)`` bool, True where a patch token lies (partly) beyond the clip's valid frames; CLS is valid."""
        p = self.config.patch_size
        valid_cols = (lengths.to(device) // p).clamp(min=1)  # (B,) whole patches inside each clip (at least one)
        cols = torch.arange(grid[1], device=device).repeat(grid[0])  # (L,) time column of each token
        pad = cols.unsqueeze(0) >= valid_cols.unsqueeze(1)  # (B, L)
        return torch.cat([torch.zeros_like(pad[:, :1]), pad], dim=1)

    def embed(self, spec: torch.Tensor, lengths: torch.Tensor | None = None,
              layers: Sequence[int] | None = None) -> torch.Tensor:
        """Clip embedding ``(B, config.pooled_dim)`` from the (valid) patch tokens, pooled by ``config.pool``
        (:func:`pool_patch_tokens` with this model's ``fc_norm`` / ``std_norm``).

        ``layers``: per-layer embeddings for layer-probing harnesses (SUPERB / EVAR style), ``(B, len(layers),
        pooled_dim)``. Hidden state ``h_0`` is the patch tokens plus positions before the first block and ``h_i``
        the output of block ``i`` (``i = 1 .. depth``; ``-1`` = ``depth``); each is pooled exactly as the clip
        embedding is, so ``embed(spec, layers=[-1])[:, 0] == embed(spec)``. Blocks past the deepest asked for
        are not run."""
        if layers is not None and len(layers) == 0:
            raise ValueError("layers is empty: pass None for the clip embedding, or the hidden states wanted")
        x, pad = self._features(spec, lengths, () if layers is None else layers)
        keep = None if pad is None else ~pad[:, 1:]  # (B, L)
        pool = lambda h: pool_patch_tokens(h[:, 1:], self.config.grid_f, self.config.pool, keep,  # noqa: E731
                                           self.fc_norm, getattr(self, "std_norm", None))
        if layers is None:
            return pool(x)
        return torch.stack([pool(h) for h in x], dim=1)  # (B, len(layers), pooled_dim)

    def embed_frames(self, spec: torch.Tensor) -> torch.Tensor:
        """Frame embeddings ``(B, T // p, D)``, one per patch column (``p`` frames, 160 ms): ``fc_norm`` of the
        mean over the column's ``G_f`` frequency tokens, ``e_t = N_m(mean_r x_{r,t})``. The spectrogram must fit the
        positional table (``T <= config.frames + p - 1``; longer audio: :func:`maskspec_fast.inference.column_embeddings`)."""
        tokens = self._features(spec, None)[0][:, 1:]  # (B, G_f * G_t, D)
        b, n, d = tokens.shape
        return self.fc_norm(tokens.reshape(b, self.config.grid_f, n // self.config.grid_f, d).mean(1))  # (B, G_t, D)

    def forward(self, spec: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.embed(spec, lengths))  # (B, num_classes)

    def embed_windows(self, spec: torch.Tensor, hop_frames: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Sliding-window embeddings for audio longer than the positional table.

        Windows of ``config.frames`` frames every ``hop_frames`` (default half a window); the last window is
        aligned to the end so no frame is lost. Returns embeddings ``(B, W, D)`` and window start frames ``(W,)``.
        Clips no longer than one window give ``W = 1``.
        """
        img = check_spec(spec, self.config)
        t, win = img.shape[-1], self.config.frames
        if t <= win:
            return self.embed(img).unsqueeze(1), torch.zeros(1, dtype=torch.long)
        hop = hop_frames or win // 2
        starts = list(range(0, t - win + 1, hop))
        if starts[-1] != t - win:
            starts.append(t - win)
        embs = [self.embed(img[..., s : s + win]) for s in starts]
        return torch.stack(embs, dim=1), torch.tensor(starts)

    # --- starting from pre-training ------------------------------------------------------------------------------
    def load_encoder(self, state: dict[str, torch.Tensor], source: Any = None) -> list[str]:
        """Copy encoder weights (patch_embed, cls_token, pos_embed, blocks) from a Model state dict.

        Returns the names that were copied; decoder, ``norm``, the pooling norms and head are not (they start fresh).
        ``source`` (a path) names where ``state`` came from in errors (:class:`CheckpointError`: a missing encoder
        weight, a wrong shape, an integer tensor where a weight is expected).
        """
        own = self.state_dict()
        enc = {k: v for k, v in state.items() if k in own and not k.startswith(_POOLING_PREFIXES)}
        enc = fit_pos_tables(enc, self, source)
        missing = [k for k in own if not k.startswith(_POOLING_PREFIXES) and k not in enc]
        if missing:
            where = f"{source}: " if source is not None else ""
            raise CheckpointError(f"{where}pre-trained state lacks encoder weights: "
                                  f"{missing[:5]}{'...' if len(missing) > 5 else ''}")
        check_state_dict(source if source is not None else "pre-trained state", enc, own, strict=False)
        self.load_state_dict(enc, strict=False)
        return sorted(enc)

    @classmethod
    def from_model(
        cls, model: Model, num_classes: int, fused: bool | None = None, **overrides: Any
    ) -> Classifier:
        """A classifier whose encoder is ``model``'s (new head). ``overrides`` change the config (e.g. frames=1000)."""
        config = model.config.replace(**overrides) if overrides else model.config
        clf = cls(config, num_classes, fused=model.fused if fused is None else fused)
        clf.load_encoder(model.state_dict())
        return clf

    def _meta(self) -> dict[str, Any]:
        return {"model_type": "classifier", "config": self.config.to_dict(), "num_classes": self.num_classes}

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike,
        num_classes: int | None = None,
        fused: bool | None = None,
        revision: str | None = None,
        **overrides: Any,
    ) -> Classifier:
        """Load a saved Classifier, or start one from a saved pre-training Model (then ``num_classes`` is needed).
        ``directory`` may be a Hugging Face Hub repo id ``"org/name"`` (``revision=``)."""
        from .hub import resolve_pretrained

        directory = resolve_pretrained(directory, revision=revision)
        state, meta = load_dir(directory)
        config = config_from_meta(directory, meta, **overrides)
        weights = Path(directory) / "model.safetensors"
        if meta["model_type"] == "classifier":
            n = meta["num_classes"] if num_classes is None else num_classes
            clf = cls(config, n, fused=fused)
            same_pool = config.pool == meta["config"].get("pool", "mean")
            if n == meta["num_classes"] and same_pool:  # else the head does not fit: encoder only, new head
                state = fit_pos_tables(state, clf, weights)
                check_state_dict(weights, state, clf.state_dict())
                clf.load_state_dict(state, strict=True)
            else:
                clf.load_encoder(state, weights)
            return clf
        if num_classes is None:
            raise ValueError(f"{directory}: holds a pre-training Model; pass num_classes for the new head")
        clf = cls(config, num_classes, fused=fused)
        clf.load_encoder(state, weights)
        return clf

    @classmethod
    def from_mae_checkpoint(
        cls,
        path: str | os.PathLike,
        num_classes: int | None = None,
        fused: bool | None = None,
        producer: str = "auto",
        **overrides: Any,
    ) -> Classifier:
        """Start from a MAE-family ``.pth``: a fine-tuned one (with ``head``) loads whole when ``num_classes`` matches
        or is None; otherwise (pre-training checkpoints) the encoder loads and the head starts fresh."""
        from .interop import classifier_from_mae

        return classifier_from_mae(cls, path, num_classes, fused, producer, overrides)

    def describe(self) -> dict[str, str]:
        return self.ops.report


def encoder_parameter_count(model: Model) -> int:
    """Encoder parameters (patch_embed, cls, pos, blocks, norm): ~86M for base, as the paper reports (docs/MASKSPEC.md)."""
    return sum(
        p.numel()
        for n, p in model.named_parameters()
        if n.startswith(("patch_embed", "cls_token", "pos_embed", "blocks", "norm."))
    )


__all__ = ["Classifier", "Model", "check_spec", "encoder_parameter_count", "pool_patch_tokens"]
