"""The README's examples, run as written, in order, in a folder holding what they name:
``photos/`` (scenes of the shapes world), ``query.jpg``, ``labels.txt``, and small
stand-ins for the real checkpoints (``ViT-B-32.pt``: a random tiny CLIP in OpenAI's key
layout, with its metadata entries; ``clip-vit-base-patch32/``: a tiny Hugging Face
CLIPModel; ``CLIP-ViT-H-14-laion2B/``: a tiny OpenCLIP Hub folder; ``last.ckpt`` +
``model.yaml``: a tiny taming-transformers VQGAN). The install commands are not run here:
the test command is what ``.ci/run`` runs, checked verbatim below."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCKS = [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w*)\n(.*?)^```$", README, re.S | re.M)]
RUN = [(i, lang, code) for i, (lang, code) in enumerate(BLOCKS)
       if lang in ("bash", "python") and "python3 -m venv" not in code]


def test_the_readme_test_command_is_what_ci_runs():
    install = [code.strip() for lang, code in BLOCKS if lang == "bash" and "pytest" in code]
    assert len(install) == 1, "the README has one test command"
    assert install[0] in (ROOT / ".ci" / "run").read_text().splitlines()


def test_every_example_block_is_run():
    skipped = [code for lang, code in BLOCKS if lang in ("bash", "python") and "python3 -m venv" not in code]
    assert len(RUN) == len(skipped) >= 10  # the two install commands are the only bash blocks left out


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory, tiny):
    torch = pytest.importorskip("torch")
    from PIL import Image

    from vqclip.zoo import shapes

    base = tmp_path_factory.mktemp("readme")
    (base / "photos").mkdir()
    scenes = shapes.sample_scenes("test", 0, 7)
    for i, scene in enumerate(scenes[:6]):
        Image.fromarray(shapes.render(scene, 96)).save(base / "photos" / f"{i}.jpg", quality=95)
    Image.fromarray(shapes.render(scenes[6], 96)).save(base / "query.jpg", quality=95)
    (base / "labels.txt").write_text("a red circle\na blue star\na green square\n")
    openai_meta = {"input_resolution": torch.tensor(32), "context_length": torch.tensor(77),
                   "vocab_size": torch.tensor(49408)}  # what OpenAI's files hold besides the weights
    torch.save({**tiny.clip(0).state_dict(), **openai_meta}, base / "ViT-B-32.pt")
    _tiny_hf_folder(base / "clip-vit-base-patch32")
    _tiny_openclip_folder(base / "CLIP-ViT-H-14-laion2B", tiny.clip(0))
    vqgan = tiny.vqgan(0)
    torch.save({"state_dict": vqgan.state_dict(), "global_step": 1}, base / "last.ckpt")
    (base / "model.yaml").write_text(_taming_yaml(vqgan.config))
    return base


def _tiny_openclip_folder(path: Path, clip) -> None:
    import json

    from safetensors.torch import save_file

    c = clip.config
    path.mkdir()
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(path / "open_clip_model.safetensors"))
    model_cfg = {"embed_dim": c.embed_dim,
                 "vision_cfg": {"image_size": c.image_size, "layers": c.vision_layers, "width": c.vision_width,
                                "head_width": c.vision_head_width, "patch_size": c.vision_patch_size},
                 "text_cfg": {"context_length": c.context_length, "vocab_size": c.vocab_size,
                              "width": c.text_width, "heads": c.text_heads, "layers": c.text_layers}}
    (path / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))


def _tiny_hf_folder(path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.CLIPConfig(
        text_config=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=1, num_attention_heads=2,
                         max_position_embeddings=77),
        vision_config=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=32)
    transformers.CLIPModel(cfg).save_pretrained(path)


def _taming_yaml(c) -> str:
    return (f"model:\n  target: taming.models.vqgan.VQModel\n  params:\n    embed_dim: {c.embed_dim}\n"
            f"    n_embed: {c.n_embed}\n    ddconfig:\n      double_z: false\n      z_channels: {c.z_channels}\n"
            f"      resolution: {c.resolution}\n      in_channels: 3\n      out_ch: 3\n      ch: {c.ch}\n"
            f"      ch_mult: {list(c.ch_mult)}\n      num_res_blocks: {c.num_res_blocks}\n"
            f"      attn_resolutions: {list(c.attn_resolutions)}\n      dropout: 0.0\n")


@pytest.mark.slow
@pytest.mark.parametrize("index,lang,code", RUN, ids=[f"block{i}-{lang}" for i, lang, _ in RUN])
def test_example_runs_as_written(sandbox, index, lang, code):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": str(ROOT), "VQCLIP_CACHE": str(sandbox / ".cache")}
    if lang == "bash" and "vqclip serve" in code and not shutil.which("curl"):
        pytest.skip("this example needs curl")
    if lang == "bash" and "vqclip serve" in code:
        pytest.importorskip("fastapi", reason="the serving examples need the 'server' extra (fastapi)")
    cmd = ["bash", "-euo", "pipefail", "-c", code] if lang == "bash" else [sys.executable, "-c", code]
    r = subprocess.run(cmd, cwd=sandbox, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"README block {index} failed:\n{code}\n--- stdout\n{r.stdout[-3000:]}\n" \
                              f"--- stderr\n{r.stderr[-3000:]}"


def test_the_nginx_example_is_valid(tmp_path):
    nginx = shutil.which("nginx") or (Path("/usr/sbin/nginx").is_file() and "/usr/sbin/nginx")
    if not nginx:
        pytest.skip("checking the nginx example needs nginx (apt-get install nginx-light)")
    (conf,) = [code for lang, code in BLOCKS if lang == "nginx"]
    main = tmp_path / "nginx.conf"
    main.write_text(f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
                    f"http {{\n  access_log off;\n  client_body_temp_path {tmp_path};\n{conf}}}\n")
    r = subprocess.run([nginx, "-t", "-c", str(main), "-p", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
