"""Prints the parity figures the README and the closing notes quote, from the tests' own cases.

1. Checkpoint architectures: max abs difference of embeddings, vqclip vs the peer's own code
   (OpenCLIP's ``model.py`` loaded by file, ``transformers``), on random weights, fp32; and the
   control: the same tensors built on OpenAI's conventions (QuickGELU, heads = width // 64),
   which is what the tensor shapes alone say.
2. int8 batch dependence: ONNX Runtime int8 quantises activations with one scale per batch, so
   a text query's similarity scores move with its batch-mates; max |score difference| of a
   query encoded alone vs batched with each other query, bundled model, against 8 images.

    python benchmarks/check_clip_parity.py > benchmarks/results/clip_parity.$(CPU_CLASS).txt

Needs the test dependencies (``open_clip_torch``, ``transformers``); runs from a checkout
(it reuses the test modules' model builders).
"""
from __future__ import annotations

import dataclasses
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "checkpoints"))


class _Patch:
    """The ``monkeypatch.setitem`` the test helpers take, outside pytest."""

    def setitem(self, mapping, key, value):
        mapping[key] = value


def architectures() -> None:
    import test_clip_architectures as t

    from vqclip.checkpoints import load_clip
    from vqclip.models.clip import CLIP

    print("case | vqclip vs peer | OpenAI conventions vs peer")
    for case, model_cfg in t._OC_CONFIGS.items():
        ref = t._openclip_model(_Patch(), model_cfg)
        ours = load_clip(t._save_openclip_folder(Path(tempfile.mkdtemp()) / case, ref, model_cfg))
        good = t._diff(ours, ref.encode_image, ref.encode_text)
        cfg = ours.config
        try:
            rules = dataclasses.replace(cfg, activation="quick_gelu", vision_heads=cfg.vision_width // 64,
                                        text_heads=cfg.text_width // 64)
        except ValueError:  # no width // 64 split: the activation alone
            rules = dataclasses.replace(cfg, activation="quick_gelu")
        control = "same model"
        if rules != cfg:
            wrong = CLIP(rules).eval()
            wrong.load_state_dict(ours.state_dict())
            control = f"{t._diff(wrong, ref.encode_image, ref.encode_text):.2e}"
        print(f"OpenCLIP {case} | {good:.2e} | {control}")
    hf = t._hf_model()  # gelu, eps 1e-6, MLP 2.5x / 3x, head width 32
    folder = Path(tempfile.mkdtemp())
    hf.save_pretrained(folder)
    print(f"transformers gelu, eps 1e-6, odd MLP widths | {t._diff(load_clip(folder), *t._hf_fns(hf)):.2e} | -")


def int8_batch_dependence() -> None:
    import os

    from PIL import Image

    from vqclip.encoder import open_encoder
    from vqclip.zoo import shapes

    with tempfile.TemporaryDirectory() as cache:
        os.environ["VQCLIP_CACHE"] = cache  # the export this makes goes away with it
        enc = open_encoder("shapes-clip", "onnxruntime", precision="int8")
        scenes = shapes.sample_scenes("test", 0, 8)
        images = enc.encode_image(enc.preprocess([Image.fromarray(px) for px in shapes.render_batch(scenes, 64)]))
        texts = [shapes.label(c, s) for c, s in shapes.all_labels()][:8]
        alone = {t: enc.encode_texts([t])[0] @ images.T for t in texts}
        worst = 0.0
        for a in texts:
            for b in texts:
                if a != b:
                    worst = max(worst, float(np.abs(enc.encode_texts([a, b])[0] @ images.T - alone[a]).max()))
        print(f"int8 text query alone vs batched with one other (8 queries x 8 images): max |score diff| "
              f"{worst:.2e}")


def main() -> None:
    from vqclip._cpus import simd_class

    print(f"# CPU class {simd_class()}")
    architectures()
    int8_batch_dependence()


if __name__ == "__main__":
    main()
