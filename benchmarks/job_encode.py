"""Jobs ``encode-image`` and ``encode-text``: the CLIP encoders per backend and precision at
each batch, ``transformers`` eager fp32 of the same shape beside them in the same rounds."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from vqclip.manifest import min_row_cosine

from .harness import Options, add_ratios, make_row, measure
from .models import BenchModel, load_module, resolve_model

__all__ = ["run"]

PEER = "transformers eager fp32"
PROMPTS = ("a photo of a red circle", "a small blue square on a grey background", "two green triangles",
           "a yellow star", "a purple ring next to an orange square")


def run(opts: Options, job: str) -> dict:
    component = job.removeprefix("encode-")
    unit = "img/s" if component == "image" else "texts/s"
    rows: list[dict] = []
    skipped: list[str] = []
    for name in opts.models:
        model = resolve_model(name)
        module = load_module(model)
        if not (module.config.has_image if component == "image" else module.config.has_text):
            skipped.append(f"{model.label}: no {component} tower")
            continue
        runners, notes = _runners(model, module, component, opts)
        skipped += notes
        for batch in opts.batches:
            x = _inputs(module, component, batch)
            calls = {label: (lambda fn=fn: fn(x)) for label, fn in runners.items()}
            lat = measure(calls, opts.seconds)
            ref = runners["vqclip torch fp32"](x) if "vqclip torch fp32" in runners else None
            case = f"{model.label} {component} b{batch}"
            if component == "text":  # every runner, the peer too, encodes up to the longest text's end
                from vqclip.backends._io_spec import cut_after_eot

                case += f", {cut_after_eot(x).shape[1]} tokens"
            for label, fn in runners.items():
                extra: dict[str, Any] = {"model": model.label, "batch": batch}
                if ref is not None and not label.startswith("transformers"):
                    extra["min_cos_vs_torch_fp32"] = min_row_cosine(fn(x), ref)
                rows.append(make_row(job, case, label, lat[label], items=batch, unit=unit, peer=label == PEER,
                                     reproduce=opts.invocation(job, model=model.name, batch=batch), **extra))
    add_ratios(rows, PEER)
    return {"rows": rows, "skipped": skipped}


def _runners(model: BenchModel, module: Any, component: str,
             opts: Options) -> tuple[dict[str, Callable[[np.ndarray], np.ndarray]], list[str]]:
    from vqclip.encoder import open_encoder
    from vqclip.errors import BackendUnavailableError, VqclipError

    out: dict[str, Callable] = {}
    notes: list[str] = []
    if opts.peers:
        try:
            out[PEER] = _hf_peer(module, component, opts.device)
        except ImportError as e:
            notes.append(f"{PEER}: not installed ({e.name}); pip install transformers")
        except ValueError as e:  # an architecture transformers' CLIPModel has no form for (ResNet towers)
            notes.append(f"{PEER}: {e}")
    pairs = opts.encoder_pairs()
    if "torch" in opts.backends and ("torch", "fp32") not in pairs:
        pairs.insert(0, ("torch", "fp32"))  # the reference of every runner's cosine
    for backend, p in pairs:
        label = f"vqclip {backend} {p}"
        try:
            enc = open_encoder(model.source, backend, precision=p, device=opts.device)
        except (BackendUnavailableError, VqclipError) as e:
            notes.append(f"{label}: {e}")
            continue
        out[label] = enc.encode_image if component == "image" else enc.encode_text
    return out, notes


def _inputs(module: Any, component: str, batch: int) -> np.ndarray:
    c = module.config
    if component == "image":
        return np.random.default_rng(batch).standard_normal((batch, 3, c.image_size, c.image_size), dtype=np.float32)
    from vqclip.tokenizer import tokenize

    return tokenize([PROMPTS[i % len(PROMPTS)] for i in range(batch)], context_length=c.context_length)


def _hf_peer(module: Any, component: str, device: str) -> Callable[[np.ndarray], np.ndarray]:
    """transformers' CLIPModel with this model's shapes (its own random weights: speed only),
    given the same tokens as vqclip's encoders: each batch up to its longest text's end."""
    import torch
    from transformers import CLIPConfig as HFConfig
    from transformers import CLIPModel

    c = module.config
    if c.is_resnet:
        raise ValueError("transformers' CLIPModel has no ResNet image tower")
    act = "quick_gelu" if c.activation == "quick_gelu" else "gelu"
    hf = CLIPModel(HFConfig(
        text_config=dict(vocab_size=c.vocab_size, hidden_size=c.text_width, intermediate_size=c.text_mlp_width,
                         num_hidden_layers=c.text_layers, num_attention_heads=c.text_heads,
                         max_position_embeddings=c.context_length, hidden_act=act, layer_norm_eps=c.layer_norm_eps),
        vision_config=dict(hidden_size=c.vision_width, intermediate_size=c.vision_mlp_width,
                           num_hidden_layers=c.vision_layers, num_attention_heads=c.vision_heads,
                           image_size=c.image_size, patch_size=c.vision_patch_size, hidden_act=act,
                           layer_norm_eps=c.layer_norm_eps),
        projection_dim=c.embed_dim)).eval().to(device)

    from vqclip.backends._io_spec import cut_after_eot

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            t = torch.from_numpy(x if component == "image" else cut_after_eot(x)).to(device)
            out = hf.get_image_features(pixel_values=t) if component == "image" else hf.get_text_features(input_ids=t)
            out = getattr(out, "pooler_output", out)  # transformers 5 returns a ModelOutput, 4.x a tensor
            return torch.nn.functional.normalize(out, dim=-1).cpu().numpy()  # .cpu() waits for the GPU

    return run

