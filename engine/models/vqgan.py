"""VQGAN (Esser, Rombach, Ommer, "Taming Transformers"): encoder, vector quantiser, decoder.

Parameter names follow taming-transformers' ``VQModel`` checkpoints key for key
(``encoder.down.0.block.1.conv1.weight``, ``decoder.up.3.attn.0.q.weight``, ``quant_conv``,
``post_quant_conv``, ``quantize.embedding.weight``), so a released ``state_dict`` loads with a
shape check and nothing else (see ``vqclip.checkpoints.vqgan``).

Images are float tensors in [-1, 1], ``(B, C, H, W)``; latents are ``(B, embed_dim, h, w)``
with ``h = H / factor``; code indices are int64 ``(B, h, w)``. Every block is convolutional
apart from global self-attention, so any grid size decodes (a 32x18 grid gives 512x288).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vqclip.errors import InputShapeError, UnsupportedOperationError
from vqclip.models.configs import VQGANConfig

__all__ = ["VQGANConfig", "VQGAN", "VectorQuantizer", "Encoder", "Decoder"]

# Rows of the (rows x n_embed) distance matrix computed at once when quantising: bounds the
# temporary to 4096 * 16384 * 4 B = 256 MiB for the largest released codebook.
_QUANTIZE_CHUNK = 4096


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


def _check_latent(z: torch.Tensor, embed_dim: int) -> None:
    """Raise ``InputShapeError`` unless ``z`` is a float ``(B, embed_dim, h, w)`` with B, h, w >= 1."""
    if not torch.is_tensor(z) or z.ndim != 4 or z.shape[1] != embed_dim or not z.is_floating_point():
        got = f"{tuple(z.shape)} {z.dtype}" if torch.is_tensor(z) else type(z).__name__
        raise InputShapeError(f"latent {got}: expected a float tensor (B, {embed_dim}, h, w) "
                              f"(the model's embed_dim is {embed_dim})")
    # The decoder is convolutional with padding, so a 1x1 grid is the smallest that yields an
    # image (factor x factor pixels); an empty grid or batch has nothing to decode.
    if z.shape[0] < 1 or z.shape[2] < 1 or z.shape[3] < 1:
        raise InputShapeError(f"latent {tuple(z.shape)}: batch and grid sides must be at least 1")


class ResnetBlock(nn.Module):
    """GroupNorm-swish-conv twice, plus a 1x1 ``nin_shortcut`` when the width changes."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = _norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, Cin, H, W) -> (B, Cout, H, W)
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head global self-attention over all H*W positions, 1x1 convs for q, k, v, out."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        b, c, hh, ww = x.shape
        h = self.norm(x)
        # (B, C, H, W) -> (B, 1, H*W, C): one head as wide as the block, scale C**-0.5 as trained.
        q, k, v = (proj(h).flatten(2).transpose(1, 2).unsqueeze(1) for proj in (self.q, self.k, self.v))
        h = F.scaled_dot_product_attention(q, k, v)  # (B, 1, H*W, C)
        h = h.squeeze(1).transpose(1, 2).reshape(b, c, hh, ww)
        return x + self.proj_out(h)


