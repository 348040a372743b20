"""CLIP: a ViT image tower and a causal text transformer, in plain PyTorch.

Parameter names follow OpenAI's ``clip/model.py`` key for key (``visual.conv1``,
``visual.transformer.resblocks.N.attn.in_proj_weight``, ``ln_final``, ``text_projection``),
so an OpenAI state dict loads with a shape check and nothing else. Other layouts
(Hugging Face, OpenCLIP) are renamed in ``vqclip.checkpoints``.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from vqclip.errors import UnsupportedOperationError
from vqclip.models.configs import ACTIVATION_NAMES, CLIPConfig

__all__ = ["CLIPConfig", "CLIP", "VisionTransformer"]


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in at least float32 whatever the input dtype (OpenAI's fp16 fix)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wide = x if x.dtype == torch.float64 else x.float()
        return super().forward(wide).to(x.dtype)


class QuickGELU(nn.Module):
    """OpenAI's GELU approximation, ``x * sigmoid(1.702 x)``; the weights were trained with it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


# CLIPConfig.activation -> module. Exact GELU is what OpenCLIP's LAION/DataComp ViTs were
# trained with; the wrong one loads without error and moves every embedding.
ACTIVATIONS = {"quick_gelu": QuickGELU, "gelu": nn.GELU}
assert set(ACTIVATIONS) == set(ACTIVATION_NAMES)


class Attention(nn.Module):
    """Multi-head self-attention with ``nn.MultiheadAttention``'s parameter names.

    Uses ``F.scaled_dot_product_attention`` so the fused CPU/CUDA kernels apply, and
    exports to plain ONNX MatMul/Softmax.
    """

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, C = x.shape  # (B, T, C)
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # (B, T, 3C)
        qkv = qkv.view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, H, T, C/H) each
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.out_proj(y)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_width: int | None = None, activation: str = "quick_gelu",
                 eps: float = 1e-5):
        super().__init__()
        mlp_width = mlp_width or 4 * width
        self.attn = Attention(width, heads)
        self.ln_1 = LayerNorm(width, eps=eps)
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("c_fc", nn.Linear(width, mlp_width)),
                    ("gelu", ACTIVATIONS[activation]()),
                    ("c_proj", nn.Linear(mlp_width, width)),
                ]
            )
        )
        self.ln_2 = LayerNorm(width, eps=eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), mask)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_width: int | None = None,
                 activation: str = "quick_gelu", eps: float = 1e-5):
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads, mlp_width, activation, eps)
                                       for _ in range(layers))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, mask)
        return x


