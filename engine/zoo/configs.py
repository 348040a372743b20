"""The built-in named models, as plain data: ``RECORDS`` is read by the registry."""
from __future__ import annotations

from vqclip.constants import OPENAI_MEAN, OPENAI_STD
from vqclip.models.configs import CLIPConfig, VQGANConfig
from vqclip.zoo.records import ModelRecord, WeightsRecord

# OpenAI's released CLIP ViTs (the shapes of the files their clip.load downloads).
VIT_B_32 = ModelRecord(
    name="ViT-B-32", family="clip", aliases=("ViT-B/32", "ViT-B-32-quickgelu", "openclip/ViT-B-32-quickgelu"),
    config=CLIPConfig(embed_dim=512, image_size=224, vision_patch_size=32, vision_width=768,
                      vision_layers=12, vision_heads=12, text_width=512, text_layers=12, text_heads=8),
    description="OpenAI CLIP ViT-B/32 architecture (weights from a local file)",
)
VIT_B_16 = ModelRecord(
    name="ViT-B-16", family="clip", aliases=("ViT-B/16", "ViT-B-16-quickgelu", "openclip/ViT-B-16-quickgelu"),
    config=CLIPConfig(embed_dim=512, image_size=224, vision_patch_size=16, vision_width=768,
                      vision_layers=12, vision_heads=12, text_width=512, text_layers=12, text_heads=8),
    description="OpenAI CLIP ViT-B/16 architecture (weights from a local file)",
)
VIT_L_14 = ModelRecord(
    name="ViT-L-14", family="clip", aliases=("ViT-L/14", "ViT-L-14-quickgelu", "openclip/ViT-L-14-quickgelu"),
    config=CLIPConfig(embed_dim=768, image_size=224, vision_patch_size=14, vision_width=1024,
                      vision_layers=24, vision_heads=16, text_width=768, text_layers=12, text_heads=12),
    description="OpenAI CLIP ViT-L/14 architecture (weights from a local file)",
)
VIT_L_14_336 = ModelRecord(
    name="ViT-L-14-336", family="clip",
    aliases=("ViT-L/14@336px", "ViT-L/14@336", "ViT-L-14-336px", "ViT-L-14-336-quickgelu"),
    config=CLIPConfig(embed_dim=768, image_size=336, vision_patch_size=14, vision_width=1024,
                      vision_layers=24, vision_heads=16, text_width=768, text_layers=12, text_heads=12),
    description="OpenAI CLIP ViT-L/14@336px architecture (weights from a local file)",
)