class Downsample(nn.Module):
    """Stride-2 3x3 conv after padding right and bottom by one (taming's asymmetric pad)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, H/2, W/2)
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, 2H, 2W)
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Mid(nn.Module):
    """ResNet block, attention, ResNet block at the lowest resolution (``mid.block_1`` ...)."""

    def __init__(self, channels: int, dropout: float):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class _Level(nn.Module):
    """One resolution level: ``block.N`` ResNet blocks, ``attn.N`` after each when present, resampler."""

    def __init__(self, blocks: list[nn.Module], attn: list[nn.Module], resample: nn.Module | None,
                 resample_name: str):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attn)
        self.resample_name = resample_name
        if resample is not None:
            setattr(self, resample_name, resample)  # "downsample" / "upsample", the checkpoint's names

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            x = block(x)
            if len(self.attn):
                x = self.attn[i](x)
        resample = getattr(self, self.resample_name, None)
        return resample(x) if resample is not None else x


class Encoder(nn.Module):
    """Image ``(B, in_channels, H, W)`` -> ``(B, z_channels, H/f, W/f)``."""

    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        n = len(cfg.ch_mult)
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        in_mult = (1, *cfg.ch_mult)
        levels, res = [], cfg.resolution
        block_in = cfg.ch
        for i in range(n):
            block_in, block_out = cfg.ch * in_mult[i], cfg.ch * cfg.ch_mult[i]
            blocks, attn = [], []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResnetBlock(block_in, block_out, cfg.dropout))
                block_in = block_out
                if res in cfg.attn_resolutions:
                    attn.append(AttnBlock(block_in))
            last = i == n - 1
            levels.append(_Level(blocks, attn, None if last else Downsample(block_in), "downsample"))
            if not last:
                res //= 2
        self.down = nn.ModuleList(levels)
        self.mid = _Mid(block_in, cfg.dropout)
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)  # (B, ch, H, W)
        for level in self.down:
            h = level(h)  # halves H and W except at the last level
        h = self.mid(h)  # (B, ch * ch_mult[-1], H/f, W/f)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, z_channels, H/f, W/f)


class Decoder(nn.Module):
    """``(B, z_channels, h, w)`` -> image ``(B, out_ch, h*f, w*f)`` (unbounded; about [-1, 1])."""

    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        n = len(cfg.ch_mult)
        block_in = cfg.ch * cfg.ch_mult[-1]
        res = cfg.resolution // cfg.factor  # nominal side at the lowest level, as taming counts it
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, 3, padding=1)
        self.mid = _Mid(block_in, cfg.dropout)
        levels: list[nn.Module] = [nn.Module()] * n
        for i in reversed(range(n)):
            block_out = cfg.ch * cfg.ch_mult[i]
            blocks, attn = [], []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, block_out, cfg.dropout))
                block_in = block_out
                if res in cfg.attn_resolutions:
                    attn.append(AttnBlock(block_in))
            levels[i] = _Level(blocks, attn, Upsample(block_in) if i else None, "upsample")
            if i:
                res *= 2
        # Stored lowest-index-first (up.0 is the full-resolution level), run from the top index down.
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, cfg.out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))  # (B, ch * ch_mult[-1], h, w)
        for level in reversed(self.up):
            h = level(h)  # doubles the sides except at level 0
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, out_ch, h*f, w*f)


class VectorQuantizer(nn.Module):
    """Nearest-codebook-entry quantiser with a straight-through gradient (``quantize.embedding``)."""

    def __init__(self, n_embed: int, embed_dim: int, beta: float = 0.25):
        super().__init__()
        self.n_embed, self.embed_dim, self.beta = n_embed, embed_dim, beta
        self.embedding = nn.Embedding(n_embed, embed_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / n_embed, 1.0 / n_embed)  # taming's init

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Indices ``(B, h, w)`` int64 of the codebook rows nearest (L2) to ``z`` ``(B, embed_dim, h, w)``.

        Ties go to the lower index (``argmin``'s rule). Computed in row chunks so the distance
        matrix stays under ~256 MiB at any batch size.
        """
        b, c, hh, ww = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, c)  # (N, C), N = B*h*w
        e = self.embedding.weight  # (K, C)
        e_sq = (e**2).sum(1)  # (K,)
        out = []
        for rows in flat.split(_QUANTIZE_CHUNK):
            # ||z||^2 + ||e||^2 - 2 z.e, summed in taming's order so ties break the same way.
            d = (rows**2).sum(1, keepdim=True) + e_sq - 2 * rows @ e.t()  # (n, K)
            out.append(d.argmin(1))
        return torch.cat(out).view(b, hh, ww)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Codebook rows for ``indices`` ``(B, h, w)`` -> latent ``(B, embed_dim, h, w)``."""
        return self.embedding(indices).permute(0, 3, 1, 2).contiguous()

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``z`` ``(B, embed_dim, h, w)`` -> ``(z_q straight-through, indices (B, h, w), loss scalar)``.

        The loss is taming's as the released models were trained: ``mean((sg[z_q] - z)^2) +
        beta * mean((z_q - sg[z])^2)`` (beta sits on the codebook term: taming's "legacy" form).
        """
        _check_latent(z, self.embed_dim)
        indices = self.nearest(z)
        z_q = self.lookup(indices)  # (B, C, h, w)
        loss = torch.mean((z_q.detach() - z) ** 2) + self.beta * torch.mean((z_q - z.detach()) ** 2)
        z_q = z + (z_q - z).detach()  # value of z_q, gradient of z
        return z_q, indices, loss


