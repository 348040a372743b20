"""The torch backend: vqclip's own PyTorch modules, the reference every other backend
is compared against.

Runs on CPU or CUDA in fp32, fp16 or bf16. Embeddings are L2-normalised in float32 after
the module, as the exported graphs do inside. Text ids are cut past the last end-of-text
token before the module runs (``trim_to_eot``: same embeddings, far less work for short
texts). On CUDA it can replay CUDA graphs (one per
input shape, captured on first use) and/or ``torch.compile`` the forward; both pay off at
small batches where kernel-launch overhead dominates, and are off by default because
capture and compilation cost seconds per shape.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import threading
from collections import OrderedDict
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vqclip.backends._io_spec import GraphSpec, cut_after_eot
from vqclip.backends.base import Backend, BackendInfo
from vqclip.errors import BackendUnavailableError
from vqclip.manifest import TensorSpec

__all__ = ["TorchBackend", "TORCH_PRECISIONS", "trim_to_eot"]

log = logging.getLogger(__name__)

TORCH_PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_MAX_CUDA_GRAPHS = 8  # captured graphs kept per backend; each pins its activations in memory
# Text ids are cut to the longest end-of-text position rounded up to this many tokens, so a
# 77-token context gives at most 5 shapes (one CUDA graph / compiled graph each) and short
# queries still skip most of the padding.
_TOKEN_BUCKET = 16


def trim_to_eot(ids: np.ndarray, bucket: int = _TOKEN_BUCKET) -> np.ndarray:
    """int64 (B, T) token ids -> (B, T') with the padding past every row's end-of-text cut.

    ``T'`` is the largest end-of-text position (the first maximal id, the position the
    text encoder pools at) plus one, rounded up to a multiple of ``bucket`` and at most
    ``T``. The embedding is unchanged: CLIP's text transformer is causal, so no position
    after a row's end-of-text reaches that row's pooled output. It only saves work, about
    in proportion to the tokens cut (a 10-token query runs 16 of 77 positions).

    Example: ``trim_to_eot(tokenize(["a red circle"])).shape`` -> ``(1, 16)``.
    """
    return cut_after_eot(ids, bucket)  # the rule every backend cuts text ids by


class _CudaGraphCache:
    """Replays one captured CUDA graph per input shape; the oldest is dropped past a bound.

    A captured graph reads from and writes to fixed buffers, so each call copies the input
    into the static buffer, replays, and clones the output.
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], limit: int = _MAX_CUDA_GRAPHS):
        self.fn = fn
        self.limit = limit
        self.graphs: OrderedDict[tuple, tuple[Any, torch.Tensor, torch.Tensor]] = OrderedDict()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        key = (tuple(x.shape), x.dtype)
        if key not in self.graphs:
            static_in = x.clone()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up runs outside the graph, as capture requires
                for _ in range(2):
                    self.fn(static_in)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self.fn(static_in)
            self.graphs[key] = (graph, static_in, static_out)
            if len(self.graphs) > self.limit:
                self.graphs.popitem(last=False)
            log.debug("captured a CUDA graph for %s", key)
        self.graphs.move_to_end(key)
        graph, static_in, static_out = self.graphs[key]
        static_in.copy_(x)
        graph.replay()
        return static_out.clone()


