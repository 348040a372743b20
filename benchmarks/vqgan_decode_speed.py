"""Decoder speed: vqclip's VQGAN decoder vs taming-transformers' (the peer), same weights, one run.

Runs are interleaved (ours, peer, ours, peer, ...) so a busy machine slows both alike. Modes:

- ``inference``: ``torch.inference_mode()``, what preview and final decodes should use
- ``no_grad``:   ``torch.no_grad()``, for comparison
- ``grad``:      forward + backward to the latent, one step of the CLIP-guided generation loop

Usage: ``python benchmarks/vqgan_decode_speed.py [--grid 16 16] [--repeats 3] [--device cpu]``
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", type=int, nargs=2, default=(16, 16), metavar=("H", "W"), help="latent grid")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--modes", nargs="+", default=["inference", "no_grad", "grad"],
                    choices=["inference", "no_grad", "grad"])
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    from taming.modules.diffusionmodules.model import Decoder

    from vqclip.models.vqgan import VQGAN
    from vqclip.zoo import get

    cfg = get("vqgan-f16-16384").config
    torch.manual_seed(0)
    ours = VQGAN(cfg, with_encoder=False).eval().to(args.device)
    dd = dict(double_z=False, z_channels=cfg.z_channels, resolution=cfg.resolution, in_channels=3, out_ch=3,
              ch=cfg.ch, ch_mult=list(cfg.ch_mult), num_res_blocks=cfg.num_res_blocks,
              attn_resolutions=list(cfg.attn_resolutions), dropout=0.0)
    peer = Decoder(**dd).eval().to(args.device)
    peer.load_state_dict({k[len("decoder."):]: v for k, v in ours.state_dict().items() if k.startswith("decoder.")})
    impls = {"vqclip": ours.decoder, "taming": peer}

    h, w = args.grid
    z = torch.randn(1, cfg.z_channels, h, w, device=args.device)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    rows = []
    for mode in args.modes:
        times: dict[str, list[float]] = {k: [] for k in impls}
        for rep in range(args.repeats + 1):  # the first round warms up and is not counted
            for name, dec in impls.items():
                zz = z.clone().requires_grad_(mode == "grad")
                ctx = {"inference": torch.inference_mode, "no_grad": torch.no_grad,
                       "grad": contextlib.nullcontext}[mode]()
                sync()
                t0 = time.perf_counter()
                with ctx:
                    out = dec(zz)
                    if mode == "grad":
                        out.square().mean().backward()
                sync()
                if rep:
                    times[name].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append((mode, med["vqclip"], med["taming"], times))
    print(f"f16-16384 decoder, fp32, {args.device}, {torch.get_num_threads()} threads, latent {h}x{w} -> "
          f"{h * 16}x{w * 16} px, median of {args.repeats} (interleaved)")
    print(f"{'mode':10} {'vqclip s':>9} {'taming s':>9} {'taming/vqclip':>14}")
    for mode, a, b, _ in rows:
        print(f"{mode:10} {a:9.2f} {b:9.2f} {b / a:14.2f}")


if __name__ == "__main__":
    main()