class VQGAN(nn.Module):
    """Encoder, ``quant_conv``, quantiser, ``post_quant_conv``, decoder.

    ``VQGAN(cfg, with_encoder=False)`` builds the decode-only model (decoder, post_quant_conv,
    codebook) for generation: ``encode`` then raises ``UnsupportedOperationError``.
    ``model.quantize(z)`` (the ``VectorQuantizer`` submodule, named as in the checkpoints) gives
    ``(z_q straight-through, indices, loss)`` for a latent ``z`` of the generation loop.

    Example::

        model = VQGAN(VQGANConfig(n_embed=1024)).eval()
        with torch.inference_mode():
            z_q, idx = model.encode(img)          # img (1, 3, 256, 256) in [-1, 1]; idx (1, 16, 16)
            out = model.decode_indices(idx)       # (1, 3, 256, 256)
    """

    def __init__(self, cfg: VQGANConfig, *, with_encoder: bool = True):
        super().__init__()
        self.config = cfg
        self.with_encoder = with_encoder
        if with_encoder:
            self.encoder = Encoder(cfg)
            self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1)
        self.quantize = VectorQuantizer(cfg.n_embed, cfg.embed_dim, cfg.beta)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)
        self.decoder = Decoder(cfg)

    # -- checks at the edges -------------------------------------------------------------------
    def _check_image(self, x: torch.Tensor) -> None:
        cfg = self.config
        if not torch.is_tensor(x) or x.ndim != 4 or x.shape[1] != cfg.in_channels or not x.is_floating_point():
            got = f"{tuple(x.shape)} {x.dtype}" if torch.is_tensor(x) else type(x).__name__
            raise InputShapeError(f"image {got}: expected a float tensor (B, {cfg.in_channels}, H, W) in [-1, 1]")
        f = cfg.factor
        if x.shape[2] < f or x.shape[3] < f or x.shape[2] % f or x.shape[3] % f:
            # Other sizes run but come back a different size after decoding: refuse them instead.
            raise InputShapeError(f"image side {tuple(x.shape[2:])}: expected positive multiples of {f} "
                                  f"(the model's downsampling factor); resize or crop the image")

    def _check_indices(self, indices: torch.Tensor) -> None:
        n = self.config.n_embed
        if not torch.is_tensor(indices) or indices.ndim != 3 or indices.is_floating_point() or indices.is_complex() \
                or indices.dtype == torch.bool:
            got = f"{tuple(indices.shape)} {indices.dtype}" if torch.is_tensor(indices) else type(indices).__name__
            raise InputShapeError(f"code indices {got}: expected an integer tensor (B, h, w)")
        if indices.numel() == 0:
            raise InputShapeError(f"code indices {tuple(indices.shape)}: batch and grid sides must be at least 1")
        lo, hi = int(indices.min()), int(indices.max())
        if lo < 0 or hi >= n:
            raise InputShapeError(f"code indices span [{lo}, {hi}]: expected values in [0, {n - 1}] "
                                  f"(codebook of {n}); were they made with another model?")

    # -- public API ----------------------------------------------------------------------------
    def encode_latent(self, x: torch.Tensor) -> torch.Tensor:
        """Image ``(B, in_channels, H, W)`` in [-1, 1] -> continuous latent ``(B, embed_dim, H/f, W/f)``."""
        if not self.with_encoder:
            raise UnsupportedOperationError("this VQGAN was built decode-only (with_encoder=False); "
                                            "load it without decode_only to encode images")
        self._check_image(x)
        return self.quant_conv(self.encoder(x))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image ``(B, in_channels, H, W)`` in [-1, 1], H and W multiples of ``factor`` ->
        ``(z_q (B, embed_dim, H/f, W/f), indices (B, H/f, W/f) int64)``.

        ``z_q`` carries the straight-through gradient, as taming's ``VQModel.encode`` returns it.
        """
        z_q, indices, _ = self.quantize(self.encode_latent(x))
        return z_q, indices

    def decode(self, z_q: torch.Tensor) -> torch.Tensor:
        """Latent ``(B, embed_dim, h, w)``, any h, w >= 1 -> image ``(B, out_ch, h*f, w*f)``.

        Not clamped: trained models give about [-1, 1]; clamp for display.
        """
        _check_latent(z_q, self.config.embed_dim)
        return self.decoder(self.post_quant_conv(z_q))

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Code indices ``(B, h, w)`` integer in [0, n_embed) -> image ``(B, out_ch, h*f, w*f)``."""
        self._check_indices(indices)
        return self.decode(self.quantize.lookup(indices.long()))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Image -> ``(reconstruction (B, out_ch, H, W), vq loss scalar, indices (B, H/f, W/f))``."""
        z_q, indices, loss = self.quantize(self.encode_latent(x))
        return self.decode(z_q), loss, indices