class TorchBackend(Backend):
    """vqclip's CLIP (and VQGAN) modules behind the backend interface.

    The backend keeps its own copy of each module, in eval mode, on ``device`` at
    ``precision``: the caller's modules are left untouched (training flag, device, dtype).

    Args:
        clip: a ``vqclip.models.CLIP``; gives ``image_encoder`` and ``text_encoder``.
        vqgan: a VQGAN module (``vqclip.models`` VQGAN: ``config.embed_dim``,
            ``config.factor``, ``post_quant_conv``, ``decoder`` and optionally ``encoder``,
            ``quant_conv``); gives ``vqgan_decoder`` (quantised z -> image in [-1, 1]) and
            ``vqgan_encoder`` (image -> continuous z), as the exported graphs do.
        device: "cpu" (None), "cuda" or "cuda:N".
        precision: "fp32", "fp16" or "bf16" (LayerNorm runs in fp32 inside the module
            whatever this is; fp16 on CPU works but is slow: use bf16 there).
        cuda_graphs: replay captured CUDA graphs (CUDA only).
        compile: wrap each forward in ``torch.compile`` (mode "reduce-overhead" when
            combined with ``cuda_graphs``, which then uses torch's own graph capture).
        threads: ``torch.set_num_threads`` for CPU work; process-wide, so None keeps it.

    Raises ``BackendUnavailableError`` for CUDA without a CUDA build or GPU, CUDA graphs
    on CPU, an unknown precision, or no module at all.

    Example::

        be = TorchBackend(clip=model, precision="bf16")
        emb = be.encode_image(np.zeros((2, 3, 224, 224), np.float32))  # (2, 512)
    """

    name = "torch"

    def __init__(self, clip: nn.Module | None = None, vqgan: nn.Module | None = None, *,
                 device: str | None = None, precision: str = "fp32", cuda_graphs: bool = False,
                 compile: bool = False, threads: int | None = None):
        if precision not in TORCH_PRECISIONS:
            raise BackendUnavailableError(
                f"torch backend has no precision {precision!r}; available: "
                f"{', '.join(TORCH_PRECISIONS)} (int8 runs on the onnxruntime backend)"
            )
        if clip is None and vqgan is None:
            raise BackendUnavailableError("torch backend needs a module: pass clip=... and/or vqgan=...")
        device = device or "cpu"
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailableError(
                f"torch backend: device {device!r} needs CUDA, but this PyTorch "
                f"({torch.__version__}) sees no CUDA GPU; use device='cpu'"
            )
        if cuda_graphs and dev.type != "cuda":
            raise BackendUnavailableError("torch backend: cuda_graphs needs a CUDA device; use device='cuda'")
        if threads is not None:
            torch.set_num_threads(threads)
        if dev.type == "cpu" and precision == "fp16":
            log.warning("torch fp16 on CPU is emulated and slow; bf16 is the CPU half precision")
        vocab = clip.config.vocab_size if clip is not None else None
        super().__init__(precision, vocab_size=vocab)
        self.device = dev
        self.dtype = TORCH_PRECISIONS[precision]
        self.cuda_graphs = cuda_graphs
        self.compiled = compile
        self.clip = self._own(clip)
        self.vqgan = self._own(vqgan)
        self._fns: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
        # Captured graphs replay into fixed buffers: concurrent calls would share them.
        self._lock = threading.Lock() if (cuda_graphs or compile) else contextlib.nullcontext()
        self._spec_map = self._build_specs()
        for component in self._spec_map:
            fn = self._forward(component)
            if compile:
                fn = torch.compile(fn, mode="reduce-overhead" if cuda_graphs else "default",
                                   dynamic=False)
            elif cuda_graphs:
                fn = _CudaGraphCache(fn)
            self._fns[component] = fn

    def _own(self, module: nn.Module | None) -> nn.Module | None:
        if module is None:
            return None
        # A private copy, so eval mode and the dtype/device move never touch the caller's module.
        own = copy.deepcopy(module).eval().to(device=self.device, dtype=self.dtype)
        for sub in own.modules():
            # LayerNorm stays fp32 (OpenAI's fp16 recipe): CLIP's LayerNorm computes in fp32
            # and fp16 LayerNorm is what degrades ViTs in half precision.
            if isinstance(sub, nn.LayerNorm):
                sub.float()
        return own

    def _build_specs(self) -> dict[str, GraphSpec]:
        specs: dict[str, GraphSpec] = {}
        if self.clip is not None:
            cfg = self.clip.config
            emb = TensorSpec("embedding", "float32", ("batch", cfg.embed_dim))
            s = cfg.image_size
            if cfg.has_image:
                specs["image_encoder"] = GraphSpec(
                    "image_encoder", self.precision,
                    (TensorSpec("pixels", "float32", ("batch", 3, s, s)),), (emb,))
            if cfg.has_text:
                specs["text_encoder"] = GraphSpec(
                    "text_encoder", self.precision,
                    (TensorSpec("input_ids", "int64", ("batch", cfg.context_length)),), (emb,))
        if self.vqgan is not None:
            cfg = self.vqgan.config
            ch, f = cfg.embed_dim, cfg.factor
            specs["vqgan_decoder"] = GraphSpec(
                "vqgan_decoder", self.precision,
                (TensorSpec("latent", "float32", ("batch", ch, "h", "w")),),
                (TensorSpec("image", "float32", ("batch", 3, f"{f}*h", f"{f}*w")),))
            if getattr(self.vqgan, "encoder", None) is not None:  # decode-only models have none
                specs["vqgan_encoder"] = GraphSpec(
                    "vqgan_encoder", self.precision,
                    (TensorSpec("image", "float32", ("batch", 3, "H", "W")),),
                    (TensorSpec("latent", "float32", ("batch", ch, f"H/{f}", f"W/{f}")),))
        return specs

    def _forward(self, component: str) -> Callable[[torch.Tensor], torch.Tensor]:
        # Each returns float32 on the device; inputs arrive on the device already.
        if component == "image_encoder":
            return lambda x: F.normalize(self.clip.encode_image(x.to(self.dtype)).float(), dim=-1)
        if component == "text_encoder":
            return lambda ids: F.normalize(self.clip.encode_text(ids).float(), dim=-1)
        # The VQGAN components are the export contract's, not VQGAN.decode/encode: the decoder
        # takes an already quantised z (post_quant_conv + decoder) and the encoder gives the
        # continuous z before quantisation (encoder + quant_conv).
        vq = self.vqgan
        if component == "vqgan_decoder":
            return lambda z: vq.decoder(vq.post_quant_conv(z.to(self.dtype))).float()
        return lambda img: vq.quant_conv(vq.encoder(img.to(self.dtype))).float()

    def _specs(self) -> dict[str, GraphSpec]:
        return self._spec_map

    def _missing_hint(self, component: str) -> str:
        return "; pass vqgan=... to open it" if component.startswith("vqgan") else "; pass clip=..."

    def _run(self, component: str, x: np.ndarray) -> np.ndarray:
        if component == "text_encoder":
            x = trim_to_eot(x)  # (B, T' <= T): same embeddings, less work
        t = torch.from_numpy(x).to(self.device, non_blocking=True)
        with self._lock, torch.inference_mode():
            y = self._fns[component](t)
            return y.cpu().numpy()

    def describe(self) -> BackendInfo:
        return BackendInfo(
            backend=self.name,
            device=str(self.device),
            precision=self.precision,
            threads={"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads()},
            components=self.components,
            options={"cuda_graphs": self.cuda_graphs, "compile": self.compiled,
                     "torch": torch.__version__},
        )

    def close(self) -> None:
        self._fns.clear()
        self.clip = self.vqgan = None
        self._spec_map = {}
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