# OpenAI's released ResNet CLIPs: ModifiedResNet image towers (layers per stage), 32x downsampling.
def _openai_resnet(name: str, embed: int, size: int, stages: tuple[int, ...], width: int, text_width: int):
    return ModelRecord(
        name=name, family="clip",
        config=CLIPConfig(embed_dim=embed, image_size=size, vision_width=width, vision_layers=stages,
                          vision_heads=width * 32 // 64, text_width=text_width, text_heads=text_width // 64),
        description=f"OpenAI CLIP {name} architecture, ResNet image tower, {size} px (weights from a local file)",
    )


RN50 = _openai_resnet("RN50", 1024, 224, (3, 4, 6, 3), 64, 512)
RN101 = _openai_resnet("RN101", 512, 224, (3, 4, 23, 3), 64, 512)
RN50X4 = _openai_resnet("RN50x4", 640, 288, (4, 6, 10, 6), 80, 640)
RN50X16 = _openai_resnet("RN50x16", 768, 384, (6, 8, 18, 8), 96, 768)
RN50X64 = _openai_resnet("RN50x64", 1024, 448, (3, 15, 36, 10), 128, 1024)


# OpenCLIP's ViTs trained on LAION / DataComp: exact GELU, and head width 80-104 from ViT-H up
# (their model_configs/*.json). Same tensors as OpenAI's QuickGELU ViTs of the same size; the
# "-quickgelu" ones (DFN5B's ViT-H) are OpenCLIP's QuickGELU builds of those shapes.
def _openclip_vit(name: str, embed: int, patch: int, layers: int, width: int, head_width: int, mlp_width: int,
                  text: tuple[int, int, int], aliases: tuple[str, ...] = (), size: int = 224):
    text_width, text_heads, text_layers = text
    quick = name.endswith("-quickgelu")
    return ModelRecord(
        name=name, family="clip", aliases=(f"openclip/{name.removesuffix('-gelu')}", *aliases),
        config=CLIPConfig(embed_dim=embed, image_size=size, vision_patch_size=patch, vision_width=width,
                          vision_layers=layers, vision_heads=width // head_width, vision_mlp_width=mlp_width,
                          text_width=text_width, text_layers=text_layers, text_heads=text_heads,
                          activation="quick_gelu" if quick else "gelu"),
        description=f"OpenCLIP {name.removesuffix('-gelu')} ({'QuickGELU' if quick else 'exact GELU'}, "
                    f"{size} px; weights from a local file)",
    )


VIT_B_32_GELU = _openclip_vit("ViT-B-32-gelu", 512, 32, 12, 768, 64, 3072, (512, 8, 12))
VIT_B_16_GELU = _openclip_vit("ViT-B-16-gelu", 512, 16, 12, 768, 64, 3072, (512, 8, 12))
VIT_L_14_GELU = _openclip_vit("ViT-L-14-gelu", 768, 14, 24, 1024, 64, 4096, (768, 12, 12))
VIT_H_14 = _openclip_vit("ViT-H-14", 1024, 14, 32, 1280, 80, 5120, (1024, 16, 24), ("ViT-H/14",))
VIT_G_14 = _openclip_vit("ViT-g-14", 1024, 14, 40, 1408, 88, 6144, (1024, 16, 24), ("ViT-g/14",))
VIT_BIGG_14 = _openclip_vit("ViT-bigG-14", 1280, 14, 48, 1664, 104, 8192, (1280, 20, 32), ("ViT-bigG/14",))
VIT_H_14_QUICK = _openclip_vit("ViT-H-14-quickgelu", 1024, 14, 32, 1280, 80, 5120, (1024, 16, 24))
VIT_H_14_378_QUICK = _openclip_vit("ViT-H-14-378-quickgelu", 1024, 14, 32, 1280, 80, 5120, (1024, 16, 24), size=378)
VIT_BIGG_14_QUICK = _openclip_vit("ViT-bigG-14-quickgelu", 1280, 14, 48, 1664, 104, 8192, (1280, 20, 32))

# taming-transformers' released ImageNet VQGANs (f16: a 256x256 image is a 16x16 code grid).
VQGAN_F16_1024 = ModelRecord(
    name="vqgan-f16-1024", family="vqgan", aliases=("vqgan_imagenet_f16_1024",),
    config=VQGANConfig(ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, attn_resolutions=(16,),
                       z_channels=256, embed_dim=256, n_embed=1024, resolution=256),
    description="taming-transformers ImageNet VQGAN f16, 1024 codes (weights from a local .ckpt)",
)
VQGAN_F16_16384 = ModelRecord(
    name="vqgan-f16-16384", family="vqgan", aliases=("vqgan_imagenet_f16_16384",),
    config=VQGANConfig(ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, attn_resolutions=(16,),
                       z_channels=256, embed_dim=256, n_embed=16384, resolution=256),
    description="taming-transformers ImageNet VQGAN f16, 16384 codes (weights from a local .ckpt)",
)

# The bundled models: trained on the synthetic shapes world by `python -m vqclip.recipe.train`
# (vqclip/zoo/MODEL_CARD.md), shipped as fp16 safetensors in engine/zoo/weights.
SHAPES_CLIP = ModelRecord(
    name="shapes-clip", family="clip",
    config=CLIPConfig(embed_dim=128, image_size=64, vision_patch_size=16, vision_width=128, vision_layers=4,
                      vision_heads=2, vision_stem="conv", context_length=16, text_width=128, text_layers=3,
                      text_heads=2),
    weights=WeightsRecord(path="shapes-clip.safetensors",
                          sha256="c77c106d8780f08f4485e6174eadf18b064d69a93f7fb69054fbaa7abc155919",
                          mean=OPENAI_MEAN, std=OPENAI_STD, interpolation="bicubic"),
    default_template="{}",  # labels are captions already: "a red circle"
    description="tiny CLIP trained on the synthetic shapes world (bundled; knows 5 shapes x 8 colours only)",
)
SHAPES_VQGAN = ModelRecord(
    name="shapes-vqgan", family="vqgan",
    # 64 channels at full resolution: GroupNorm(32) over 32 channels normalises each channel
    # alone and erases flat colours (a ch_mult=(1, 2, 2) trial had not learnt mean colours in 100 steps).
    config=VQGANConfig(ch=32, ch_mult=(2, 2, 2), num_res_blocks=1, attn_resolutions=(), z_channels=64,
                       embed_dim=16, n_embed=512, resolution=64),
    weights=WeightsRecord(path="shapes-vqgan.safetensors",
                          sha256="6a328e0aa1151db425591dd59460b957d132d8655e136fcdb8edd58b7f619fef",
                          mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),  # pixels in [-1, 1], taming's range
                          interpolation="bicubic"),
    default_template="{}",
    description="tiny f4 VQGAN trained on the synthetic shapes world (bundled; 64x64 -> 16x16 codes of 512)",
)

RECORDS: tuple[ModelRecord, ...] = (
    VIT_B_32, VIT_B_16, VIT_L_14, VIT_L_14_336, RN50, RN101, RN50X4, RN50X16, RN50X64,
    VIT_B_32_GELU, VIT_B_16_GELU, VIT_L_14_GELU, VIT_H_14, VIT_G_14, VIT_BIGG_14, VIT_H_14_QUICK, VIT_H_14_378_QUICK,
    VIT_BIGG_14_QUICK,
    VQGAN_F16_1024, VQGAN_F16_16384, SHAPES_CLIP, SHAPES_VQGAN,
)