class ConvStem(nn.Module):
    """Stride-2 3x3 convolutions down to the patch grid, then a 1x1 to the width.

    Small ViTs trained from scratch learn shape far faster with a convolutional stem
    than with one strided patch convolution (Xiao et al., "Early convolutions help
    transformers see better"); the token grid is the same as the patch stem's.
    """

    def __init__(self, width: int, patch_size: int):
        super().__init__()
        layers: list[nn.Module] = []
        ch_in, ch = 3, max(width // 8, 16)
        for _ in range(patch_size.bit_length() - 1):
            layers += [nn.Conv2d(ch_in, ch, 3, 2, 1, bias=False), nn.BatchNorm2d(ch), nn.ReLU()]
            ch_in, ch = ch, min(ch * 2, width)
        layers.append(nn.Conv2d(ch_in, width, 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class VisionTransformer(nn.Module):
    """Image tower: pixels (B, 3, S, S), normalised -> embedding (B, embed_dim)."""

    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        w, p = cfg.vision_width, cfg.vision_patch_size
        self.input_resolution = cfg.image_size
        if cfg.vision_stem == "patch":
            self.conv1 = nn.Conv2d(3, w, kernel_size=p, stride=p, bias=False)
        else:
            self.stem = ConvStem(w, p)
        scale = w**-0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(w))
        self.positional_embedding = nn.Parameter(scale * torch.randn(cfg.grid_size**2 + 1, w))
        eps = cfg.layer_norm_eps
        self.ln_pre = LayerNorm(w, eps=eps)
        self.transformer = Transformer(w, cfg.vision_layers, cfg.vision_heads, cfg.vision_mlp_width,
                                       cfg.activation, eps)
        self.ln_post = LayerNorm(w, eps=eps)
        self.proj = nn.Parameter(scale * torch.randn(w, cfg.embed_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patchify = self.conv1 if hasattr(self, "conv1") else self.stem
        x = patchify(x.to(self.positional_embedding.dtype))  # (B, W, g, g)
        x = x.flatten(2).transpose(1, 2)  # (B, g*g, W)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)  # (B, 1+g*g, W)
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0, :]) @ self.proj  # (B, E)


class CLIP(nn.Module):
    """Both towers and the learned temperature, with OpenAI's parameter layout.

    The text tower's parameters sit at the top level (``token_embedding``,
    ``positional_embedding``, ``transformer``, ``ln_final``, ``text_projection``) as in
    OpenAI's checkpoints. ``encode_image`` / ``encode_text`` return unnormalised
    embeddings, as OpenAI's do; ``forward`` returns ``(logits_per_image, logits_per_text)``.
    A config with ``towers="image"`` or ``"text"`` builds that tower alone (Hugging Face's
    single-tower classes); the other encode method then raises ``UnsupportedOperationError``.

    Example::

        model = CLIP(CLIPConfig())
        img = model.encode_image(torch.randn(2, 3, 224, 224))  # (2, 512)
    """

    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.config = cfg
        self.preprocess_cfg: dict = {}  # mean / std / interpolation a checkpoint's config file states, if any
        self.architecture_given = False  # True when only the caller, not the checkpoint, stated ``cfg``
        if cfg.has_image:
            if cfg.is_resnet:
                from vqclip.models.resnet import ModifiedResNet

                self.visual = ModifiedResNet(cfg.vision_layers, cfg.embed_dim, cfg.vision_heads, cfg.image_size,
                                             cfg.vision_width)
            else:
                self.visual = VisionTransformer(cfg)
        if cfg.has_text:
            w = cfg.text_width
            self.context_length = cfg.context_length
            self.token_embedding = nn.Embedding(cfg.vocab_size, w)
            self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, w))
            self.transformer = Transformer(w, cfg.text_layers, cfg.text_heads, cfg.text_mlp_width, cfg.activation,
                                           cfg.layer_norm_eps)
            self.ln_final = LayerNorm(w, eps=cfg.layer_norm_eps)
            self.text_projection = nn.Parameter(torch.empty(w, cfg.embed_dim))
            # Causal mask: -inf above the diagonal. Derived, so not saved in the state dict.
            mask = torch.full((cfg.context_length, cfg.context_length), float("-inf")).triu_(1)
            self.register_buffer("attn_mask", mask, persistent=False)
            nn.init.normal_(self.token_embedding.weight, std=0.02)
            nn.init.normal_(self.positional_embedding, std=0.01)
            nn.init.normal_(self.text_projection, std=w**-0.5)
        self.logit_scale = nn.Parameter(torch.tensor(4.6052))  # ln(100), OpenAI's trained value

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def runtime_info(self) -> dict:
        """What serving needs besides the two encoders, as an export's manifest records it:
        the temperature (exp of the learned scale, capped at 100 as OpenAI's training caps
        it), the preprocessing the checkpoint stated, and whether the checkpoint or only the
        caller stated the architecture."""
        out = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.preprocess_cfg.items()}
        out["logit_scale"] = float(self.logit_scale.detach().float().exp().clamp(max=100.0))
        out["architecture"] = "given" if self.architecture_given else "stated"
        return out

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised pixels -> (B, E) unnormalised embeddings."""
        if not self.config.has_image:
            raise UnsupportedOperationError("this CLIP has no image tower (a text-only checkpoint): it encodes "
                                            "texts only; give a model with both towers for images")
        return self.visual(pixels)

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, T) int token ids, T <= context_length -> (B, E) unnormalised embeddings.

        Pools at the end-of-text token, which has the largest id in OpenAI's vocabulary,
        so ``argmax`` over the ids finds it (OpenAI's rule).
        """
        if not self.config.has_text:
            raise UnsupportedOperationError("this CLIP has no text tower (an image-only checkpoint): it encodes "
                                            "images only; give a model with both towers for texts")
        T = ids.shape[1]  # (B, T)
        x = self.token_embedding(ids).to(self.dtype) + self.positional_embedding[:T]  # (B, T, W)
        x = self.transformer(x, self.attn_mask[:T, :T].to(x.dtype))
        x = self.ln_final(x)
        eot = ids.argmax(dim=-1)  # (B,)
        x = x[torch.arange(x.shape[0], device=x.device), eot]  # (B, W)
        return x @ self.text_projection  # (B, E)

    def forward(self, pixels: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        img = F.normalize(self.encode_image(pixels), dim=-1)
        txt = F.normalize(self.encode_text(ids), dim=-1)
        logits = self.logit_scale.exp() * img @ txt.t()  # (B_img, B_txt)
        return logits, logits.t()
