"""Peak memory (RSS) and time of decoding one VQGAN latent on CPU, each case in a fresh process.

Writes a random-weight f16-16384 checkpoint in taming's Lightning layout (with a ``loss.*`` block
the size of LPIPS + discriminator), then measures in a new interpreter per case:

- vqclip, ``load_vqgan(decode_only=True)`` from that file, then ``decode_indices`` (the generation path)
- vqclip, full ``load_vqgan`` from that file, then the same decode
- vqclip, ``VQGAN(cfg, with_encoder=False)`` with no file (the module's own footprint)
- taming-transformers' ``Decoder`` + ``post_quant_conv`` + codebook (the peer), same decode

Usage: ``python benchmarks/vqgan_memory.py [--grid 16 16] [--batch 1] [--json out.json]``
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = ("vqclip-decode-only-ckpt", "vqclip-full-ckpt", "vqclip-decode-only-no-file", "taming-decoder")
LOSS_PARAMS = 14_700_000 + 2_800_000  # LPIPS VGG + PatchGAN discriminator, as in the released files


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(case: str, ckpt: str, grid: tuple[int, int], batch: int, repeats: int) -> dict:
    """Run one case in this (fresh) process and return its figures."""
    import torch

    from vqclip.zoo import get

    cfg = get("vqgan-f16-16384").config
    base = _rss_mb()
    t0 = time.perf_counter()
    if case.startswith("vqclip"):
        from vqclip.checkpoints.vqgan import load_vqgan
        from vqclip.models.vqgan import VQGAN

        if case == "vqclip-decode-only-ckpt":
            model = load_vqgan(ckpt, decode_only=True)
        elif case == "vqclip-full-ckpt":
            model = load_vqgan(ckpt)
        else:
            model = VQGAN(cfg, with_encoder=False).eval()
        decode = model.decode_indices
    else:
        from taming.modules.diffusionmodules.model import Decoder

        dd = dict(double_z=False, z_channels=256, resolution=256, in_channels=3, out_ch=3, ch=128,
                  ch_mult=[1, 1, 2, 2, 4], num_res_blocks=2, attn_resolutions=[16], dropout=0.0)
        dec = Decoder(**dd).eval()
        pqc = torch.nn.Conv2d(256, 256, 1)
        codebook = torch.nn.Embedding(cfg.n_embed, 256)

        def decode(idx):
            return dec(pqc(codebook(idx).permute(0, 3, 1, 2)))
    load_s = time.perf_counter() - t0
    loaded = _rss_mb()
    idx = torch.randint(0, cfg.n_embed, (batch, *grid))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = decode(idx)
        times.append(time.perf_counter() - t0)
    assert out.shape == (batch, 3, grid[0] * 16, grid[1] * 16)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    return {"case": case, "rss_after_imports_mb": base, "rss_after_load_mb": loaded, "peak_rss_mb": peak,
            "load_s": load_s, "decode_s_median": statistics.median(times), "decode_s_all": times,
            "threads": torch.get_num_threads()}


def write_checkpoint(path: Path) -> None:
    import torch

    from vqclip.models.vqgan import VQGAN
    from vqclip.zoo import get

    torch.manual_seed(0)
    state = dict(VQGAN(get("vqgan-f16-16384").config).state_dict())
    state["loss.discriminator.blob"] = torch.randn(LOSS_PARAMS)  # training-only; the loader drops it
    tmp = path.with_suffix(".tmp")
    torch.save({"epoch": 0, "global_step": 0, "state_dict": state}, tmp)
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", type=int, nargs=2, default=(16, 16), metavar=("H", "W"), help="latent grid")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="decodes per case (median reported)")
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    ap.add_argument("--json", type=Path, help="also write the rows here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--ckpt", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.ckpt, tuple(args.grid), args.batch, args.repeats)))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "vqgan_f16_16384_random.ckpt"
        write_checkpoint(ckpt)
        size_mb = ckpt.stat().st_size / 2**20
        for case in args.cases:
            cmd = [sys.executable, __file__, "--child", case, "--ckpt", str(ckpt), "--grid", *map(str, args.grid),
                   "--batch", str(args.batch), "--repeats", str(args.repeats)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
    h, w = args.grid
    print(f"f16-16384, fp32, CPU, batch {args.batch}, latent {h}x{w} -> {h * 16}x{w * 16} px; "
          f"checkpoint {size_mb:.0f} MiB; one fresh process per row; torch.inference_mode")
    print(f"{'case':30} {'peak RSS MiB':>12} {'RSS imports':>12} {'RSS loaded':>11} {'load s':>7} "
          f"{'decode s (median)':>18}")
    for r in rows:
        print(f"{r['case']:30} {r['peak_rss_mb']:12.0f} {r['rss_after_imports_mb']:12.0f} "
              f"{r['rss_after_load_mb']:11.0f} {r['load_s']:7.2f} {r['decode_s_median']:18.2f}")
    if args.json:
        tmp = args.json.with_suffix(".tmp")
        tmp.write_text(json.dumps(rows, indent=2))
        os.replace(tmp, args.json)


if __name__ == "__main__":
    main()
