"""What each exported graph computes: export-ready wrappers around the model towers.

A wrapper is the exact function a graph holds, with the graph contract's names and
dtypes (see ``export/__init__.py``): the image and text encoders return L2-normalised
float32 embeddings, the VQGAN graphs map between images in [-1, 1] and latents. Each
``Component`` also knows its input/output spec (symbolic dims by name), how to make the
dummy input the exporter traces with, and the fixed inputs parity is measured on.

Example::

    comps = components_for(clip_model)        # [image_encoder, text_encoder]
    wrapper = comps[0].module                  # pixels (B,3,S,S) -> embedding (B,E)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from vqclip.manifest import TensorSpec  # the manifest's I/O record: one definition

__all__ = ["Component", "ImageEncoder", "ImageEncoderGraph", "TextEncoder", "TextEncoderGraph", "VQGANDecoder",
           "VQGANEncoder", "components_for"]

# Batch sizes the parity inputs use; several, so a graph that baked in the traced batch fails.
_PARITY_BATCH = 5
# Token axis of the text graph's second parity case: a short query's batch, padded to its longest.
_PARITY_SHORT = 9


@dataclass
class Component:
    """One exportable graph of a model: its wrapper module, I/O spec and inputs."""

    name: str  # one of COMPONENTS
    module: nn.Module  # the wrapper: the function the graph computes, and parity's reference
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    dummy: Callable[[], tuple[torch.Tensor, ...]]  # what the exporter traces with
    parity_inputs: Callable[[], tuple[torch.Tensor, ...]]  # fixed inputs, same every call
    normalised: bool  # outputs are unit vectors: max-abs tolerance applies to them directly
    int8: bool = True  # dynamic int8 quantisation is meaningful (MatMul-heavy graph)
    dynamic_shapes: dict = field(default_factory=dict)  # torch.export dims per input name
    transformer: dict | None = None  # onnxruntime.transformers fusion args, None: no fusion pass
    factor: int = 1  # image pixels per latent cell (VQGAN), for the image-side dims "H", "W"
    graph: nn.Module | None = None  # what the exporter traces, where a cheaper form of ``module`` exists
    tokens: int = 0  # the text graph's longest token axis (the context length), for the dim "tokens"
    # More fixed parity inputs, of other shapes (a shorter token axis): a graph that kept
    # the traced shape fails them. The self-test stays on ``parity_inputs``.
    parity_more: Callable[[], list[tuple[torch.Tensor, ...]]] = list

    def traced(self) -> nn.Module:
        """The module the exporter traces: ``graph`` where set, else ``module``."""
        return self.graph if self.graph is not None else self.module


class ImageEncoder(nn.Module):
    """pixels float32 (B, 3, S, S), CLIP-normalised -> embedding float32 (B, E), unit length."""

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.visual = clip.visual

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.visual(pixels).float(), dim=-1)  # (B, E)


class _LastBlockRows(nn.Module):
    """A tower's last residual block, computed for the one token the pooling reads.

    ``forward(x, row, mask)``: x float (B, T, W), the block's input; row (B, 1, W), the
    block's input at the pooled token; mask None or additive float (B, 1, 1, T), the pooled
    token's row of the attention mask -> (B, 1, W), the block's output at that token.
    Keys and values still come from every token; the query, attention output, out_proj
    and MLP only from that one, which is exact because nothing after the last block's
    attention mixes tokens. The query and key/value weights are copies held as buffers so
    that they are graph initializers (the int8 quantiser only quantises MatMuls whose
    weight is one), taken when this module is built.
    """

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block
        attn = block.attn
        C = attn.in_proj_weight.shape[1]
        w, b = attn.in_proj_weight.detach(), attn.in_proj_bias.detach()  # (3C, C), (3C,)
        self.register_buffer("q_weight", w[:C].clone(), persistent=False)  # (C, C)
        self.register_buffer("q_bias", b[:C].clone(), persistent=False)
        self.register_buffer("kv_weight", w[C:].clone(), persistent=False)  # (2C, C)
        self.register_buffer("kv_bias", b[C:].clone(), persistent=False)

    def forward(self, x: torch.Tensor, row: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        blk = self.block
        B, T, W = x.shape
        H = blk.attn.heads
        q = F.linear(blk.ln_1(row), self.q_weight, self.q_bias)  # (B, 1, W)
        q = q.reshape(B, 1, H, W // H).transpose(1, 2)  # (B, H, 1, d)
        kv = F.linear(blk.ln_1(x), self.kv_weight, self.kv_bias)  # (B, T, 2W)
        kv = kv.reshape(B, T, 2, H, W // H).permute(2, 0, 3, 1, 4)  # (2, B, H, T, d)
        y = F.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=mask)  # (B, H, 1, d)
        row = row + blk.attn.out_proj(y.transpose(1, 2).reshape(B, 1, W))
        return row + blk.mlp(blk.ln_2(row))  # (B, 1, W)


class ImageEncoderGraph(nn.Module):
    """``ImageEncoder``'s function in the form the ONNX graph holds: the same maths, less work.

    pixels float32 (B, 3, S, S), CLIP-normalised -> embedding float32 (B, E), unit length.
    Two rewrites, exact up to float32 summation order (export checks the graph against
    ``ImageEncoder`` at the fp32 bound, and ``tests/export`` checks this module against it):

    - Patch stem as a MatMul: ``conv1`` (kernel = stride = patch, no padding, no bias) is
      a reshape of the image to (B, g*g, 3*p*p) rows and one MatMul with the flattened
      kernel. ONNX Runtime's dynamic int8 quantises MatMul but not Conv, so the int8 graph
      runs the patch embedding in int8 too. The conv stem (``vision_stem="conv"``) is traced as it is.
    - Class-token-only last block (``_LastBlockRows``): the embedding reads only the class
      token, so the last block computes its query, out_proj and MLP for that token alone.
      For ViT-B/32 (50 tokens, 12 blocks) that drops ~6 % of the MatMul work; no runtime
      prunes it by itself, as the slice sits after the whole block.

    Weights it reshapes or slices are copied when it is built: build it after loading the
    weights, as ``components_for`` does.

    Example::

        graph = ImageEncoderGraph(clip).eval()
        torch.testing.assert_close(graph(x), ImageEncoder(clip)(x))
    """

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.visual = clip.visual
        cfg = clip.config
        self.grid, self.patch = cfg.grid_size, cfg.vision_patch_size
        v = self.visual
        if hasattr(v, "conv1"):
            w = v.conv1.weight.detach()  # (W, 3, p, p)
            self.register_buffer("patch_weight", w.reshape(w.shape[0], -1).t().contiguous(),
                                 persistent=False)  # (3*p*p, W), rows in the kernel's (c, kh, kw) order
        blocks = v.transformer.resblocks
        self.last = _LastBlockRows(blocks[-1]) if len(blocks) else None

    def _tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        v = self.visual
        B, g, p = pixels.shape[0], self.grid, self.patch
        x = pixels.to(v.positional_embedding.dtype)
        if hasattr(v, "conv1"):
            x = x.reshape(B, 3, g, p, g, p).permute(0, 2, 4, 1, 3, 5)  # (B, g, g, 3, p, p)
            x = x.reshape(B, g * g, 3 * p * p) @ self.patch_weight  # (B, g*g, W)
        else:
            x = v.stem(x).flatten(2).transpose(1, 2)  # (B, g*g, W)
        cls = v.class_embedding.to(x.dtype).expand(B, 1, -1)  # (B, 1, W)
        return torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)  # (B, T, W)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        v = self.visual
        x = v.ln_pre(self._tokens(pixels))  # (B, T, W)
        for block in v.transformer.resblocks[:-1]:
            x = block(x)
        cls = x[:, :1]  # (B, 1, W)
        if self.last is not None:
            cls = self.last(x, cls)
        return F.normalize((v.ln_post(cls[:, 0]) @ v.proj).float(), dim=-1)  # (B, E)


class TextEncoder(nn.Module):
    """input_ids int64 (B, T), T <= context_length -> embedding float32 (B, E), unit length.

    T is any length that holds every row's end-of-text token: the transformer is causal, so
    the padding after it never reaches the pooled position, and a batch padded to its
    longest query (rather than to the context length) gives the same embeddings up to rounding.

    Pools at the first position of the largest id (OpenAI's rule: the end-of-text token has
    the largest id), like ``CLIP.encode_text``, but finds it with an int32 ArgMax: some ONNX
    Runtime and TensorRT versions lack int64 ArgMax, and a float cast cannot hold 49407 in
    fp16. Token ids are < 2**31, so the int32 cast is exact; padding (0) never wins.
    """

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.clip = clip

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        m = self.clip
        T = input_ids.shape[1]
        x = m.token_embedding(input_ids) + m.positional_embedding[:T]  # (B, T, W)
        x = m.transformer(x, m.attn_mask[:T, :T])
        x = m.ln_final(x)
        eot = input_ids.to(torch.int32).argmax(dim=-1)  # (B,), first maximum
        index = eot.to(torch.int64)[:, None, None].expand(-1, 1, x.shape[-1])  # (B, 1, W)
        x = torch.gather(x, 1, index).squeeze(1)  # (B, W)
        return F.normalize((x @ m.text_projection).float(), dim=-1)  # (B, E)


class TextEncoderGraph(nn.Module):
    """``TextEncoder``'s function in the form the ONNX graph holds: the last block for one token.

    input_ids int64 (B, T) -> embedding float32 (B, E), unit length, as ``TextEncoder``.
    The embedding reads only the end-of-text token, so the last block computes its query,
    out_proj and MLP for that token alone (``_LastBlockRows``, with that token's row of the
    causal mask); the end-of-text position is found before the last block rather than
    after ``ln_final``, which is row-wise. For 77 tokens and 12 blocks, ~6 % less MatMul
    work. Exact up to float32 summation order; export checks it against ``TextEncoder``.

    Example::

        graph = TextEncoderGraph(clip).eval()
        torch.testing.assert_close(graph(ids), TextEncoder(clip)(ids))
    """

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.clip = clip
        blocks = clip.transformer.resblocks
        self.last = _LastBlockRows(blocks[-1]) if len(blocks) else None

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        m = self.clip
        T = input_ids.shape[1]
        x = m.token_embedding(input_ids) + m.positional_embedding[:T]  # (B, T, W)
        mask = m.attn_mask[:T, :T]  # (T, T), additive: -inf above the diagonal
        for block in m.transformer.resblocks[:-1]:
            x = block(x, mask)
        eot = input_ids.to(torch.int32).argmax(dim=-1).to(torch.int64)  # (B,), as TextEncoder
        index = eot[:, None, None].expand(-1, 1, x.shape[-1])  # (B, 1, W)
        row = torch.gather(x, 1, index)  # (B, 1, W)
        if self.last is not None:
            row = self.last(x, row, mask[eot][:, None, None, :])  # mask row (B, 1, 1, T)
        x = m.ln_final(row[:, 0])  # (B, W)
        return F.normalize((x @ m.text_projection).float(), dim=-1)  # (B, E)


class VQGANDecoder(nn.Module):
    """latent float32 (B, C, h, w), the quantised z -> image float32 (B, 3, f*h, f*w) in [-1, 1].

    ``post_quant_conv`` then the decoder, as taming-transformers' ``VQModel.decode``; the
    decoder's attention follows the latent size, so h and w are dynamic. f is the model's
    downsampling factor (16 for the zoo's VQGANs).
    """

    def __init__(self, vqgan: nn.Module):
        super().__init__()
        self.post_quant_conv = vqgan.post_quant_conv
        self.decoder = vqgan.decoder

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(latent))


class VQGANEncoder(nn.Module):
    """image float32 (B, 3, H, W) in [-1, 1], H, W multiples of f -> latent float32 (B, C, H/f, W/f).

    The encoder then ``quant_conv``: the continuous z before quantisation, which a caller
    snaps to the codebook (or optimises, as VQGAN+CLIP does from an init image).
    """

    def __init__(self, vqgan: nn.Module):
        super().__init__()
        self.encoder = vqgan.encoder
        self.quant_conv = vqgan.quant_conv

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(image))


def _clip_components(clip: nn.Module) -> list[Component]:
    cfg = clip.config
    S, E, T, V = cfg.image_size, cfg.embed_dim, cfg.context_length, cfg.vocab_size
    batch = torch.export.Dim("batch", min=1, max=1024)
    tokens = torch.export.Dim("tokens", min=1, max=T)  # a batch padded to its longest query

    def pixels(n: int, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.randn(n, 3, S, S, generator=g)  # (n, 3, S, S), like normalised pixels

    def ids(n: int, seed: int, length: int = T) -> torch.Tensor:
        # Start token, random words, end-of-text (the largest id) at varied positions
        # (second, middle, last), zero padding after it, as the tokenizer writes them.
        g = torch.Generator().manual_seed(seed)
        out = torch.zeros(n, length, dtype=torch.int64)  # (n, length)
        eots = [1, length // 2, length - 1, 2, length // 3]
        for i in range(n):
            e = max(1, eots[i % len(eots)])
            out[i, 0] = V - 2
            out[i, 1:e] = torch.randint(1, V - 2, (e - 1,), generator=g)
            out[i, e] = V - 1
        return out

    heads_v, heads_t = cfg.vision_heads, cfg.text_heads
    # ORT's "clip" fusion set for both towers: it fuses QuickGelu (and exact Gelu); its
    # "vit" set fused nothing on these graphs (benchmarks/bench_export.py).
    out = []  # a single-tower model (towers="image" / "text") exports its one graph
    if cfg.has_image:
        out.append(Component(
            name="image_encoder", module=ImageEncoder(clip).eval(),
            inputs=(TensorSpec("pixels", "float32", ("batch", 3, S, S)),),
            outputs=(TensorSpec("embedding", "float32", ("batch", E)),),
            dummy=lambda: (pixels(2, 0),), parity_inputs=lambda: (pixels(_PARITY_BATCH, 1),),
            normalised=True, dynamic_shapes={"pixels": {0: batch}},
            # A ResNet tower is convolutions and one attention row: traced as it is, no transformer fusion.
            transformer=None if cfg.is_resnet else {"model_type": "clip", "num_heads": heads_v,
                                                    "hidden_size": cfg.vision_width},
            graph=None if cfg.is_resnet else ImageEncoderGraph(clip).eval(),
        ))
    if cfg.has_text:
        out.append(Component(
            name="text_encoder", module=TextEncoder(clip).eval(),
            inputs=(TensorSpec("input_ids", "int64", ("batch", "tokens")),),
            outputs=(TensorSpec("embedding", "float32", ("batch", E)),),
            dummy=lambda: (ids(2, 0),), parity_inputs=lambda: (ids(_PARITY_BATCH, 1),),
            normalised=True, dynamic_shapes={"input_ids": {0: batch, 1: tokens}},
            transformer={"model_type": "clip", "num_heads": heads_t, "hidden_size": cfg.text_width},
            graph=TextEncoderGraph(clip).eval(), tokens=T,
            parity_more=lambda: [(ids(3, 2, _PARITY_SHORT),)],
        ))
    return out


def _vqgan_components(vqgan: nn.Module) -> list[Component]:
    C, f = vqgan.config.embed_dim, vqgan.config.factor
    batch = torch.export.Dim("batch", min=1, max=64)
    h, w = torch.export.Dim("h", min=1, max=128), torch.export.Dim("w", min=1, max=128)

    def latent(n: int, hh: int, ww: int, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.randn(n, C, hh, ww, generator=g)  # (n, C, hh, ww)

    def image(n: int, hh: int, ww: int, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.rand(n, 3, hh * f, ww * f, generator=g) * 2 - 1  # (n, 3, f*hh, f*ww) in [-1, 1]

    # Traced at one non-square size, checked at another: proves h and w are dynamic.
    out = [Component(
        name="vqgan_decoder", module=VQGANDecoder(vqgan).eval(),
        inputs=(TensorSpec("latent", "float32", ("batch", C, "h", "w")),),
        outputs=(TensorSpec("image", "float32", ("batch", 3, f"{f}*h", f"{f}*w")),),
        dummy=lambda: (latent(2, 2, 3, 0),), parity_inputs=lambda: (latent(2, 3, 2, 1),),
        normalised=False, int8=False, dynamic_shapes={"latent": {0: batch, 2: h, 3: w}}, factor=f,
    )]
    if getattr(vqgan, "encoder", None) is not None:  # decode-only models have none
        out.append(Component(
            name="vqgan_encoder", module=VQGANEncoder(vqgan).eval(),
            inputs=(TensorSpec("image", "float32", ("batch", 3, "H", "W")),),
            outputs=(TensorSpec("latent", "float32", ("batch", C, f"H/{f}", f"W/{f}")),),
            dummy=lambda: (image(2, 2, 3, 0),), parity_inputs=lambda: (image(2, 3, 2, 1),),
            normalised=False, int8=False, dynamic_shapes={"image": {0: batch, 2: f * h, 3: f * w}}, factor=f,
        ))
    return out


def components_for(model: nn.Module) -> list[Component]:
    """The graphs a model exports: CLIP -> both encoders; VQGAN -> decoder and encoder.

    A model is recognised by the submodules the wrappers use (``visual`` and
    ``text_projection`` for CLIP; ``decoder`` and ``post_quant_conv`` for VQGAN).
    Raises ``TypeError`` for anything else (a programming error, not user input).
    """
    if hasattr(model, "encode_image") and hasattr(model, "encode_text") and hasattr(model, "logit_scale"):
        return _clip_components(model)
    if hasattr(model, "decoder") and hasattr(model, "post_quant_conv"):
        return _vqgan_components(model)
    raise TypeError(f"cannot export {type(model).__name__}: neither a CLIP nor a VQGAN module")
